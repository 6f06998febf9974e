// `strata plan`, run as a user would: the real binary on the shared fixture
// and on configs written here, its JSON checked against numbers worked out by
// hand from the formulas in engine/plan.h (tests/plan_test.cc checks them
// exactly against engine::plan_placement); bad inputs exit 1 or 2 with one
// "strata: error:" line.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/cli_test_util.h"

namespace {

using nlohmann::json;

const std::string kFixture = std::string(STRATA_FIXTURES_DIR) + "/ds_config_gpt2_rtx5090.json";

// gpt2: 12 layers, 12 heads, 768 wide, vocab 50257, 1024 positions.
constexpr int64_t kN = 124'439'808;
constexpr int64_t kLargest = 50257 * 768;  // wte
// Activations at micro batch 2, fp16: 12*2*1024*(34*768 + 5*12*1024) + 4*2*1024*50257.
constexpr int64_t kGpt2Activations = 2'151'677'952 + 411'705'344;

using RunResult = strata::testing::CliRun;

// Host- and NVMe-homed tensors take whole 4 KiB pages, so a role there is its
// exact bytes plus less than a page for each of GPT-2's 148 tensors; device
// copies are rounded to 256 bytes.
void expect_paged(const json& actual, int64_t exact, int64_t unit = 4096) {
  ASSERT_TRUE(actual.is_number_integer()) << actual;
  EXPECT_GE(actual.get<int64_t>(), exact);
  EXPECT_LT(actual.get<int64_t>(), exact + 148 * unit);
}

class PlanCommandTest : public ::testing::Test {
 protected:
  std::string write(const std::string& name, const std::string& contents) {
    return scratch_.write(name, contents);
  }

  RunResult run(const std::string& args) {
    RunResult r = scratch_.run_strata("plan " + args);
    EXPECT_GE(r.exit_code, 0) << args;
    return r;
  }

  json run_json(const std::string& args) {
    RunResult r = run(args + " --json");
    EXPECT_EQ(r.exit_code, 0) << r.err;
    json j = json::parse(r.out, nullptr, /*allow_exceptions=*/false);
    EXPECT_TRUE(j.is_object()) << "stdout is not one JSON object: " << r.out;
    return j;
  }

