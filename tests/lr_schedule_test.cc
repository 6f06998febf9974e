#include "engine/lr_schedule.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "core/file_util.h"
#include "nlohmann/json.hpp"

namespace strata::engine {
namespace {

using config::SchedulerConfig;
using config::SchedulerType;
using nlohmann::json;

const std::filesystem::path kGoldenDir = std::filesystem::path(STRATA_GOLDEN_DIR) / "lr_schedule";

SchedulerType type_named(const std::string& name) {
  for (SchedulerType t :
       {SchedulerType::kLRRangeTest, SchedulerType::kOneCycle, SchedulerType::kWarmupLR,
        SchedulerType::kWarmupDecayLR, SchedulerType::kWarmupCosineLR}) {
    if (config::to_string(t) == name) return t;
  }
  ADD_FAILURE() << "unknown scheduler in golden file: " << name;
  return SchedulerType::kNone;
}

void expect_close(double expected, double actual, const std::string& what) {
  // Relative 1e-12; exact zeros (cosine's first step, decay's end) stay exact.
  const double tolerance = 1e-12 * std::abs(expected);
  EXPECT_LE(std::abs(actual - expected), tolerance)
      << what << ": expected " << expected << ", got " << actual;
}

std::unique_ptr<LrSchedule> make(SchedulerType type, json params, double optimizer_lr = 1e-3) {
  SchedulerConfig cfg;
  cfg.type = type;
  cfg.params = std::move(params);
  auto schedule = make_lr_schedule(cfg, optimizer_lr);
  EXPECT_TRUE(schedule.ok()) << schedule.status();
  return schedule.ok() ? std::move(*schedule) : nullptr;
}

std::string error_of(SchedulerType type, json params) {
  SchedulerConfig cfg;
  cfg.type = type;
  cfg.params = std::move(params);
  auto schedule = make_lr_schedule(cfg, 1e-3);
  EXPECT_FALSE(schedule.ok());
  if (schedule.ok()) return "";
  EXPECT_EQ(schedule.status().code(), absl::StatusCode::kInvalidArgument);
  return std::string(schedule.status().message());
}

class GoldenTest : public ::testing::TestWithParam<std::string> {};

// Step by step against the lr DeepSpeed 0.19.8's scheduler gave a torch
// optimizer (tests/golden/make_lr_schedule_golden.py).
TEST_P(GoldenTest, MatchesDeepSpeed) {
  const auto path = kGoldenDir / (GetParam() + ".json");
  auto text = read_file(path.string());
  ASSERT_TRUE(text.ok()) << text.status();
  const json golden = json::parse(*text);
  auto schedule = make(type_named(golden["scheduler"].get<std::string>()), golden["params"],
                       golden["optimizer_lr"].get<double>());
  ASSERT_NE(schedule, nullptr);
  const auto& lrs = golden["lr"];
  ASSERT_GE(lrs.size(), 50u);
  for (size_t step = 0; step < lrs.size(); ++step) {
    EXPECT_EQ(schedule->iteration(), static_cast<int64_t>(step) - 1);
    const std::string where = GetParam() + " step " + std::to_string(step);
    expect_close(lrs[step].get<double>(), schedule->lr(), where + " lr");
    const auto betas = schedule->betas();
    const bool cycles_momentum =
        golden.contains("betas") && golden["params"].value("cycle_momentum", true);
    ASSERT_EQ(betas.has_value(), cycles_momentum) << where;
    if (cycles_momentum) {
      expect_close(golden["betas"][step][0].get<double>(), (*betas)[0], where + " beta1");
      expect_close(golden["betas"][step][1].get<double>(), (*betas)[1], where + " beta2");
    }
    schedule->advance();
  }
}

INSTANTIATE_TEST_SUITE_P(
    LrSchedule, GoldenTest,
    ::testing::Values("warmup_lr_log", "warmup_lr_linear", "warmup_lr_defaults",
                      "warmup_lr_one_step", "warmup_decay_lr_log", "warmup_decay_lr_linear",
                      "warmup_cosine_lr_linear", "warmup_cosine_lr_log", "one_cycle_decay",
                      "one_cycle_stairs", "one_cycle_no_momentum", "lr_range_test_continuous",
                      "lr_range_test_staircase"),
    [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

TEST(LrScheduleTest, EveryGoldenFileIsTested) {
  int files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(kGoldenDir)) {
    if (entry.path().extension() == ".json") ++files;
  }
  EXPECT_EQ(files, 13) << "add the new golden case to INSTANTIATE_TEST_SUITE_P";
}

TEST(LrScheduleTest, NoSchedulerIsTheOptimizerLr) {
  auto schedule = make(SchedulerType::kNone, json::object(), 3e-4);
  ASSERT_NE(schedule, nullptr);
  for (int i = 0; i < 5; ++i, schedule->advance()) EXPECT_EQ(schedule->lr(), 3e-4);
  EXPECT_EQ(schedule->iteration(), 4);
  EXPECT_FALSE(schedule->betas().has_value());
}

TEST(LrScheduleTest, SetIterationResumesWhereAdvanceWouldBe) {
  const json params = {{"total_num_steps", 100}, {"warmup_num_steps", 10}};
  auto walked = make(SchedulerType::kWarmupCosineLR, params);
  auto resumed = make(SchedulerType::kWarmupCosineLR, params);
  ASSERT_NE(walked, nullptr);
  ASSERT_NE(resumed, nullptr);
  for (int i = 0; i < 37; ++i) walked->advance();
  resumed->set_iteration(36);
  EXPECT_EQ(resumed->iteration(), walked->iteration());
  EXPECT_EQ(resumed->lr(), walked->lr());
  EXPECT_GT(resumed->lr(), 0);
}

TEST(LrScheduleTest, DefaultsAreDeepSpeeds) {
  // WarmupLR: 0 -> optimizer lr over 1000 steps, log; at step 1000 the full lr.
  auto warmup = make(SchedulerType::kWarmupLR, json::object(), 2e-4);
  ASSERT_NE(warmup, nullptr);
  warmup->set_iteration(999);
  expect_close(2e-4 * std::log(1000.0) / std::log(1000.0), warmup->lr(), "warmup 999");
  warmup->set_iteration(1000);
  EXPECT_EQ(warmup->lr(), 2e-4);
  // LRRangeTest: 1e-3 * (1 + (it + 1) / 2000).
  auto range = make(SchedulerType::kLRRangeTest, json::object());
  ASSERT_NE(range, nullptr);
  range->set_iteration(1999);
  expect_close(2e-3, range->lr(), "range test at 2000 steps");
  // OneCycle: second step size = first (2000), so the peak is at 2000 and the
  // cycle ends at cycle_min_lr after 4000 with no decay.
  auto cycle = make(SchedulerType::kOneCycle, {{"cycle_min_lr", 1e-4}, {"cycle_max_lr", 1e-3}});
  ASSERT_NE(cycle, nullptr);
  cycle->set_iteration(1999);
  expect_close(1e-3, cycle->lr(), "one cycle peak");
  cycle->set_iteration(5000);
  EXPECT_EQ(cycle->lr(), 1e-4);
}

TEST(LrScheduleTest, MissingTotalNumSteps) {
  for (SchedulerType t : {SchedulerType::kWarmupDecayLR, SchedulerType::kWarmupCosineLR}) {
    const std::string message = error_of(t, {{"warmup_num_steps", 10}});
    EXPECT_NE(message.find("scheduler.params.total_num_steps"), std::string::npos) << message;
    EXPECT_NE(message.find("missing"), std::string::npos) << message;
  }
}

TEST(LrScheduleTest, OneCycleNeedsItsBounds) {
  const std::string message = error_of(SchedulerType::kOneCycle, {{"cycle_max_lr", 1e-3}});
  EXPECT_NE(message.find("scheduler.params.cycle_min_lr"), std::string::npos) << message;
}

TEST(LrScheduleTest, WrongTypesNameTheKey) {
  struct Case {
    SchedulerType type;
    json params;
    std::string key;
  };
  const std::vector<Case> cases = {
      {SchedulerType::kWarmupLR, {{"warmup_num_steps", "1000"}}, "warmup_num_steps"},
      {SchedulerType::kWarmupLR, {{"warmup_num_steps", 10.5}}, "warmup_num_steps"},
      {SchedulerType::kWarmupLR, {{"warmup_max_lr", {1e-3, 2e-3}}}, "warmup_max_lr"},
      {SchedulerType::kWarmupLR, {{"warmup_type", "cosine"}}, "warmup_type"},
      {SchedulerType::kWarmupDecayLR, {{"total_num_steps", true}}, "total_num_steps"},
      {SchedulerType::kLRRangeTest,
       {{"lr_range_test_staircase", "yes"}},
       "lr_range_test_staircase"},
      {SchedulerType::kOneCycle,
       {{"cycle_min_lr", 1e-4}, {"cycle_max_lr", 1e-3}, {"cycle_momentum", 1}},
       "cycle_momentum"},
  };
  for (const Case& c : cases) {
    const std::string message = error_of(c.type, c.params);
    EXPECT_NE(message.find("scheduler.params." + c.key), std::string::npos)
        << c.params.dump() << " -> " << message;
  }
}

TEST(LrScheduleTest, NegativeValuesAreRejected) {
  struct Case {
    SchedulerType type;
    json params;
    std::string key;
  };
  const std::vector<Case> cases = {
      {SchedulerType::kWarmupLR, {{"warmup_min_lr", -1e-5}}, "warmup_min_lr"},
      {SchedulerType::kWarmupLR, {{"warmup_num_steps", 0}}, "warmup_num_steps"},
      {SchedulerType::kWarmupDecayLR, {{"total_num_steps", -5}}, "total_num_steps"},
      {SchedulerType::kWarmupCosineLR,
       {{"total_num_steps", 100}, {"cos_min_ratio", -0.1}},
       "cos_min_ratio"},
      {SchedulerType::kWarmupCosineLR,
       {{"total_num_steps", 100}, {"warmup_min_ratio", 1.5}},
       "warmup_min_ratio"},
      {SchedulerType::kOneCycle,
       {{"cycle_min_lr", 1e-4}, {"cycle_max_lr", 1e-3}, {"cycle_first_step_size", 0}},
       "cycle_first_step_size"},
      {SchedulerType::kOneCycle,
       {{"cycle_min_lr", 1e-4}, {"cycle_max_lr", 1e-3}, {"decay_step_size", -2}},
       "decay_step_size"},
      {SchedulerType::kOneCycle,
       {{"cycle_min_lr", 1e-4}, {"cycle_max_lr", 1e-3}, {"cycle_first_stair_count", -1}},
       "cycle_first_stair_count"},
      {SchedulerType::kLRRangeTest, {{"lr_range_test_step_size", -3}}, "lr_range_test_step_size"},
  };
  for (const Case& c : cases) {
    const std::string message = error_of(c.type, c.params);
    EXPECT_NE(message.find("scheduler.params." + c.key), std::string::npos)
        << c.params.dump() << " -> " << message;
  }
}

TEST(LrScheduleTest, UnknownParameterIsAnErrorWithASuggestion) {
  const std::string message =
      error_of(SchedulerType::kWarmupLR, {{"warmup_max_lr", 1e-3}, {"warmup_num_step", 10}});
  EXPECT_NE(message.find("scheduler.params.warmup_num_step:"), std::string::npos) << message;
  EXPECT_NE(message.find("did you mean \"scheduler.params.warmup_num_steps\""), std::string::npos)
      << message;
  // WarmupLR does not take WarmupDecayLR's total_num_steps.
  EXPECT_NE(error_of(SchedulerType::kWarmupLR, {{"total_num_steps", 10}})
                .find("scheduler.params.total_num_steps"),
            std::string::npos);
}

TEST(LrScheduleTest, ParamsMustBeAnObject) {
  const std::string message = error_of(SchedulerType::kWarmupLR, json::array({1, 2}));
  EXPECT_NE(message.find("scheduler.params"), std::string::npos) << message;
}

}  // namespace
}  // namespace strata::engine
