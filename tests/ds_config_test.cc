// core/config: ds_config parsing, DeepSpeed's rules and defaults, messages.
#include "core/config/ds_config.h"

#include <string>
#include <vector>

#include "core/config/json_reader.h"
#include "core/file_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace strata::config {
namespace {

using nlohmann::json;
using ::testing::AllOf;
using ::testing::HasSubstr;

const std::string kFixture = std::string(STRATA_FIXTURES_DIR) + "/ds_config_gpt2_rtx5090.json";

absl::StatusOr<DsConfig> parse(const json& j, std::vector<std::string>* warnings = nullptr,
                               int world_size = 1) {
  return parse_ds_config(j.dump(), "test.json", warnings, world_size);
}

std::string error_of(const json& j, int world_size = 1) {
  auto cfg = parse(j, nullptr, world_size);
  EXPECT_FALSE(cfg.ok()) << j.dump();
  return cfg.ok() ? "" : std::string(cfg.status().message());
}

json fixture_json() {
  auto text = read_file(kFixture);
  EXPECT_TRUE(text.ok()) << text.status();
  return json::parse(text.ok() ? *text : "{}");
}

TEST(DsConfigFixture, ParsesToExpectedValues) {
  std::vector<std::string> warnings;
  auto cfg = load_ds_config(kFixture, &warnings);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  // Every key is honoured: reduce_bucket_size (2e8) sizes the gradient buckets.
  EXPECT_TRUE(warnings.empty()) << warnings[0];
  EXPECT_EQ(cfg->zero.reduce_bucket_size, 200'000'000);
  EXPECT_EQ(cfg->train_batch_size, 8);
  EXPECT_EQ(cfg->train_micro_batch_size_per_gpu, 2);
  EXPECT_EQ(cfg->gradient_accumulation_steps, 4);
  EXPECT_EQ(cfg->world_size, 1);
  EXPECT_TRUE(cfg->fp16.enabled);
  EXPECT_EQ(cfg->fp16.loss_scale, 0);
  EXPECT_EQ(cfg->fp16.initial_scale_power, 16);  // default
  EXPECT_EQ(cfg->fp16.loss_scale_window, 100);
  EXPECT_EQ(cfg->fp16.hysteresis, 2);
  EXPECT_FALSE(cfg->fp16.consecutive_hysteresis);
  EXPECT_EQ(cfg->fp16.min_loss_scale, 1);
  EXPECT_FALSE(cfg->bf16.enabled);
  EXPECT_EQ(cfg->zero.stage, 2);
  EXPECT_EQ(cfg->zero.offload_optimizer.device, OffloadDevice::kNone);
  EXPECT_EQ(cfg->zero.offload_param.device, OffloadDevice::kNone);
  EXPECT_TRUE(cfg->zero.allgather_partitions);
  EXPECT_EQ(cfg->zero.allgather_bucket_size, 200'000'000);  // written 2e8
  EXPECT_EQ(cfg->zero.reduce_bucket_size, 200'000'000);
  EXPECT_TRUE(cfg->zero.overlap_comm);
  EXPECT_TRUE(cfg->zero.reduce_scatter);
  EXPECT_TRUE(cfg->zero.contiguous_gradients);
  EXPECT_EQ(cfg->gradient_clipping, 1.0);
  EXPECT_EQ(cfg->steps_per_print, 100);
  EXPECT_FALSE(cfg->wall_clock_breakdown);
  EXPECT_EQ(cfg->optimizer.type, OptimizerType::kNone);
  EXPECT_EQ(cfg->scheduler.type, SchedulerType::kNone);
}

TEST(DsConfigFixture, CpuOffloadVariant) {
  // The same user on gpt2-xl: micro batch 1, optimizer states in pinned host memory.
  json j = fixture_json();
  j["train_micro_batch_size_per_gpu"] = 1;
  j["gradient_accumulation_steps"] = 8;
  j["zero_optimization"]["offload_optimizer"] = {{"device", "cpu"}, {"pin_memory", true}};
  std::vector<std::string> warnings;
  auto cfg = parse(j, &warnings);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_TRUE(warnings.empty());  // every key honoured, as above
  EXPECT_EQ(cfg->train_micro_batch_size_per_gpu, 1);
  EXPECT_EQ(cfg->gradient_accumulation_steps, 8);
  const OffloadOptimizerConfig& oo = cfg->zero.offload_optimizer;
  EXPECT_EQ(oo.device, OffloadDevice::kCpu);
  EXPECT_TRUE(oo.pin_memory);
  EXPECT_EQ(oo.buffer_count, 4);
  EXPECT_FALSE(oo.pipeline_read);
  EXPECT_FALSE(oo.pipeline_write);
  EXPECT_FALSE(oo.fast_init);
  EXPECT_EQ(oo.ratio, 1.0);
  EXPECT_TRUE(oo.nvme_paths.empty());
}

TEST(DsConfigFixture, NvmeOffloadVariant) {
  json j = fixture_json();
  j["zero_optimization"]["stage"] = 3;
  j["zero_optimization"]["offload_optimizer"] = {
      {"device", "nvme"}, {"nvme_path", "/local_nvme"}, {"pipeline_read", true}};
  j["zero_optimization"]["offload_param"] = {{"device", "nvme"},
                                             {"nvme_path", json::array({"/nvme0", "/nvme1"})}};
  j["aio"] = {{"block_size", 262144}, {"queue_depth", 32}, {"thread_count", 2}};
  std::vector<std::string> warnings;
  auto cfg = parse(j, &warnings);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_TRUE(warnings.empty()) << warnings[0];  // pipeline_read is honoured
  EXPECT_EQ(cfg->zero.offload_optimizer.device, OffloadDevice::kNvme);
  EXPECT_EQ(cfg->zero.offload_optimizer.nvme_paths, std::vector<std::string>{"/local_nvme"});
  EXPECT_EQ(cfg->zero.offload_optimizer.pipeline_read, true);
  EXPECT_EQ(cfg->zero.offload_optimizer.pipeline_write, std::nullopt);  // unset
  EXPECT_EQ(cfg->zero.offload_param.nvme_paths, (std::vector<std::string>{"/nvme0", "/nvme1"}));
  EXPECT_EQ(cfg->zero.offload_param.buffer_count, 5);
  EXPECT_EQ(cfg->zero.offload_param.buffer_size, 100'000'000);
  EXPECT_EQ(cfg->zero.offload_param.max_in_cpu, 1'000'000'000);
  EXPECT_EQ(cfg->aio.block_size, 262144);
  EXPECT_EQ(cfg->aio.queue_depth, 32);
  EXPECT_EQ(cfg->aio.intra_op_parallelism, 2);  // older name thread_count
  EXPECT_FALSE(cfg->aio.single_submit);
  EXPECT_TRUE(cfg->aio.overlap_events);
}

TEST(DsConfigDefaults, MatchDeepSpeed) {
  auto cfg = parse({{"train_batch_size", 4}, {"fp16", {{"enabled", true}}}});
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->fp16.loss_scale, 0);
  EXPECT_EQ(cfg->fp16.initial_scale_power, 16);
  EXPECT_EQ(cfg->fp16.loss_scale_window, 1000);
  EXPECT_EQ(cfg->fp16.hysteresis, 2);
  EXPECT_FALSE(cfg->fp16.consecutive_hysteresis);
  EXPECT_EQ(cfg->fp16.min_loss_scale, 1);
  EXPECT_EQ(cfg->aio.block_size, 1048576);
  EXPECT_EQ(cfg->aio.queue_depth, 8);
  EXPECT_EQ(cfg->aio.intra_op_parallelism, 1);
  EXPECT_FALSE(cfg->aio.single_submit);
  EXPECT_TRUE(cfg->aio.overlap_events);
  EXPECT_FALSE(cfg->aio.use_gds);
  const ZeroConfig& z = cfg->zero;
  EXPECT_EQ(z.stage, 0);
  EXPECT_EQ(z.reduce_bucket_size, 500'000'000);
  EXPECT_EQ(z.allgather_bucket_size, 500'000'000);
  EXPECT_EQ(z.stage3_prefetch_bucket_size, 50'000'000);
  EXPECT_EQ(z.stage3_max_live_parameters, 1'000'000'000);
  EXPECT_EQ(z.stage3_max_reuse_distance, 1'000'000'000);
  EXPECT_EQ(z.stage3_param_persistence_threshold, 100'000);
  EXPECT_EQ(z.sub_group_size, 1'000'000'000);
  EXPECT_FALSE(z.overlap_comm);
  EXPECT_TRUE(z.contiguous_gradients);
  EXPECT_EQ(z.offload_optimizer.buffer_count, 4);
  EXPECT_FALSE(z.offload_optimizer.pin_memory);
  EXPECT_EQ(cfg->gradient_clipping, 0);
  EXPECT_EQ(cfg->steps_per_print, 10);
  EXPECT_EQ(cfg->strata.overlap, OverlapMode::kOverlap);
  EXPECT_FALSE(cfg->strata.delayed_param_update);
  // {"fp16": {}} is DeepSpeed's fp16 off.
  auto off = parse({{"train_batch_size", 4}, {"fp16", json::object()}});
  ASSERT_TRUE(off.ok());
  EXPECT_FALSE(off->fp16.enabled);
}

TEST(DsConfigDefaults, OverlapCommDefaultsOnAtStage3Only) {
  auto s3 = parse({{"train_batch_size", 4}, {"zero_optimization", {{"stage", 3}}}});
  ASSERT_TRUE(s3.ok());
  EXPECT_TRUE(s3->zero.overlap_comm);
  auto s3_off = parse(
      {{"train_batch_size", 4}, {"zero_optimization", {{"stage", 3}, {"overlap_comm", false}}}});
  ASSERT_TRUE(s3_off.ok());
  EXPECT_FALSE(s3_off->zero.overlap_comm);
}

TEST(DsConfigBatch, AnyTwoImplyTheThird) {
  struct Case {
    std::optional<int64_t> train, micro, acc;
    int world;
    BatchSizes want;
  };
  const Case cases[] = {
      {8, 2, 4, 1, {8, 2, 4}},    {8, 2, {}, 1, {8, 2, 4}},   {8, {}, 4, 1, {8, 2, 4}},
      {{}, 2, 4, 1, {8, 2, 4}},   {8, {}, {}, 1, {8, 8, 1}},  {{}, 2, {}, 1, {2, 2, 1}},
      {16, 2, {}, 2, {16, 2, 4}}, {16, {}, 4, 2, {16, 2, 4}}, {{}, 2, 4, 2, {16, 2, 4}},
      {8, {}, {}, 4, {8, 2, 1}},  {{}, 3, {}, 4, {12, 3, 1}},
  };
  for (const Case& c : cases) {
    auto b = resolve_batch_sizes(c.train, c.micro, c.acc, c.world);
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_EQ(b->train_batch_size, c.want.train_batch_size);
    EXPECT_EQ(b->micro_batch_per_gpu, c.want.micro_batch_per_gpu);
    EXPECT_EQ(b->gradient_accumulation_steps, c.want.gradient_accumulation_steps);
  }
}

TEST(DsConfigBatch, ErrorsNameTheValues) {
  auto mismatch = resolve_batch_sizes(8, 2, 3, 1);
  ASSERT_FALSE(mismatch.ok());
  EXPECT_THAT(std::string(mismatch.status().message()),
              AllOf(HasSubstr("train_batch_size 8"), HasSubstr("train_micro_batch_size_per_gpu 2"),
                    HasSubstr("gradient_accumulation_steps 3"), HasSubstr("world size 1")));
  // Integer division leaves a remainder: 10 / 4 = 2, and 2 * 4 != 10.
  auto remainder = resolve_batch_sizes(10, 4, {}, 1);
  ASSERT_FALSE(remainder.ok());
  EXPECT_THAT(std::string(remainder.status().message()), HasSubstr("train_batch_size 10"));
  // World size enters the product.
  EXPECT_FALSE(resolve_batch_sizes(8, 2, 4, 2).ok());
  // Derived 0.
  auto zero = resolve_batch_sizes(2, {}, 4, 1);
  ASSERT_FALSE(zero.ok());
  EXPECT_THAT(std::string(zero.status().message()), HasSubstr("train_micro_batch_size_per_gpu 0"));
  auto neither = resolve_batch_sizes({}, {}, 4, 1);
  ASSERT_FALSE(neither.ok());
  EXPECT_THAT(std::string(neither.status().message()),
              AllOf(HasSubstr("train_batch_size"), HasSubstr("train_micro_batch_size_per_gpu")));
  EXPECT_FALSE(resolve_batch_sizes(-8, {}, {}, 1).ok());
  // Products that overflow 64 bits are an error, not undefined behaviour.
  constexpr int64_t kHuge = int64_t{1} << 62;
  auto huge = resolve_batch_sizes({}, kHuge, 4, 1);
  ASSERT_FALSE(huge.ok());
  EXPECT_THAT(std::string(huge.status().message()), HasSubstr("too large"));
  EXPECT_FALSE(resolve_batch_sizes(kHuge, kHuge, kHuge, 1).ok());
  EXPECT_FALSE(resolve_batch_sizes({}, kHuge, {}, 4).ok());
  EXPECT_FALSE(resolve_batch_sizes(8, {}, {}, 0).ok());
  // Through the parser, with the source name in front and world size passed on.
  EXPECT_THAT(error_of({{"train_batch_size", 8},
                        {"train_micro_batch_size_per_gpu", 2},
                        {"gradient_accumulation_steps", 4}},
                       2),
              AllOf(HasSubstr("test.json: "), HasSubstr("world size 2")));
}

TEST(DsConfigRules, Precision) {
  EXPECT_THAT(
      error_of(
          {{"train_batch_size", 8}, {"fp16", {{"enabled", true}}}, {"bf16", {{"enabled", true}}}}),
      HasSubstr("bf16.enabled"));
  auto old_name = parse({{"train_batch_size", 8}, {"bfloat16", {{"enabled", true}}}});
  ASSERT_TRUE(old_name.ok()) << old_name.status();
  EXPECT_TRUE(old_name->bf16.enabled);
  EXPECT_THAT(error_of({{"train_batch_size", 8},
                        {"fp16", {{"enabled", true}}},
                        {"bfloat16", {{"enabled", true}}}}),
              HasSubstr("bfloat16.enabled"));
  EXPECT_THAT(error_of({{"train_batch_size", 8},
                        {"bf16", {{"enabled", true}}},
                        {"bfloat16", {{"enabled", true}}}}),
              HasSubstr("bfloat16"));
}

// The dtype the reduced gradients cross PCIe in across ranks: DeepSpeed's
// names, unset by default (fp32), anything else an error naming the key.
TEST(DsConfigRules, CommunicationDataType) {
  auto unset = parse({{"train_batch_size", 8}});
  ASSERT_TRUE(unset.ok()) << unset.status();
  EXPECT_EQ(unset->communication_data_type, "");
  for (const char* t : {"fp16", "bf16", "fp32"}) {
    std::vector<std::string> warnings;
    auto cfg = parse({{"train_batch_size", 8}, {"communication_data_type", t}}, &warnings);
    ASSERT_TRUE(cfg.ok()) << cfg.status();
    EXPECT_EQ(cfg->communication_data_type, t);
    EXPECT_TRUE(warnings.empty()) << warnings.front();  // honoured, not ignored
  }
  EXPECT_THAT(error_of({{"train_batch_size", 8}, {"communication_data_type", "int8"}}),
              HasSubstr("communication_data_type"));
}

TEST(DsConfigRules, OffloadDevicesAndStages) {
  json base = {{"train_batch_size", 8}};
  json j = base;
  j["zero_optimization"] = {{"stage", 2}, {"offload_optimizer", {{"device", "gpu"}}}};
  EXPECT_THAT(error_of(j), AllOf(HasSubstr("zero_optimization.offload_optimizer.device"),
                                 HasSubstr("\"gpu\""), HasSubstr("none, cpu, nvme")));
  j["zero_optimization"] = {{"stage", 2}, {"offload_optimizer", {{"device", "nvme"}}}};
  EXPECT_THAT(error_of(j), HasSubstr("zero_optimization.offload_optimizer.nvme_path"));
  j["zero_optimization"] = {{"stage", 2}, {"offload_param", {{"device", "cpu"}}}};
  EXPECT_THAT(error_of(j),
              AllOf(HasSubstr("zero_optimization.offload_param"), HasSubstr("stage 3")));
  j["zero_optimization"] = {{"stage", 5}};
  EXPECT_THAT(error_of(j),
              AllOf(HasSubstr("zero_optimization.stage"), HasSubstr("[0, 3]"), HasSubstr("got 5")));
  j["zero_optimization"] = {{"offload_optimizer", {{"device", "cpu"}}}};
  EXPECT_THAT(error_of(j), HasSubstr("stage"));
  j["zero_optimization"] = {{"stage", 2},
                            {"offload_optimizer", {{"device", "cpu"}, {"ratio", 1.5}}}};
  EXPECT_THAT(error_of(j), HasSubstr("zero_optimization.offload_optimizer.ratio"));
  // strata.nvme_paths is the fallback for an nvme offload without nvme_path.
  j["zero_optimization"] = {{"stage", 3},
                            {"offload_optimizer", {{"device", "nvme"}}},
                            {"offload_param", {{"device", "nvme"}, {"nvme_path", "/p"}}}};
  j["strata"] = {{"nvme_paths", {"/a", "/b"}}};
  auto cfg = parse(j);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->zero.offload_optimizer.nvme_paths, (std::vector<std::string>{"/a", "/b"}));
  EXPECT_EQ(cfg->zero.offload_param.nvme_paths, std::vector<std::string>{"/p"});
}

TEST(DsConfigRules, DeprecatedOffloadKeysMapWithWarning) {
  std::vector<std::string> warnings;
  auto cfg = parse({{"train_batch_size", 8},
                    {"zero_optimization",
                     {{"stage", 3},
                      {"cpu_offload", true},
                      {"cpu_offload_param", true},
                      {"cpu_offload_use_pin_memory", true}}}},
                   &warnings);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->zero.offload_optimizer.device, OffloadDevice::kCpu);
  EXPECT_EQ(cfg->zero.offload_param.device, OffloadDevice::kCpu);
  EXPECT_TRUE(cfg->zero.offload_optimizer.pin_memory);
  EXPECT_TRUE(cfg->zero.offload_param.pin_memory);
  ASSERT_EQ(warnings.size(), 3u);
  for (const std::string& w : warnings) EXPECT_THAT(w, HasSubstr("deprecated"));
  EXPECT_THAT(warnings[0], HasSubstr("zero_optimization.cpu_offload_use_pin_memory"));
  EXPECT_THAT(
      error_of(
          {{"train_batch_size", 8},
           {"zero_optimization",
            {{"stage", 2}, {"cpu_offload", true}, {"offload_optimizer", {{"device", "cpu"}}}}}}),
      HasSubstr("zero_optimization.cpu_offload"));
}

TEST(DsConfigRules, AioNamesAndAlignment) {
  auto cfg = parse({{"train_batch_size", 8}, {"aio", {{"intra_op_parallelism", 4}}}});
  ASSERT_TRUE(cfg.ok());
  EXPECT_EQ(cfg->aio.intra_op_parallelism, 4);
  EXPECT_THAT(error_of({{"train_batch_size", 8},
                        {"aio", {{"intra_op_parallelism", 4}, {"thread_count", 4}}}}),
              HasSubstr("aio.thread_count"));
  EXPECT_THAT(error_of({{"train_batch_size", 8}, {"aio", {{"block_size", 1000}}}}),
              AllOf(HasSubstr("aio.block_size"), HasSubstr("4096")));
}

// What the I/O engine would refuse when training starts is refused where it
// is read, so `strata config check` and `strata train` agree.
TEST(DsConfigRules, AioWithinTheIoEngineLimits) {
  EXPECT_THAT(error_of({{"train_batch_size", 8}, {"aio", {{"queue_depth", 5000}}}}),
              HasSubstr("aio.queue_depth: expected an integer in [1, 4096]"));
  EXPECT_THAT(error_of({{"train_batch_size", 8}, {"aio", {{"block_size", int64_t{1} << 30}}}}),
              HasSubstr("aio.block_size: expected an integer in [4096, 268435456]"));
  EXPECT_THAT(error_of({{"train_batch_size", 8}, {"aio", {{"thread_count", 1000}}}}),
              HasSubstr("aio.thread_count: expected an integer in [1, 256]"));
}

// A size no machine can hold is an error naming the key, before anything
// is allocated for it (2^40 sequences reached the model as bad_alloc).
TEST(DsConfigRules, AbsurdSizesAreRefusedByKey) {
  EXPECT_THAT(error_of({{"train_micro_batch_size_per_gpu", int64_t{1} << 40}}),
              HasSubstr("train_micro_batch_size_per_gpu: expected an integer in [1, 65536]"));
  EXPECT_THAT(error_of({{"train_micro_batch_size_per_gpu", 1},
                        {"gradient_accumulation_steps", int64_t{1} << 40}}),
              HasSubstr("gradient_accumulation_steps: expected an integer in [1, 2147483648]"));
  EXPECT_THAT(error_of({{"train_batch_size", 8},
                        {"strata", {{"rollback_buffer_bytes", int64_t{1} << 60}}}}),
              HasSubstr("strata.rollback_buffer_bytes"));
  EXPECT_THAT(error_of({{"train_batch_size", 8},
                        {"strata", {{"prefetch_window_bytes", int64_t{1} << 60}}}}),
              HasSubstr("strata.prefetch_window_bytes"));
}

// nvme_path takes DeepSpeed's comma-separated string as well as a list
// (spaces around each entry dropped), on every key that names directories;
// an empty entry is an error naming the key.
TEST(DsConfigNvmePath, CommaSeparatedStringIsAList) {
  json j = fixture_json();
  j["zero_optimization"]["stage"] = 3;
  j["zero_optimization"]["offload_optimizer"] = {{"device", "nvme"},
                                                 {"nvme_path", "/nvme0, /nvme1,/nvme2"}};
  j["zero_optimization"]["offload_param"] = {{"device", "nvme"}, {"nvme_path", "/a,/b"}};
  j["strata"] = {{"nvme_paths", "/x"}};
  std::vector<std::string> warnings;
  auto cfg = parse(j, &warnings);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->zero.offload_optimizer.nvme_paths,
            (std::vector<std::string>{"/nvme0", "/nvme1", "/nvme2"}));
  EXPECT_EQ(cfg->zero.offload_param.nvme_paths, (std::vector<std::string>{"/a", "/b"}));
  EXPECT_EQ(cfg->strata.nvme_paths, std::vector<std::string>{"/x"});
  j["zero_optimization"]["offload_optimizer"]["nvme_path"] = "/nvme0,,/nvme1";
  auto bad = parse(j, &warnings);
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("offload_optimizer.nvme_path"));
}

// pipeline_read / pipeline_write: unset (DeepSpeed's default) or true keeps
// that half of strata's NVMe pipeline, false turns it off; no warning.
TEST(DsConfigPipeline, ReadAndWriteAreHonoured) {
  json j = fixture_json();
  j["zero_optimization"]["offload_optimizer"] = {
      {"device", "cpu"}, {"pipeline_read", false}, {"pipeline_write", true}};
  std::vector<std::string> warnings;
  auto cfg = parse(j, &warnings);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_TRUE(warnings.empty()) << warnings[0];
  EXPECT_EQ(cfg->zero.offload_optimizer.pipeline_read, false);
  EXPECT_EQ(cfg->zero.offload_optimizer.pipeline_write, true);
  j["zero_optimization"]["offload_optimizer"]["pipeline_read"] = "yes";
  EXPECT_FALSE(parse(j, &warnings).ok());
}

// Each DeepSpeed key strata reads but does not act on says so, and what
// strata does instead, when the user set it; its default says nothing.
TEST(DsConfigWarnings, KeysStrataDoesNotHonourSayWhatItDoesInstead) {
  const json set = {
      {"train_batch_size", 8},
      {"zero_optimization",
       {{"stage", 3},
        {"offload_optimizer",
         {{"device", "cpu"},
          {"buffer_count", 8},
          {"pipeline_read", true},
          {"pipeline_write", true}}},
        {"offload_param",
         {{"device", "cpu"}, {"buffer_count", 7}, {"buffer_size", 1e9}, {"max_in_cpu", 1e10}}},
        {"reduce_bucket_size", 1e8},
        {"prefetch_bucket_size", 1e8},
        {"stage3_max_reuse_distance", 1e8},
        {"stage3_param_persistence_threshold", 1e6},
        {"sub_group_size", 1e8}}},
      {"activation_checkpointing", {{"partition_activations", true}}}};
  std::vector<std::string> warnings;
  auto cfg = parse(set, &warnings);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  std::string all;
  for (const std::string& w : warnings) all += w + "\n";
  for (const char* key :
       {"offload_optimizer.buffer_count", "offload_param.buffer_count", "offload_param.buffer_size",
        "offload_param.max_in_cpu", "zero_optimization.prefetch_bucket_size",
        "zero_optimization.stage3_max_reuse_distance",
        "zero_optimization.stage3_param_persistence_threshold",
        "zero_optimization.sub_group_size"}) {
    EXPECT_THAT(all, HasSubstr(std::string(key) + ": set, but strata does not use it: ")) << key;
  }
  EXPECT_THAT(all, HasSubstr("zero_optimization.prefetch_bucket_size: set, but strata does not "
                             "use it: strata.prefetch_window_bytes plays this role"));
  EXPECT_THAT(all, HasSubstr("activation_checkpointing: ignored: strata does not read this "
                             "section; `strata train --checkpoint-activations`"));
  // (pipeline_read / pipeline_write and reduce_bucket_size are honoured.)
  EXPECT_EQ(warnings.size(), 9u) << all;

  // The same keys at DeepSpeed's defaults: nothing to say.
  const json defaults = {
      {"train_batch_size", 8},
      {"zero_optimization",
       {{"stage", 3},
        {"offload_optimizer", {{"device", "cpu"}, {"buffer_count", 4}, {"pipeline_read", false}}},
        {"offload_param",
         {{"device", "cpu"}, {"buffer_count", 5}, {"buffer_size", 1e8}, {"max_in_cpu", 1e9}}},
        {"reduce_bucket_size", 5e8},
        {"stage3_prefetch_bucket_size", 5e7},
        {"sub_group_size", 1e9}}}};
  warnings.clear();
  ASSERT_TRUE(parse(defaults, &warnings).ok());
  EXPECT_TRUE(warnings.empty()) << warnings.front();
}

TEST(DsConfigOptimizer, AdamIsAdamWUnlessAdamWModeFalse) {
  auto adam = parse({{"train_batch_size", 8}, {"optimizer", {{"type", "Adam"}}}});
  ASSERT_TRUE(adam.ok());
  EXPECT_EQ(adam->optimizer.type, OptimizerType::kAdamW);
  EXPECT_EQ(adam->optimizer.lr, 1e-3);
  EXPECT_EQ(adam->optimizer.betas[1], 0.999);
  EXPECT_EQ(adam->optimizer.eps, 1e-8);
  EXPECT_EQ(adam->optimizer.weight_decay, 0);
  auto plain = parse({{"train_batch_size", 8},
                      {"optimizer",
                       {{"type", "adam"},
                        {"params",
                         {{"lr", 3e-4},
                          {"betas", {0.8, 0.95}},
                          {"weight_decay", 0.1},
                          {"adam_w_mode", false}}}}}});
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(plain->optimizer.type, OptimizerType::kAdam);
  EXPECT_EQ(plain->optimizer.lr, 3e-4);
  EXPECT_EQ(plain->optimizer.betas[0], 0.8);
  EXPECT_EQ(plain->optimizer.weight_decay, 0.1);
  auto lion = parse({{"train_batch_size", 8}, {"optimizer", {{"type", "Lion"}}}});
  ASSERT_TRUE(lion.ok());
  EXPECT_EQ(lion->optimizer.type, OptimizerType::kLion);
  EXPECT_EQ(lion->optimizer.betas[1], 0.99);
  EXPECT_THAT(error_of({{"train_batch_size", 8}, {"optimizer", {{"type", "SGD"}}}}),
              HasSubstr("optimizer.type"));
  EXPECT_THAT(error_of({{"train_batch_size", 8},
                        {"optimizer", {{"type", "Adam"}, {"params", {{"betas", {0.9}}}}}}}),
              HasSubstr("optimizer.params.betas"));
  EXPECT_THAT(error_of({{"train_batch_size", 8},
                        {"optimizer", {{"type", "Adam"}, {"params", {{"amsgrad", true}}}}}}),
              HasSubstr("optimizer.params.amsgrad"));
}

TEST(DsConfigValues, IntegersWrittenAsFloats) {
  auto ok = parse({{"train_batch_size", 8}, {"zero_optimization", {{"sub_group_size", 1e9}}}});
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(ok->zero.sub_group_size, 1'000'000'000);
  EXPECT_THAT(error_of({{"train_batch_size", 8}, {"gradient_accumulation_steps", 2.5}}),
              AllOf(HasSubstr("gradient_accumulation_steps"), HasSubstr("2.5")));
  EXPECT_THAT(
      error_of({{"train_batch_size", 8}, {"zero_optimization", {{"sub_group_size", 1e30}}}}),
      HasSubstr("zero_optimization.sub_group_size"));
  EXPECT_THAT(error_of({{"train_batch_size", "auto"}}),
              AllOf(HasSubstr("train_batch_size"), HasSubstr("Hugging Face")));
  EXPECT_THAT(error_of({{"train_batch_size", 8}, {"fp16", {{"enabled", 1}}}}),
              AllOf(HasSubstr("fp16.enabled"), HasSubstr("true or false"), HasSubstr("got 1")));
  EXPECT_THAT(error_of({{"train_batch_size", 8}, {"fp16", true}}),
              AllOf(HasSubstr("fp16"), HasSubstr("object")));
  // null is "not given".
  auto null = parse({{"train_batch_size", 8}, {"gradient_clipping", nullptr}});
  ASSERT_TRUE(null.ok());
  EXPECT_EQ(null->gradient_clipping, 0);
}

TEST(DsConfigValues, Stage3AliasesAndConflicts) {
  auto cfg = parse({{"train_batch_size", 8},
                    {"zero_optimization", {{"stage", 3}, {"prefetch_bucket_size", 1e6}}}});
  ASSERT_TRUE(cfg.ok());
  EXPECT_EQ(cfg->zero.stage3_prefetch_bucket_size, 1'000'000);
  EXPECT_THAT(error_of({{"train_batch_size", 8},
                        {"zero_optimization",
                         {{"stage3_prefetch_bucket_size", 1}, {"prefetch_bucket_size", 2}}}}),
              HasSubstr("zero_optimization.prefetch_bucket_size"));
}

TEST(DsConfigWarnings, UnknownKeysWithDidYouMean) {
  std::vector<std::string> warnings;
  auto cfg = parse({{"train_batch_size", 8},
                    {"gradient_acumulation_steps", 1},
                    {"zero_optimization", {{"stag", 2}}},
                    {"strata", {{"overlap", "sync"}, {"prefetch_window", 5}}},
                    {"completely_unrelated_thing", 1}},
                   &warnings);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->strata.overlap, OverlapMode::kSync);
  std::string all;
  for (const std::string& w : warnings) all += w + "\n";
  EXPECT_THAT(all, HasSubstr("gradient_acumulation_steps: unknown key, ignored (did you mean "
                             "\"gradient_accumulation_steps\"?)"));
  EXPECT_THAT(all, HasSubstr("zero_optimization.stag: unknown key, ignored (did you mean "
                             "\"zero_optimization.stage\"?)"));
  EXPECT_THAT(all, HasSubstr("strata.prefetch_window: unknown key, ignored (did you mean "
                             "\"strata.prefetch_window_bytes\"?)"));
  EXPECT_THAT(all, HasSubstr("completely_unrelated_thing: unknown key, ignored\n"));
  EXPECT_EQ(warnings.size(), 4u) << all;
}

TEST(DsConfigWarnings, KnownButUnusedDeepSpeedKeys) {
  std::vector<std::string> warnings;
  auto cfg = parse({{"train_batch_size", 8},
                    {"zero_allow_untested_optimizer", true},
                    {"tensorboard", {{"enabled", false}}}},
                   &warnings);
  ASSERT_TRUE(cfg.ok());
  ASSERT_EQ(warnings.size(), 2u);
  for (const std::string& w : warnings) EXPECT_THAT(w, HasSubstr("ignored:"));
}

TEST(DsConfigStrata, Section) {
  auto cfg = parse({{"train_batch_size", 8},
                    {"strata",
                     {{"overlap", "overlap"},
                      {"nvme_paths", "/mnt/nvme"},
                      {"trace_file", "trace.json"},
                      {"log_level", "info,swap=debug"},
                      {"delayed_param_update", true},
                      {"prefetch_window_bytes", 2e9}}}});
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->strata.nvme_paths, std::vector<std::string>{"/mnt/nvme"});
  EXPECT_EQ(cfg->strata.trace_file, "trace.json");
  EXPECT_EQ(cfg->strata.log_level, "info,swap=debug");
  EXPECT_TRUE(cfg->strata.delayed_param_update);
  EXPECT_EQ(cfg->strata.prefetch_window_bytes, 2'000'000'000);
  EXPECT_THAT(error_of({{"train_batch_size", 8}, {"strata", {{"overlap", "async"}}}}),
              AllOf(HasSubstr("strata.overlap"), HasSubstr("sync, overlap")));
  EXPECT_THAT(error_of({{"train_batch_size", 8}, {"strata", {{"log_level", "loud"}}}}),
              HasSubstr("strata.log_level"));
  EXPECT_THAT(error_of({{"train_batch_size", 8}, {"strata", {{"nvme_paths", json::array()}}}}),
              HasSubstr("strata.nvme_paths"));
}

TEST(DsConfigJson, ParseErrorsNameSourceAndPlace) {
  auto dup =
      parse_ds_config(R"({"train_batch_size": 8, "zero_optimization": {"stage": 1, "stage": 2}})",
                      "cfg.json", nullptr);
  ASSERT_FALSE(dup.ok());
  EXPECT_THAT(std::string(dup.status().message()),
              AllOf(HasSubstr("cfg.json: "), HasSubstr("zero_optimization.stage: duplicate key")));
  auto in_array = parse_json_strict(R"({"a": [{"x": 1}, {"x": 1, "x": 2}]})", "s");
  ASSERT_FALSE(in_array.ok());
  EXPECT_THAT(std::string(in_array.status().message()), HasSubstr("a[1].x: duplicate key"));
  auto truncated = parse_ds_config("{\"train_batch_size\": 8,\n \"fp16\": {", "cfg.json", nullptr);
  ASSERT_FALSE(truncated.ok());
  EXPECT_THAT(std::string(truncated.status().message()),
              AllOf(HasSubstr("cfg.json: not valid JSON"), HasSubstr("line 2")));
  auto empty = parse_ds_config(" \n", "cfg.json", nullptr);
  ASSERT_FALSE(empty.ok());
  EXPECT_THAT(std::string(empty.status().message()), HasSubstr("empty"));
  auto array = parse_ds_config("[1, 2]", "cfg.json", nullptr);
  ASSERT_FALSE(array.ok());
  EXPECT_THAT(std::string(array.status().message()), HasSubstr("top level must be a JSON object"));
  auto trailing = parse_ds_config("{\"train_batch_size\": 8} x", "cfg.json", nullptr);
  EXPECT_FALSE(trailing.ok());
  auto missing = load_ds_config("/nonexistent/dir/ds.json", nullptr);
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("/nonexistent/dir/ds.json"));
}