  strata::testing::ScratchDir scratch_{"strata_plan_test_"};
  const std::string dir_ = scratch_.path();
};

TEST_F(PlanCommandTest, FixtureGpt2OnTheGpu) {
  json j = run_json("--model gpt2 --deepspeed_config '" + kFixture +
                    "' --gpu-mem 32GiB --host-mem 64GiB");
  ASSERT_TRUE(j.is_object());
  EXPECT_EQ(j["model"]["params"], kN);
  EXPECT_EQ(j["model"]["largest_layer_params"], kLargest);
  EXPECT_EQ(j["config"]["zero_stage"], 2);
  EXPECT_EQ(j["config"]["precision"], "fp16");
  EXPECT_EQ(j["config"]["micro_batch"], 2);

  // Stage 2, no offload: every role on the GPU.
  const json& gpu = j["tiers"]["gpu"];
  EXPECT_EQ(gpu["roles"]["param16"], 2 * kN);
  EXPECT_EQ(gpu["roles"]["grad16"], 2 * kN);
  EXPECT_EQ(gpu["roles"]["grad32"], 4 * kN);
  EXPECT_EQ(gpu["roles"]["master32"], 4 * kN);
  EXPECT_EQ(gpu["roles"]["exp_avg"], 4 * kN);
  EXPECT_EQ(gpu["roles"]["exp_avg_sq"], 4 * kN);
  EXPECT_EQ(gpu["roles"]["activations"], kGpt2Activations);
  EXPECT_EQ(gpu["roles"]["staging"], 0);
  EXPECT_EQ(gpu["total"], 20 * kN + kGpt2Activations);
  EXPECT_EQ(gpu["capacity"], int64_t{32} << 30);
  EXPECT_EQ(gpu["fits"], true);
  EXPECT_EQ(j["tiers"]["host"]["total"], 0);
  EXPECT_EQ(j["tiers"]["host"]["capacity"], int64_t{64} << 30);
  EXPECT_EQ(j["tiers"]["nvme"]["total"], 0);

  // DeepSpeed's ZeRO-2 estimate without offload: GPU 2N + 18N, CPU 4N * 1.5.
  EXPECT_EQ(j["deepspeed"]["estimator"], "estimate_zero2_model_states_mem_needs_all_live");
  EXPECT_EQ(j["deepspeed"]["gpu"], 20 * kN);
  EXPECT_EQ(j["deepspeed"]["cpu"], 6 * kN);
  EXPECT_EQ(j["fits"], true);
  EXPECT_TRUE(j["advice"].empty());
}

TEST_F(PlanCommandTest, WithoutGpuMemTheVerdictIsOpen) {
  json j = run_json("--model gpt2 --deepspeed_config '" + kFixture + "' --host-mem 64GiB");
  EXPECT_TRUE(j["tiers"]["gpu"]["capacity"].is_null());
  EXPECT_TRUE(j["tiers"]["gpu"]["fits"].is_null());
  EXPECT_TRUE(j["fits"].is_null());
}

TEST_F(PlanCommandTest, Gpt2XlDoesNotFitA32GiBGpuAndSaysWhatToChange) {
  json j = run_json("--model gpt2-xl --deepspeed_config '" + kFixture +
                    "' --gpu-mem 32GiB --host-mem 64GiB");
  constexpr int64_t n = 1'557'611'200;
  // 48*2*1024*(34*1600 + 5*25*1024) + 4*2*1024*50257
  constexpr int64_t activations = 17'930'649'600 + 411'705'344;
  EXPECT_EQ(j["tiers"]["gpu"]["roles"]["activations"], activations);
  EXPECT_EQ(j["tiers"]["gpu"]["total"], 20 * n + activations);
  EXPECT_EQ(j["tiers"]["gpu"]["fits"], false);
  EXPECT_EQ(j["fits"], false);
  const std::string advice = j["advice"].dump();
  EXPECT_NE(advice.find("offload_optimizer.device"), std::string::npos) << advice;
  EXPECT_NE(advice.find("train_micro_batch_size_per_gpu"), std::string::npos) << advice;
}

TEST_F(PlanCommandTest, CpuOffloadMovesTheOptimizerToTheHost) {
  const std::string cfg = write("offload_cpu.json", R"({
    "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
    "bf16": {"enabled": true},
    "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}},
    "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu", "pin_memory": true}}
  })");
  json j =
      run_json("--model gpt2 --deepspeed_config '" + cfg + "' --gpu-mem 32GiB --host-mem 2GiB");
  const json& gpu = j["tiers"]["gpu"]["roles"];
  EXPECT_EQ(gpu["param16"], 2 * kN);
  EXPECT_EQ(gpu["grad16"], 2 * kN);
  EXPECT_EQ(gpu["grad32"], 0);
  EXPECT_EQ(gpu["master32"], 0);
  const json& host = j["tiers"]["host"];
  expect_paged(host["roles"]["param16"], 2 * kN);
  expect_paged(host["roles"]["grad16"], 2 * kN);
  expect_paged(host["roles"]["grad32"], 4 * kN);
  expect_paged(host["roles"]["master32"], 4 * kN);
  expect_paged(host["roles"]["exp_avg"], 4 * kN);
  expect_paged(host["roles"]["exp_avg_sq"], 4 * kN);
  EXPECT_EQ(host["roles"]["staging"], 0);  // nothing on NVMe to cache
  EXPECT_GE(host["total"], 20 * kN);       // 2.49 GB > 2 GiB
  EXPECT_EQ(host["fits"], false);
  EXPECT_EQ(j["config"]["precision"], "bf16");
  // ZeRO-2 with offload: GPU 2N, CPU N * max(4, 16) * 1.5.
  EXPECT_EQ(j["deepspeed"]["gpu"], 2 * kN);
  EXPECT_EQ(j["deepspeed"]["cpu"], 24 * kN);
  EXPECT_EQ(j["fits"], false);
  EXPECT_NE(j["advice"].dump().find("\\\"nvme\\\""), std::string::npos) << j["advice"].dump();
}

