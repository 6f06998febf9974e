// Data-parallel `strata train`, run as a user would on this machine (Gloo
// over loopback, SimDevice): N ranks at micro batch m give the per-step
// losses of 1 rank at micro batch N*m (same global batch, within 1e-5
// relative) for ZeRO stage 1 and 2 with the optimizer offloaded to the CPU
// and to NVMe (fp32; fp16 too; 2 and 3 ranks), started by --nproc and by
// torchrun's variables set by hand; the batch rule is reported and checked
// before any rank starts; a rank killed mid-run fails the run with an error
// naming it, from the launcher and, without one, from the surviving rank; a
// 2-rank checkpoint resumes on 1 rank and `ckpt export` merges its shards.
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <sys/wait.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/cli_test_util.h"

namespace {

using nlohmann::json;
using strata::testing::CliRun;
using strata::testing::json_lines;

// Short runs: gpt2-tiny, 32-token sequences, 4 steps.
constexpr char kCommon[] =
    "train --model gpt2-tiny --seq-len 32 --steps 4 --eval-every 100 --eval-batches 1";

// A free TCP port on loopback (bound, read, closed).
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    if (fd >= 0) ::close(fd);
    return 0;
  }
  ::close(fd);
  return ntohs(a.sin_port);
}

// Runs `command` with sh; its exit status (-1 when it did not exit).
int shell(const std::string& command) {
  const int status = std::system(command.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string quoted(const std::string& s) { return "'" + s + "'"; }

class TrainDpTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Text with structure to learn: words from a small list, 3000 lines.
    const char* words[] = {"the", "quick", "brown",  "fox",    "jumps", "over",   "a",  "lazy",
                           "dog", "while", "strata", "trains", "tiny",  "models", "on", "text"};
    std::string text;
    uint64_t x = 88172645463325252ull;
    for (int line = 0; line < 3000; ++line) {
      for (int w = 0; w < 12; ++w) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        text += std::string(w ? " " : "") + words[x % 16];
      }
      text += "\n";
    }
    data_ = scratch_.write("data.txt", text);
  }

  // A ds_config at this micro batch (accumulation 2), stage and offload.
  std::string config(int micro, int stage, const std::string& offload,
                     const std::string& extra = "") {
    const std::string nvme = scratch_.path() + "/nvme-" + std::to_string(configs_++);
    std::filesystem::create_directories(nvme);
    return scratch_.write("ds" + std::to_string(configs_) + ".json",
                          "{\"train_micro_batch_size_per_gpu\": " + std::to_string(micro) +
                              ", \"gradient_accumulation_steps\": 2, \"gradient_clipping\": 1.0, "
                              "\"optimizer\": {\"type\": \"AdamW\", \"params\": {\"lr\": 3e-3, "
                              "\"weight_decay\": 0.01}}, \"zero_optimization\": {\"stage\": " +
                              std::to_string(stage) + ", \"offload_optimizer\": {\"device\": \"" +
                              offload + "\", \"nvme_path\": \"" + nvme + "\"}}" + extra + "}");
  }

  // Runs `strata ARGS --log-json F` and returns the per-step losses.
  std::vector<double> losses(const std::string& args, CliRun* run = nullptr) {
    const std::string log = scratch_.path() + "/log" + std::to_string(logs_++) + ".jsonl";
    CliRun r = scratch_.run_strata(args + " --data '" + data_ + "' --log-json '" + log + "'");
    EXPECT_EQ(r.exit_code, 0) << args << "\n" << r.err;
    std::vector<double> out;
    for (const json& line : json_lines(log)) out.push_back(line.value("loss", NAN));
    if (run != nullptr) *run = r;
    return out;
  }

  static void expect_same_losses(const std::vector<double>& one, const std::vector<double>& two) {
    ASSERT_EQ(one.size(), 4u);
    ASSERT_EQ(two.size(), one.size());
    for (size_t i = 0; i < one.size(); ++i) {
      EXPECT_NEAR(two[i], one[i], 1e-5 * std::abs(one[i])) << "step " << i + 1;
    }
    EXPECT_LT(one.back(), one.front());  // it learns
  }

  strata::testing::ScratchDir scratch_{"strata_train_dp_test_"};
  std::string data_;
  int configs_ = 0, logs_ = 0;
};

