// `strata config check`, run as a user would: the real binary on malformed
// files. Each must exit 1 with one "strata: error:" line naming the file and
// the key path (or 0 with a warning), and never crash.
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/file_util.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/cli_test_util.h"

namespace {

using RunResult = strata::testing::CliRun;

class ConfigCheckTest : public ::testing::Test {
 protected:
  std::string write(const std::string& name, const std::string& contents) {
    return scratch_.write(name, contents);
  }
  RunResult run(const std::string& args) { return scratch_.run_strata("config check " + args); }

  strata::testing::ScratchDir scratch_{"strata_config_check_"};
  const std::string dir_ = scratch_.path();
};

struct BadCase {
  const char* name;
  std::string contents;
  std::vector<std::string> must_mention;  // besides the file path
};

const std::string kOk = R"("train_batch_size": 8, "train_micro_batch_size_per_gpu": 2)";

std::vector<BadCase> bad_cases() {
  return {
      {"wrong_type_bool", R"({)" + kOk + R"(, "fp16": {"enabled": "yes"}})", {"fp16.enabled"}},
      {"wrong_type_stage",
       R"({)" + kOk + R"(, "zero_optimization": {"stage": "2"}})",
       {"zero_optimization.stage"}},
      {"section_not_object",
       R"({)" + kOk + R"(, "zero_optimization": [2]})",
       {"zero_optimization", "object"}},
      {"batch_mismatch",
       R"({"train_batch_size": 8, "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 3})",
       {"train_batch_size 8", "train_micro_batch_size_per_gpu 2", "gradient_accumulation_steps 3"}},
      {"batch_remainder",
       R"({"train_batch_size": 10, "train_micro_batch_size_per_gpu": 4})",
       {"train_batch_size 10", "train_micro_batch_size_per_gpu 4"}},
      {"no_batch",
       R"({"gradient_accumulation_steps": 4})",
       {"train_batch_size", "train_micro_batch_size_per_gpu"}},
      {"negative_batch", R"({"train_batch_size": -8})", {"train_batch_size", "-8"}},
      {"fractional_integer",
       R"({)" + kOk + R"(, "gradient_accumulation_steps": 2.5})",
       {"gradient_accumulation_steps", "2.5"}},
      {"huge_integer",
       R"({)" + kOk + R"(, "zero_optimization": {"reduce_bucket_size": 1e30}})",
       {"zero_optimization.reduce_bucket_size"}},
      {"hf_auto", R"({"train_batch_size": "auto"})", {"train_batch_size", "auto"}},
      {"both_precisions",
       R"({)" + kOk + R"(, "fp16": {"enabled": true}, "bf16": {"enabled": true}})",
       {"bf16.enabled", "fp16"}},
      {"bf16_twice",
       R"({)" + kOk + R"(, "bf16": {"enabled": true}, "bfloat16": {"enabled": true}})",
       {"bfloat16"}},
      {"device_gpu",
       R"({)" + kOk +
           R"(, "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "gpu"}}})",
       {"zero_optimization.offload_optimizer.device", "gpu", "none, cpu, nvme"}},
      {"nvme_without_path",
       R"({)" + kOk +
           R"(, "zero_optimization": {"stage": 3, "offload_param": {"device": "nvme"}}})",
       {"zero_optimization.offload_param.nvme_path"}},
      {"stage_5",
       R"({)" + kOk + R"(, "zero_optimization": {"stage": 5}})",
       {"zero_optimization.stage", "5"}},
      {"param_offload_stage2",
       R"({)" + kOk + R"(, "zero_optimization": {"stage": 2, "offload_param": {"device": "cpu"}}})",
       {"zero_optimization.offload_param", "stage 3"}},
      {"ratio_out_of_range",
       R"({)" + kOk +
           R"(, "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu", "ratio": 1.5}}})",
       {"zero_optimization.offload_optimizer.ratio", "1.5"}},
      {"deprecated_and_new",
       R"({)" + kOk +
           R"(, "zero_optimization": {"stage": 2, "cpu_offload": true, "offload_optimizer": {"device": "cpu"}}})",
       {"zero_optimization.cpu_offload"}},
      {"aio_block_size", R"({)" + kOk + R"(, "aio": {"block_size": 1000}})", {"aio.block_size"}},
      {"aio_both_names",
       R"({)" + kOk + R"(, "aio": {"thread_count": 2, "intra_op_parallelism": 2}})",
       {"aio.thread_count"}},
      {"optimizer_sgd",
       R"({)" + kOk + R"(, "optimizer": {"type": "SGD"}})",
       {"optimizer.type", "SGD"}},
      {"scheduler_unknown",
       R"({)" + kOk + R"(, "scheduler": {"type": "Cosine"}})",
       {"scheduler.type", "WarmupLR"}},
      {"strata_overlap",
       R"({)" + kOk + R"(, "strata": {"overlap": "async"}})",
       {"strata.overlap", "async"}},
      {"duplicate_top",
       R"({"train_batch_size": 8, "train_batch_size": 16})",
       {"train_batch_size", "duplicate"}},
      {"duplicate_nested",
       R"({)" + kOk +
           R"(, "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu", "device": "nvme"}}})",
       {"zero_optimization.offload_optimizer.device", "duplicate"}},
      {"truncated",
       R"({"train_batch_size": 8, "fp16": {"enabled": tr)",
       {"not valid JSON", "line 1"}},
      {"not_json", "train_batch_size = 8\n", {"not valid JSON"}},
      {"number_overflow", R"({"train_batch_size": 1e999})", {"not valid JSON", "1e999"}},
      {"trailing_garbage", R"({"train_batch_size": 8} {})", {"not valid JSON"}},
      {"binary_garbage",
       std::string("\x7f"
                   "ELF\x02\x01\x01\0\0\0",
                   10),
       {"not valid JSON"}},
      {"empty", "", {"empty"}},
      {"whitespace_only", "  \n\t\n", {"empty"}},
      {"top_level_array", R"([{"train_batch_size": 8}])", {"top level", "object"}},
      {"top_level_string", R"("train_batch_size")", {"top level"}},
      {"deeply_nested", std::string(100000, '['), {"nested more than"}},
      // What `strata train` refuses when it builds the engine, refused here too.
      {"warmup_steps_negative",
       R"({)" + kOk + R"(, "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": -5}}})",
       {"scheduler.params.warmup_num_steps", "-5"}},
      {"param_offload_without_optimizer_offload",
       R"({)" + kOk + R"(, "zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"}}})",
       {"zero_optimization.offload_param without offload_optimizer"}},
      {"partial_cpu_step",
       R"({)" + kOk +
           R"(, "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu", "ratio": 0.5}}})",
       {"zero_optimization.offload_optimizer.ratio 0.5"}},
      {"eps_zero",
       R"({)" + kOk + R"(, "optimizer": {"type": "AdamW", "params": {"eps": 0}}})",
       {"optimizer.params.eps", "must be > 0"}},
      {"micro_batch_2_40",
       R"({"train_micro_batch_size_per_gpu": 1099511627776})",
       {"train_micro_batch_size_per_gpu", "65536"}},
      {"deeply_nested_objects",
       R"({"strata": )" +
           [] {
             std::string s;
             for (int i = 0; i < 5000; ++i) s += R"({"a": )";
             return s;
           }(),
       {"strata.a.a"}},
  };
}