// --world-size 4: one rank's bytes, the batch rule resolved for 4 ranks,
// DeepSpeed's estimate for 4 GPUs; the node's host memory shared by them.
TEST_F(PlanCommandTest, WorldSizeGivesOneRanksShare) {
  const std::string cfg = write("dp.json", R"({
    "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 2,
    "bf16": {"enabled": true},
    "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}},
    "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}
  })");
  const std::string args = "--model gpt2 --deepspeed_config '" + cfg + "' --gpu-mem 32GiB";
  json one = run_json(args + " --host-mem 64GiB");
  json four = run_json(args + " --host-mem 64GiB --world-size 4");
  EXPECT_EQ(four["config"]["world_size"], 4);
  EXPECT_EQ(four["config"]["train_batch_size"], 16);  // 2 x 2 x 4
  EXPECT_EQ(one["config"]["train_batch_size"], 4);
  // A rank holds less of the roles the engine partitions, the same of the rest.
  const json& h1 = one["tiers"]["host"]["roles"];
  const json& h4 = four["tiers"]["host"]["roles"];
  const json split = four["config"]["partitioned"];
  for (const char* role : {"param16", "grad16", "grad32", "master32", "exp_avg", "exp_avg_sq"}) {
    SCOPED_TRACE(role);
    const bool partitioned = std::find(split.begin(), split.end(), role) != split.end();
    if (partitioned) {
      EXPECT_LT(h4[role].get<int64_t>(), h1[role].get<int64_t>());
    } else {
      EXPECT_EQ(h4[role], h1[role]);
    }
  }
  EXPECT_TRUE(one["config"]["partitioned"].empty());
  // The engine's ZeRO slices: each rank homes a quarter of the fp32 gradient,
  // master and states (4 * kN / 4 bytes each, a page per tensor at most more).
  for (const char* role : {"grad32", "master32", "exp_avg", "exp_avg_sq"}) {
    SCOPED_TRACE(role);
    EXPECT_NE(std::find(split.begin(), split.end(), role), split.end());
    expect_paged(h4[role], kN);
  }
  EXPECT_EQ(four["tiers"]["host"]["shared_by_ranks"], 4);
  // DeepSpeed for G = 4: GPU 2N, CPU N*max(16, 16)*1.5 a node, a quarter a rank.
  EXPECT_EQ(four["deepspeed"]["gpu"], 2 * kN);
  EXPECT_EQ(four["deepspeed"]["cpu"], 24 * kN);
  EXPECT_EQ(four["deepspeed"]["cpu_per_rank"], 6 * kN);
  // 4 ranks need 4x one rank's share of the node's memory.
  const int64_t rank_host = four["tiers"]["host"]["total"].get<int64_t>();
  json tight = run_json(args + " --world-size 4 --host-mem " + std::to_string(4 * rank_host - 1));
  EXPECT_EQ(tight["tiers"]["host"]["fits"], false);
  json two_nodes =
      run_json(args + " --world-size 4 --nodes 2 --host-mem " + std::to_string(2 * rank_host));
  EXPECT_EQ(two_nodes["tiers"]["host"]["fits"], true);
  EXPECT_EQ(two_nodes["config"]["ranks_per_node"], 2);
  // DeepSpeed's ZeRO-2 offload CPU counts every GPU of the job: max(4*4, 16).
  EXPECT_EQ(two_nodes["deepspeed"]["cpu"], 24 * kN);

  RunResult human = run(args + " --world-size 4");
  EXPECT_EQ(human.exit_code, 0);
  EXPECT_NE(human.err.find("per rank of 4"), std::string::npos) << human.err;
  // A world the config's batch sizes cannot split is the config's error.
  const std::string fixed = write("fixed.json", R"({
    "train_batch_size": 8, "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 4,
    "zero_optimization": {"stage": 1}})");
  RunResult bad = run("--model gpt2 --deepspeed_config '" + fixed + "' --world-size 2");
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.err.find("world size 2"), std::string::npos) << bad.err;
  RunResult uneven = run(args + " --world-size 4 --nodes 3");
  EXPECT_EQ(uneven.exit_code, 2);
  EXPECT_NE(uneven.err.find("--nodes 3"), std::string::npos) << uneven.err;
  EXPECT_EQ(run(args + " --world-size 0").exit_code, 2);
}