// The issue's equivalence: 2 ranks at micro batch 2 == 1 rank at micro
// batch 4, accumulation 2 for both (global batch 8), stage 1 and 2, the
// optimizer on the CPU and on NVMe.
TEST_F(TrainDpTest, TwoRanksLossesEqualOneRanksWithTheSameGlobalBatch) {
  for (int stage : {1, 2}) {
    for (const char* offload : {"cpu", "nvme"}) {
      SCOPED_TRACE(::testing::Message() << "stage " << stage << " offload " << offload);
      const auto start = std::chrono::steady_clock::now();
      const std::vector<double> one =
          losses(std::string(kCommon) + " --deepspeed_config '" + config(4, stage, offload) + "'");
      CliRun two_run;
      const std::vector<double> two = losses(std::string(kCommon) + " --deepspeed_config '" +
                                                 config(2, stage, offload) + "' --nproc 2",
                                             &two_run);
      expect_same_losses(one, two);
      // Rank 0 alone prints: one header, stating the batch rule.
      EXPECT_NE(two_run.err.find("micro batch 2 x accumulation 2 x world 2 = batch 8"),
                std::string::npos)
          << two_run.err;
      size_t headers = 0;
      for (size_t at = 0;
           (at = two_run.err.find("strata train: gpt2-tiny", at)) != std::string::npos; ++at) {
        ++headers;
      }
      EXPECT_EQ(headers, 1u) << two_run.err;
      EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(30));
    }
  }
}

// Three ranks at micro batch 1 == one rank at micro batch 3.
TEST_F(TrainDpTest, ThreeRanksEqualOneRank) {
  const std::vector<double> one =
      losses(std::string(kCommon) + " --deepspeed_config '" + config(3, 2, "cpu") + "'");
  const std::vector<double> three =
      losses(std::string(kCommon) + " --deepspeed_config '" + config(1, 2, "cpu") + "' --nproc 3");
  expect_same_losses(one, three);
}

// fp16 with dynamic loss scaling: the overflow decision is the ranks' together.
TEST_F(TrainDpTest, Fp16TwoRanksEqualOneRank) {
  const std::string fp16 = R"(, "fp16": {"enabled": true, "initial_scale_power": 12})";
  const std::vector<double> one =
      losses(std::string(kCommon) + " --deepspeed_config '" + config(4, 2, "cpu", fp16) + "'");
  const std::vector<double> two = losses(std::string(kCommon) + " --deepspeed_config '" +
                                         config(2, 2, "cpu", fp16) + "' --nproc 2");
  expect_same_losses(one, two);
}

// torchrun (or Slurm, mpirun) sets RANK, WORLD_SIZE, ...: two processes
// started with those variables by hand form the job without --nproc.
TEST_F(TrainDpTest, TorchrunVariablesJoinTheJob) {
  const std::vector<double> one =
      losses(std::string(kCommon) + " --deepspeed_config '" + config(4, 2, "cpu") + "'");
  const int port = free_port();
  ASSERT_GT(port, 0);
  const std::string cfg = config(2, 2, "cpu");
  const std::string log = scratch_.path() + "/torchrun.jsonl";
  auto env = [&](int rank) {
    return "RANK=" + std::to_string(rank) + " LOCAL_RANK=" + std::to_string(rank) +
           " WORLD_SIZE=2 LOCAL_WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=" +
           std::to_string(port) + " ";
  };
  const std::string args = std::string(kCommon) + " --deepspeed_config '" + cfg + "' --data '" +
                           data_ + "' --log-json '" + log + "' --comm-timeout 60";
  // Rank 1 in the background, rank 0 in the foreground, then rank 1's status.
  const std::string strata = quoted(STRATA_STRATA_BINARY);
  const std::string err0 = scratch_.path() + "/rank0.err", err1 = scratch_.path() + "/rank1.err";
  const int code = shell(env(1) + strata + " " + args + " 2>" + quoted(err1) + " & R1=$!; " +
                         env(0) + strata + " " + args + " 2>" + quoted(err0) +
                         "; s=$?; wait $R1; r1=$?; [ $s -eq 0 ] && [ $r1 -eq 0 ]");
  EXPECT_EQ(code, 0) << "rank 0: " << strata::testing::slurp(err0)
                     << "\nrank 1: " << strata::testing::slurp(err1);
  // Rank 1 prints nothing of its own.
  EXPECT_EQ(strata::testing::slurp(err1), "");
  std::vector<double> two;
  for (const json& line : json_lines(log)) two.push_back(line.value("loss", NAN));
  expect_same_losses(one, two);

  // A rank does not launch ranks.
  CliRun nested = scratch_.run_strata(args + " --nproc 2", env(0));
  EXPECT_EQ(nested.exit_code, 2) << nested.err;
  EXPECT_NE(nested.err.find("drop --nproc"), std::string::npos) << nested.err;
}

