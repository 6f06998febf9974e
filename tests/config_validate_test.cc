// engine::validate_for_training: what the engine refuses on a ds_config
// alone, so `strata config check` and `strata train` refuse the same files.
#include "engine/config_validate.h"

#include <string>

#include "core/config/ds_config.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace strata::engine {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;
using ::testing::Not;

absl::Status validate(const json& j, int world_size = 1) {
  auto cfg = config::parse_ds_config(j.dump(), "my.json", nullptr, world_size);
  EXPECT_TRUE(cfg.ok()) << cfg.status();
  if (!cfg.ok()) return cfg.status();
  return validate_for_training(*cfg, "my.json");
}

const json kOk = {{"train_batch_size", 8},
                  {"train_micro_batch_size_per_gpu", 2},
                  {"zero_optimization", {{"stage", 2}, {"offload_optimizer", {{"device", "cpu"}}}}},
                  {"optimizer", {{"type", "AdamW"}}}};

TEST(ValidateForTraining, AcceptsWhatTheEngineRuns) {
  EXPECT_TRUE(validate(kOk).ok());
  json warmup = kOk;
  warmup["scheduler"] = {{"type", "WarmupLR"}, {"params", {{"warmup_num_steps", 10}}}};
  EXPECT_TRUE(validate(warmup).ok());
}

TEST(ValidateForTraining, RefusesWhatTheEngineRefusesNamingFileAndKey) {
  json warmup = kOk;
  warmup["scheduler"] = {{"type", "WarmupLR"}, {"params", {{"warmup_num_steps", -5}}}};
  absl::Status s = validate(warmup);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("my.json: scheduler.params.warmup_num_steps"));
  EXPECT_THAT(std::string(s.message()), Not(HasSubstr("ds_config:")));

  json unknown = kOk;
  unknown["scheduler"] = {{"type", "WarmupLR"}, {"params", {{"warmup_num_steps", 10}, {"x", 1}}}};
  EXPECT_THAT(std::string(validate(unknown).message()), HasSubstr("scheduler.params.x"));

  json param_only = kOk;
  param_only["zero_optimization"] = {{"stage", 3}, {"offload_param", {{"device", "cpu"}}}};
  s = validate(param_only);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("my.json: zero_optimization.offload_param without offload_optimizer"));

  json ratio = kOk;
  ratio["zero_optimization"]["offload_optimizer"]["ratio"] = 0.5;
  EXPECT_THAT(std::string(validate(ratio).message()),
              HasSubstr("zero_optimization.offload_optimizer.ratio 0.5"));

  json two_ranks = kOk;
  two_ranks["train_batch_size"] = 16;
  two_ranks["gradient_accumulation_steps"] = 4;
  s = validate(two_ranks, 2);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(s.message()), HasSubstr("my.json: world size 2"));
}

}  // namespace
}  // namespace strata::engine