TEST_F(PlanCommandTest, Stage3NvmeOffloadOfEverything) {
  const std::string cfg = write("offload_nvme.json", R"({
    "train_batch_size": 1, "fp16": {"enabled": true},
    "optimizer": {"type": "Adam", "params": {"lr": 1e-4}},
    "zero_optimization": {"stage": 3,
      "offload_optimizer": {"device": "nvme", "nvme_path": "/tmp"},
      "offload_param": {"device": "nvme", "nvme_path": "/tmp"}}
  })");
  json j = run_json("--model gpt2 --deepspeed_config '" + cfg +
                    "' --gpu-mem 32GiB --host-mem 64GiB --nvme 1TiB");
  const json& t = j["tiers"];
  // GPU: the engine's stage-3 device set: stage3_max_live_parameters (1e9)
  // params with their grads, at most every layer: all of gpt2's here.
  expect_paged(t["gpu"]["roles"]["param16"], 2 * kN, 256);
  EXPECT_EQ(t["gpu"]["roles"]["grad16"], t["gpu"]["roles"]["param16"]);
  EXPECT_EQ(t["gpu"]["roles"]["master32"], 0);
  expect_paged(t["nvme"]["roles"]["param16"], 2 * kN);
  expect_paged(t["nvme"]["roles"]["master32"], 4 * kN);
  expect_paged(t["nvme"]["roles"]["exp_avg"], 4 * kN);
  expect_paged(t["nvme"]["roles"]["exp_avg_sq"], 4 * kN);
  EXPECT_EQ(t["host"]["roles"]["param16"], 0);
  expect_paged(t["host"]["roles"]["grad16"], 2 * kN);
  expect_paged(t["host"]["roles"]["grad32"], 4 * kN);
  // The host caches two layers of NVMe-homed tensors (more than the 1 GiB
  // prefetch window): layer 0 is wte and wpe, param16 + three fp32 states each.
  auto pages = [](int64_t bytes) { return (bytes + 4095) / 4096 * 4096; };
  const int64_t wte = kLargest, wpe = 1024 * 768;
  const int64_t layer0 = pages(2 * wte) + 3 * pages(4 * wte) + pages(2 * wpe) + 3 * pages(4 * wpe);
  EXPECT_EQ(t["host"]["roles"]["staging"], 2 * layer0);
  EXPECT_EQ(t["nvme"]["capacity"], int64_t{1} << 40);
  // ZeRO-3, everything offloaded: GPU 4 * largest layer, CPU 18N * 1.5.
  EXPECT_EQ(j["deepspeed"]["estimator"], "estimate_zero3_model_states_mem_needs_all_live");
  EXPECT_EQ(j["deepspeed"]["gpu"], 4 * kLargest);
  EXPECT_EQ(j["deepspeed"]["cpu"], 27 * kN);
  EXPECT_EQ(j["fits"], true);

  // Too little host memory with a prefetch window beyond two layers: the
  // advice points at the window.
  const std::string wide = write("offload_nvme_wide.json", R"({
    "train_batch_size": 1, "fp16": {"enabled": true},
    "optimizer": {"type": "Adam", "params": {"lr": 1e-4}},
    "zero_optimization": {"stage": 3,
      "offload_optimizer": {"device": "nvme", "nvme_path": "/tmp"},
      "offload_param": {"device": "nvme", "nvme_path": "/tmp"}},
    "strata": {"prefetch_window_bytes": 4294967296}
  })");
  json small = run_json("--model gpt2 --deepspeed_config '" + wide +
                        "' --gpu-mem 32GiB --host-mem 1GiB --nvme 1TiB");
  EXPECT_EQ(small["tiers"]["host"]["fits"], false);
  EXPECT_EQ(small["tiers"]["host"]["roles"]["staging"], small["tiers"]["nvme"]["total"]);
  const std::string advice = small["advice"].dump();
  EXPECT_NE(advice.find("strata.prefetch_window_bytes"), std::string::npos) << advice;
}