// Under torchrun's shared store (TORCHELASTIC_USE_AGENT_STORE=True) the
// port strata's rank 0 should serve on is taken: the error says which
// variable frees it.
TEST_F(TrainDpTest, TorchrunsOwnStoreOnThePortIsExplained) {
  // A listening socket stands for torchrun's agent store.
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(::listen(fd, 4), 0);
  ASSERT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const std::string env =
      "TORCHELASTIC_USE_AGENT_STORE=True RANK=0 LOCAL_RANK=0 WORLD_SIZE=2 "
      "LOCAL_WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=" +
      std::to_string(ntohs(addr.sin_port)) + " ";
  CliRun r =
      scratch_.run_strata(std::string(kCommon) + " --deepspeed_config '" + config(2, 2, "cpu") +
                              "' --data '" + data_ + "' --comm-timeout 5",
                          env);
  ::close(fd);
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("rank 0: joining the other ranks"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1"), std::string::npos) << r.err;
}

// train_batch_size = micro x accumulation x world: a config whose three
// sizes do not fit 2 ranks is refused once, before any rank starts.
TEST_F(TrainDpTest, BatchRuleIsCheckedBeforeLaunching) {
  const std::string cfg = scratch_.write("fixed.json", R"({
    "train_batch_size": 8, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2,
    "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}},
    "zero_optimization": {"stage": 1, "offload_optimizer": {"device": "cpu"}}})");
  CliRun r = scratch_.run_strata(std::string(kCommon) + " --deepspeed_config '" + cfg +
                                 "' --data '" + data_ + "' --nproc 2");
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("world size 2"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("starting 2 ranks"), std::string::npos) << r.err;
  EXPECT_EQ(scratch_
                .run_strata(std::string(kCommon) + " --deepspeed_config '" + cfg + "' --data '" +
                            data_ + "' --nproc 0")
                .exit_code,
            2);
}

// Without a launcher (ranks started by torchrun, Slurm or by hand), a rank
// killed mid-run makes the surviving rank fail by itself, within
// --comm-timeout, with an error naming the dead rank.
TEST_F(TrainDpTest, SurvivorOfAKilledRankFailsNamingIt) {
  const int port = free_port();
  ASSERT_GT(port, 0);
  const std::string log = scratch_.path() + "/survivor.jsonl";
  const std::string args =
      "train --model gpt2-tiny --seq-len 32 --steps 100000 --eval-every "
      "100000 --eval-batches 1 --comm-timeout 20 --deepspeed_config '" +
      config(2, 2, "cpu") + "' --data '" + data_ + "' --log-json '" + log + "'";
  auto env = [&](int rank) {
    return "RANK=" + std::to_string(rank) + " LOCAL_RANK=" + std::to_string(rank) +
           " WORLD_SIZE=2 LOCAL_WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=" +
           std::to_string(port) + " ";
  };
  const std::string strata = quoted(STRATA_STRATA_BINARY);
  const std::string err0 = scratch_.path() + "/survivor.err";
  const auto start = std::chrono::steady_clock::now();
  // Rank 0 in the background; rank 1 killed once rank 0 has logged a step.
  const int code =
      shell(env(0) + strata + " " + args + " 2>" + quoted(err0) + " & R0=$!; " + env(1) + strata +
            " " + args + " 2>" + quoted(scratch_.path() + "/killed.err") + " & R1=$!; " +
            "for i in $(seq 600); do [ -s '" + log +
            "' ] && break; sleep 0.05; done; kill -9 $R1; wait $R0");
  const std::string err = strata::testing::slurp(err0);
  EXPECT_EQ(code, 1) << err;
  EXPECT_NE(err.find("strata: error: rank 0: "), std::string::npos) << err;
  EXPECT_NE(err.find("rank 1"), std::string::npos) << err;
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(45));
}