TEST(DsConfigJson, ResolvedConfigParsesBackUnchanged) {
  json nvme = fixture_json();
  nvme["zero_optimization"] = {{"stage", 3},
                               {"offload_optimizer", {{"device", "nvme"}, {"nvme_path", "/n"}}},
                               {"offload_param", {{"device", "cpu"}, {"pin_memory", true}}}};
  nvme["optimizer"] = {{"type", "Adam"}, {"params", {{"lr", 1e-4}, {"adam_w_mode", false}}}};
  nvme["scheduler"] = {{"type", "WarmupLR"}, {"params", {{"warmup_num_steps", 100}}}};
  nvme["strata"] = {{"overlap", "sync"}, {"nvme_paths", {"/x", "/y"}}};
  nvme["communication_data_type"] = "bf16";
  json lion = {{"train_micro_batch_size_per_gpu", 4},
               {"bfloat16", {{"enabled", true}}},
               {"optimizer", {{"type", "Lion"}}}};
  for (const json& j : {fixture_json(), nvme, lion}) {
    auto cfg = parse(j);
    ASSERT_TRUE(cfg.ok()) << cfg.status();
    std::vector<std::string> warnings;
    auto again = parse_ds_config(to_json(*cfg).dump(), "resolved.json", &warnings);
    ASSERT_TRUE(again.ok()) << again.status() << "\n" << to_json(*cfg).dump(2);
    // The resolved config repeats the user's values, and so their warnings
    // (keys strata reads but does not act on), never any other.
    for (const std::string& w : warnings) EXPECT_THAT(w, HasSubstr("strata does not use it"));
    EXPECT_TRUE(*again == *cfg) << to_json(*cfg).dump(2) << "\n" << to_json(*again).dump(2);
  }
}

TEST(JsonReader, EditDistanceAndClosestKey) {
  EXPECT_EQ(edit_distance("", ""), 0);
  EXPECT_EQ(edit_distance("stage", "stage"), 0);
  EXPECT_EQ(edit_distance("stag", "stage"), 1);
  EXPECT_EQ(edit_distance("fp61", "fp16"), 1);  // adjacent swap
  EXPECT_EQ(edit_distance("kitten", "sitting"), 3);
  std::vector<std::string> keys = {"fp16", "bf16", "train_batch_size", "optimizer"};
  EXPECT_EQ(closest_key("Train_Batch_Size", keys), "train_batch_size");
  EXPECT_EQ(closest_key("optimiser", keys), "optimizer");
  EXPECT_EQ(closest_key("fp61", keys), "fp16");
  EXPECT_EQ(closest_key("scheduler", keys), std::nullopt);
}

}  // namespace
}  // namespace strata::config