// --device cpu predicts strata train's peak RSS from the engine's own
// placement: the host arena is every tensor rounded to 4 KiB pages.
TEST_F(PlanCommandTest, DeviceCpuPredictsTheTrainRunsPeakRss) {
  const std::string cfg = write("tiny.json", R"({
    "train_micro_batch_size_per_gpu": 2, "bf16": {"enabled": true},
    "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}},
    "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}
  })");
  const std::string data = write("text.txt", std::string(1000, 'a'));
  json j = run_json("--model gpt2-tiny --deepspeed_config '" + cfg +
                    "' --device cpu --seq-len 64 --data '" + data + "'");
  const json& e = j["train_rss_estimate"];
  ASSERT_TRUE(e.is_object()) << j.dump();
  int64_t parts = 0;
  for (const char* k :
       {"host_arena", "rollback", "simulated_device", "model_buffers", "data", "baseline"}) {
    ASSERT_TRUE(e[k].is_number_integer()) << k;
    parts += e[k].get<int64_t>();
  }
  EXPECT_EQ(e["total"], parts);
  EXPECT_EQ(e["data"], 1000);   // the 1000-byte corpus, mapped: a byte a token
  EXPECT_GT(e["rollback"], 0);  // overlap mode keeps rollback copies in every precision
  EXPECT_GT(e["host_arena"], 20 * 2 * 128 * 128);  // at least 20 B/param of the blocks
  EXPECT_GT(e["model_buffers"], 0);
  // Without --device cpu there is nothing to predict.
  EXPECT_TRUE(run_json("--model gpt2-tiny --deepspeed_config '" + cfg + "'")["train_rss_estimate"]
                  .is_null());
  // A --data that is not there is named.
  RunResult bad = run("--model gpt2-tiny --deepspeed_config '" + cfg + "' --device cpu --data '" +
                      dir_ + "/missing.txt'");
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.err.find("missing.txt"), std::string::npos) << bad.err;
}

// The predicted step time per resource follows from the bytes and flops of
// the placement and the rates given.
TEST_F(PlanCommandTest, StepTimePerResourceFromTheRatesGiven) {
  const std::string cfg = write("offload_nvme.json", R"({
    "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 4,
    "bf16": {"enabled": true},
    "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}},
    "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "nvme",
                                                            "nvme_path": "/tmp"}}
  })");
  json j = run_json("--model gpt2 --deepspeed_config '" + cfg +
                    "' --gpu-tflops 100 --pcie-bw 20 --nvme-bw 4 --cpu-gbps 50");
  const json& t = j["step_seconds"];
  ASSERT_TRUE(t.is_object()) << j.dump();
  const double n = static_cast<double>(kN), tokens = 2 * 4 * 1024.0;
  EXPECT_NEAR(t["gpu_compute"].get<double>(), tokens * (6 * n + 12.0 * 12 * 768 * 1024) / 100e12,
              1e-9);
  EXPECT_NEAR(t["pcie_h2d"].get<double>(), n * 2 / 20e9, 1e-9);
  EXPECT_NEAR(t["pcie_d2h"].get<double>(), 4 * n * 2 / 20e9, 1e-9);
  EXPECT_NEAR(t["cpu_optimizer"].get<double>(), n * (28 + 4 * (2 + 8)) / 50e9, 1e-9);
  // Master and two states read and written, each tensor in whole 4 KiB pages.
  EXPECT_NEAR(t["nvme"].get<double>(), 24 * n / 4e9, 148 * 4096 * 6 / 4e9);
  EXPECT_EQ(t["cpu_rate_source"], "--cpu-gbps");
  EXPECT_NEAR(t["slowest"].get<double>(), t["nvme"].get<double>(), 1e-12);
}