// A checkpoint saved by 2 ranks (one shard each) resumes on 1 rank, which
// continues the one-rank curve; `strata ckpt export` merges the shards into
// the file the one rank's re-save exports, bit for bit; a missing shard is
// an error naming it.
TEST_F(TrainDpTest, TwoRankCheckpointResumesOnOneAndExportsMerged) {
  const std::string one_cfg = config(4, 2, "cpu"), two_cfg = config(2, 2, "cpu");
  const std::string run = "train --model gpt2-tiny --seq-len 32 --eval-every 100 --eval-batches 1";
  const std::vector<double> straight =
      losses(run + " --steps 6 --deepspeed_config '" + one_cfg + "'");
  ASSERT_EQ(straight.size(), 6u);
  const std::string two = scratch_.path() + "/two", one = scratch_.path() + "/one";
  const std::vector<double> first = losses(run + " --steps 3 --deepspeed_config '" + two_cfg +
                                           "' --nproc 2 --save-dir '" + two + "'");
  ASSERT_EQ(first.size(), 3u);
  for (const char* shard : {"/zero.json", "/rank0/meta.json", "/rank1/meta.json"}) {
    EXPECT_TRUE(std::filesystem::exists(two + shard)) << shard;
  }
  const std::vector<double> rest = losses(run + " --steps 6 --deepspeed_config '" + one_cfg +
                                          "' --resume '" + two + "' --save-dir '" + one + "'");
  ASSERT_EQ(rest.size(), 3u);
  for (size_t i = 0; i < 6; ++i) {
    const double got = i < 3 ? first[i] : rest[i - 3];
    EXPECT_NEAR(got, straight[i], 1e-5 * std::abs(straight[i])) << "step " << i + 1;
  }

  // The 2-rank checkpoint re-saved by 1 rank at the same step: same weights.
  const std::string resaved = scratch_.path() + "/resaved";
  CliRun r = scratch_.run_strata(run + " --steps 3 --deepspeed_config '" + one_cfg + "' --data '" +
                                 data_ + "' --resume '" + two + "' --save-dir '" + resaved + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string merged = scratch_.path() + "/merged.safetensors",
                    single = scratch_.path() + "/single.safetensors";
  r = scratch_.run_strata("ckpt export '" + two + "' --to '" + merged + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = scratch_.run_strata("ckpt export '" + resaved + "' --to '" + single + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string a = strata::testing::slurp(merged), b = strata::testing::slurp(single);
  EXPECT_GT(a.size(), 858880u * 4);  // gpt2-tiny's fp32 weights
  EXPECT_TRUE(a == b) << "the merged export differs from the one-rank re-save's";
  r = scratch_.run_strata("ckpt info '" + two + "' --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json info = json::parse(r.out, nullptr, false);
  EXPECT_EQ(info.value("ranks", 0), 2);
  EXPECT_EQ(info.value("params", 0), 858880);

  // strata sample reads it as it reads a one-rank checkpoint.
  r = scratch_.run_strata("sample --ckpt '" + two + "' --prompt 'the ' --tokens 8");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("gpt2-tiny"), std::string::npos) << r.err;

  std::filesystem::remove_all(two + "/rank1");
  r = scratch_.run_strata("ckpt export '" + two + "' --to '" + merged + "'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("rank1"), std::string::npos) << r.err;
}

// A rank killed mid-run (SIGKILL, after rank 0 logged a step): the launcher
// stops the other rank and exits 1 with a line naming the dead one.
TEST_F(TrainDpTest, KilledRankFailsTheRunNamingIt) {
  const std::string log = scratch_.path() + "/kill.jsonl";
  const std::string args =
      "train --model gpt2-tiny --seq-len 32 --steps 100000 --eval-every "
      "100000 --eval-batches 1 --deepspeed_config '" +
      config(2, 2, "cpu") + "' --data '" + data_ + "' --log-json '" + log + "' --nproc 2";
  // The launcher in the background; once a step is logged, rank 1 (the
  // child whose environment says RANK=1) gets SIGKILL.
  const std::string killer =
      "for i in $(seq 600); do [ -s '" + log +
      "' ] && break; sleep 0.05; done; "
      "for c in $(pgrep -P $L); do tr '\\0' '\\n' < /proc/$c/environ | grep -qx RANK=1 && "
      "kill -9 $c; done; wait $L";
  const auto start = std::chrono::steady_clock::now();
  const std::string err_file = scratch_.path() + "/kill.err";
  const int code = shell(quoted(STRATA_STRATA_BINARY) + " " + args + " 2>" + quoted(err_file) +
                         " & L=$!; " + killer);
  const std::string err = strata::testing::slurp(err_file);
  EXPECT_EQ(code, 1) << err;
  // The launcher's own last line names the rank and how it died.
  EXPECT_NE(err.find("strata: error: rank 1 (pid"), std::string::npos) << err;
  EXPECT_NE(err.find("killed by signal 9"), std::string::npos) << err;
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(60));
  EXPECT_FALSE(json_lines(log).empty());
}

}  // namespace