TEST_F(ConfigCheckTest, MalformedConfigsExitOneNamingFileAndKey) {
  int checked = 0;
  for (const BadCase& c : bad_cases()) {
    SCOPED_TRACE(c.name);
    const std::string path = write(std::string(c.name) + ".json", c.contents);
    for (const char* flags : {"", " --json"}) {
      RunResult r = run("'" + path + "'" + flags);
      ASSERT_FALSE(r.crashed) << r.err;
      EXPECT_EQ(r.exit_code, 1) << r.err;
      EXPECT_TRUE(r.out.empty()) << r.out;
      // Exactly one line, the error, and it names the file.
      ASSERT_EQ(r.err.rfind("strata: error: ", 0), 0u) << r.err;
      EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << r.err;
      EXPECT_NE(r.err.find(path), std::string::npos) << r.err;
      for (const std::string& word : c.must_mention) {
        EXPECT_NE(r.err.find(word), std::string::npos) << "missing \"" << word << "\" in " << r.err;
      }
    }
    ++checked;
  }
  EXPECT_GE(checked, 20);
}

TEST_F(ConfigCheckTest, MissingFileAndDirectory) {
  const std::string missing = dir_ + "/no_such_config.json";
  RunResult r = run("'" + missing + "'");
  ASSERT_FALSE(r.crashed);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("strata: error: "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(missing), std::string::npos) << r.err;

  r = run("'" + dir_ + "'");
  ASSERT_FALSE(r.crashed);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find(dir_), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("directory"), std::string::npos) << r.err;
}

// A device or a FIFO is not a config: refused at once, never read forever
// (/dev/zero) or waited on (a FIFO with no writer).
TEST_F(ConfigCheckTest, DevicesAndFifosAreRefusedQuickly) {
  const std::string fifo = dir_ + "/config.fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  for (const std::string& path : {std::string("/dev/zero"), fifo}) {
    SCOPED_TRACE(path);
    // timeout(1) turns a hang into exit 124.
    RunResult r = scratch_.run_strata("config check '" + path + "'", "timeout 10 ");
    EXPECT_EQ(r.exit_code, 1) << r.err;
    EXPECT_EQ(r.err.rfind("strata: error: ", 0), 0u) << r.err;
    EXPECT_NE(r.err.find(path), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("not a regular file"), std::string::npos) << r.err;
  }
}