TEST_F(PlanCommandTest, HumanOutputGoesToStderr) {
  RunResult r = run("--model gpt2-tiny --deepspeed_config '" + kFixture + "' --gpu-mem 8GiB");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
  EXPECT_NE(r.err.find("gpt2-tiny"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("estimate_zero2"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("verdict: fits"), std::string::npos) << r.err;
}

TEST_F(PlanCommandTest, UnknownModelSuggestsTheClosest) {
  RunResult r = run("--model gpt2-larg --deepspeed_config '" + kFixture + "' --json");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(r.out.empty()) << r.out;
  EXPECT_EQ(r.err.rfind("strata: error: ", 0), 0u) << r.err;
  EXPECT_NE(r.err.find("did you mean \"gpt2-large\""), std::string::npos) << r.err;
}

TEST_F(PlanCommandTest, MissingConfigNamesThePath) {
  const std::string missing = dir_ + "/no_such_config.json";
  RunResult r = run("--model gpt2 --deepspeed_config '" + missing + "'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err.rfind("strata: error: ", 0), 0u) << r.err;
  EXPECT_NE(r.err.find(missing), std::string::npos) << r.err;
}

TEST_F(PlanCommandTest, InvalidConfigNamesTheKey) {
  const std::string cfg = write("bad.json", R"({"train_batch_size": 8,
    "zero_optimization": {"stage": 7}})");
  RunResult r = run("--model gpt2 --deepspeed_config '" + cfg + "'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("zero_optimization.stage"), std::string::npos) << r.err;
}

TEST_F(PlanCommandTest, BadSizesAndMissingFlagsAreUsageErrors) {
  for (const char* bad : {"32Q", "lots", "0", "1.2.3G", "-5G"}) {
    RunResult r =
        run("--model gpt2 --deepspeed_config '" + kFixture + "' --gpu-mem '" + bad + "' --json");
    EXPECT_EQ(r.exit_code, 2) << bad << ": " << r.err;
    EXPECT_TRUE(r.out.empty()) << r.out;
    EXPECT_NE(r.err.find("--gpu-mem"), std::string::npos) << r.err;
  }
  RunResult r = run("--deepspeed_config '" + kFixture + "'");
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("--model"), std::string::npos) << r.err;
}

// Every number flag goes through core/parse.h: nan, inf, negative, junk and
// values beyond any machine are usage errors naming the flag, never a plan.
TEST_F(PlanCommandTest, NonsenseFlagValuesAreRefused) {
  const std::string base = "--model gpt2 --deepspeed_config '" + kFixture + "' ";
  struct Case {
    const char* flag;
    const char* value;
  };
  for (const Case& c : std::vector<Case>{{"--host-mem", "1000000TiB"},
                                         {"--host-mem", "nan"},
                                         {"--host-mem", "inf"},
                                         {"--host-mem", "1e99"},
                                         {"--gpu-mem", "2000TiB"},
                                         {"--nvme", "-1"},
                                         {"--gpu-tflops", "nan"},
                                         {"--gpu-tflops", "inf"},
                                         {"--gpu-tflops", "1e99"},
                                         {"--gpu-tflops", "0"},
                                         {"--pcie-bw", "-3"},
                                         {"--nvme-bw", "1e30"},
                                         {"--cpu-gbps", "nan"},
                                         {"--seq-len", "1.5"},
                                         {"--seq-len", "4096"},  // gpt2 has 1024 positions
                                         {"--vocab-size", "99999999999"}}) {
    RunResult r = run(base + "--json " + c.flag + " '" + c.value + "'");
    EXPECT_EQ(r.exit_code, 2) << c.flag << " " << c.value << ": " << r.err;
    EXPECT_TRUE(r.out.empty()) << c.flag << " " << c.value << ": " << r.out;
    EXPECT_EQ(r.err.rfind("strata: error: ", 0), 0u) << r.err;
    EXPECT_NE(r.err.find(c.flag), std::string::npos) << r.err;
    EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << "one line: " << r.err;
  }
  // The largest a flag may say is still a plan.
  json j = run_json(base + "--host-mem 1024TiB --gpu-mem 1024TiB --nvme 65536TiB --gpu-tflops 1e6");
  EXPECT_EQ(j["tiers"]["host"]["capacity"], int64_t{1} << 50);
}

TEST_F(PlanCommandTest, SizeUnits) {
  json j = run_json("--model gpt2-tiny --deepspeed_config '" + kFixture +
                    "' --gpu-mem 1.5GiB --host-mem 4096");
  EXPECT_EQ(j["tiers"]["gpu"]["capacity"], int64_t{3} << 29);
  EXPECT_EQ(j["tiers"]["host"]["capacity"], 4096);
}

}  // namespace