TEST_F(ConfigCheckTest, UsageErrorsExitTwo) {
  RunResult r = run("");  // FILE is required
  ASSERT_FALSE(r.crashed);
  EXPECT_EQ(r.exit_code, 2) << r.err;
  r = run("a.json --no-such-flag");
  EXPECT_EQ(r.exit_code, 2) << r.err;
}

TEST_F(ConfigCheckTest, UnknownKeysOnlyWarn) {
  const std::string path =
      write("typo.json", R"({"train_batch_sise": 8, "train_micro_batch_size_per_gpu": 2,
                            "zero_optimization": {"stage": 1, "reduce_bucket_sise": 5e8},
                            "strata": {"overlap": "sync", "trace": "t.json"}})");
  RunResult r = run("'" + path + "' --json");
  ASSERT_FALSE(r.crashed);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("strata: warning: " + path + ": train_batch_sise: unknown key"),
            std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("did you mean \"train_batch_size\"?"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("did you mean \"zero_optimization.reduce_bucket_size\"?"), std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("strata.trace: unknown key"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("error"), std::string::npos) << r.err;
  auto j = nlohmann::json::parse(r.out);  // one object, nothing else on stdout
  EXPECT_EQ(j["warnings"].size(), 3u);
  // The misspelled train_batch_size did not count: micro 2 alone gives 2.
  EXPECT_EQ(j["config"]["train_batch_size"], 2);
  EXPECT_EQ(j["config"]["strata"]["overlap"], "sync");
}

TEST_F(ConfigCheckTest, DeprecatedKeysWarnAndMap) {
  const std::string path =
      write("old.json",
            R"({"train_batch_size": 4, "zero_optimization": {"stage": 2, "cpu_offload": true}})");
  RunResult r = run("'" + path + "' --json");
  ASSERT_FALSE(r.crashed);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("zero_optimization.cpu_offload: deprecated"), std::string::npos) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["config"]["zero_optimization"]["offload_optimizer"]["device"], "cpu");
}

TEST_F(ConfigCheckTest, FixturePrintsResolvedConfig) {
  const std::string fixture = std::string(STRATA_FIXTURES_DIR) + "/ds_config_gpt2_rtx5090.json";
  RunResult r = run("'" + fixture + "' --json");
  ASSERT_FALSE(r.crashed);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // Every key of the fixture is honoured (reduce_bucket_size sizes the
  // gradient buckets): nothing to warn about.
  EXPECT_EQ(r.err, "");
  auto j = nlohmann::json::parse(r.out);
  ASSERT_TRUE(j.is_object());
  EXPECT_EQ(j["valid"], true);
  EXPECT_EQ(j["file"], fixture);
  const auto& c = j["config"];
  EXPECT_EQ(c["train_batch_size"], 8);
  EXPECT_EQ(c["gradient_accumulation_steps"], 4);
  EXPECT_EQ(c["fp16"]["initial_scale_power"], 16);  // default filled in
  EXPECT_EQ(c["fp16"]["loss_scale_window"], 100);
  EXPECT_EQ(c["zero_optimization"]["reduce_bucket_size"], 200000000);
  EXPECT_EQ(c["zero_optimization"]["sub_group_size"], 1000000000);
  EXPECT_EQ(c["aio"]["block_size"], 1048576);

  // Human mode: the resolved config on stdout, a summary line on stderr.
  r = run("'" + fixture + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("ZeRO stage 2"), std::string::npos) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["train_micro_batch_size_per_gpu"], 2);

  // What it prints is itself a valid config that resolves the same.
  const std::string resolved = write("resolved.json", r.out);
  RunResult again = run("'" + resolved + "'");
  EXPECT_EQ(again.exit_code, 0) << again.err;
  EXPECT_EQ(again.out, r.out);
}

// --world-size N resolves the batch rule for N data-parallel ranks
// (train_batch_size = micro x accumulation x N) and refuses sizes that do
// not fit N, naming them.
TEST_F(ConfigCheckTest, WorldSizeResolvesTheBatchRule) {
  const std::string two_keys = write("two_keys.json", R"({
    "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 4,
    "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}},
    "zero_optimization": {"stage": 1, "offload_optimizer": {"device": "cpu"}}})");
  RunResult r = run("'" + two_keys + "' --world-size 4 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["config"]["train_batch_size"], 32);
  EXPECT_NE(j["summary"].get<std::string>().find("x world 4"), std::string::npos) << j["summary"];
  const std::string fixture = std::string(STRATA_FIXTURES_DIR) + "/ds_config_gpt2_rtx5090.json";
  r = run("'" + fixture + "' --world-size 2");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("world size 2"), std::string::npos) << r.err;
  EXPECT_EQ(run("'" + two_keys + "' --world-size 0").exit_code, 2);
}

}  // namespace
