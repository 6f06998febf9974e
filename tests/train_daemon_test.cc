// `strata train --daemon SOCKET --session NAME`, run as a user would, with
// a stratad the test starts on a temporary socket: the per-step losses (and
// loss scales, norms, skips, validation losses) are bit-identical to the
// same command in-process, for fp16 in overlap mode, fp16 with overflowing
// steps and fp32 in sync mode with gradient accumulation; a client killed
// with SIGKILL mid-run is continued by the same command from the daemon's
// last completed step, bit for bit as an uninterrupted run; checkpoints
// saved through stratad resume in-process and the other way round; a missing
// daemon, or one killed mid-run, is an error naming its socket; a node's
// ranks share the daemon, a slice of the model each; flags it cannot serve
// are refused with what to do (exit 2).
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/cli_test_util.h"
#include "tests/stratad_test_util.h"

namespace {

using nlohmann::json;
using strata::testing::json_lines;

// fp16, dynamic loss scaling starting low (no skipped step), overlap mode.
constexpr char kFp16[] = R"({
  "train_micro_batch_size_per_gpu": 2,
  "gradient_accumulation_steps": 1,
  "gradient_clipping": 1.0,
  "fp16": {"enabled": true, "loss_scale": 0, "initial_scale_power": 8},
  "optimizer": {"type": "AdamW", "params": {"lr": 3e-3, "weight_decay": 0.01}},
  "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}
})";
// fp16 starting at 2^24: the first steps overflow on the device and are
// skipped (the engine reports the overflow to stratad), the scale halves.
constexpr char kFp16Overflow[] = R"({
  "train_micro_batch_size_per_gpu": 2,
  "gradient_accumulation_steps": 1,
  "fp16": {"enabled": true, "loss_scale": 0, "initial_scale_power": 24, "hysteresis": 1},
  "optimizer": {"type": "AdamW", "params": {"lr": 3e-3, "weight_decay": 0.01}},
  "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}
})";
// fp32, sync mode, two micro-batches per step (wait_grads between them).
constexpr char kFp32SyncGas2[] = R"({
  "train_micro_batch_size_per_gpu": 2,
  "gradient_accumulation_steps": 2,
  "gradient_clipping": 1.0,
  "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "weight_decay": 0.01}},
  "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}},
  "strata": {"overlap": "sync"}
})";

class TrainDaemonTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string text;
    for (int i = 0; i < 400; ++i) {
      text += "the quick brown fox jumps over the lazy dog " + std::to_string(i % 10) + "\n";
    }
    scratch_.write("corpus/a.txt", text);
  }

  std::string path(const std::string& name) const { return scratch_.path() + "/" + name; }

  // The command line (less the binary) of a small gpt2-tiny run.
  std::vector<std::string> argv(const std::string& config, int steps, const std::string& log,
                                const std::vector<std::string>& extra = {}) const {
    std::vector<std::string> a = {"train",
                                  "--model",
                                  "gpt2-tiny",
                                  "--data",
                                  path("corpus"),
                                  "--deepspeed_config",
                                  config,
                                  "--seq-len",
                                  "32",
                                  "--steps",
                                  std::to_string(steps),
                                  "--eval-every",
                                  "3",
                                  "--eval-batches",
                                  "2",
                                  "--log-json",
                                  log};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  }
  static std::string shell(const std::vector<std::string>& args) {
    std::string out;
    for (const auto& a : args) out += "'" + a + "' ";
    return out;
  }
  strata::testing::CliRun run(const std::vector<std::string>& args) const {
    return scratch_.run_strata(shell(args));
  }
  // The binary started in the background, its stderr in `err`.
  pid_t start(const std::vector<std::string>& args, const std::string& err) const {
    const pid_t pid = ::fork();
    if (pid == 0) {
      const int fd = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      ::dup2(fd, 2);
      std::vector<std::string> all = {STRATA_STRATA_BINARY};
      all.insert(all.end(), args.begin(), args.end());
      std::vector<char*> cargv;
      for (auto& a : all) cargv.push_back(a.data());
      cargv.push_back(nullptr);
      ::execv(cargv[0], cargv.data());
      ::_exit(127);
    }
    return pid;
  }

  strata::testing::ScratchDir scratch_{"strata_train_daemon_"};
  strata::testing::StratadProcess stratad_{scratch_.path()};
};

// The fields of a --log-json line that must agree bit for bit.
void expect_same_step(const json& in_process, const json& daemon) {
  SCOPED_TRACE(testing::Message() << "step " << in_process.value("step", -1));
  EXPECT_EQ(daemon["step"], in_process["step"]);
  for (const char* key : {"loss", "loss_scale", "skipped", "grad_norm", "clip_coef", "lr"}) {
    EXPECT_EQ(daemon[key], in_process[key]) << key;
  }
  EXPECT_EQ(daemon.value("val_loss", json()), in_process.value("val_loss", json()));
}

TEST_F(TrainDaemonTest, LossesAreBitIdenticalToInProcess) {
  const std::map<std::string, const char*> configs = {
      {"fp16", kFp16}, {"fp16_overflow", kFp16Overflow}, {"fp32_sync_gas2", kFp32SyncGas2}};
  for (const auto& [name, text] : configs) {
    SCOPED_TRACE(name);
    const std::string config = scratch_.write(name + ".json", text);
    const auto in = run(argv(config, 6, path(name + ".in.jsonl")));
    ASSERT_EQ(in.exit_code, 0) << in.err;
    const auto d = run(argv(config, 6, path(name + ".d.jsonl"),
                            {"--daemon", stratad_.socket(), "--session", name}));
    ASSERT_EQ(d.exit_code, 0) << d.err << "\nstratad:\n" << stratad_.log();
    EXPECT_NE(d.err.find("optimizer in stratad at " + stratad_.socket()), std::string::npos)
        << d.err;
    const auto a = json_lines(path(name + ".in.jsonl"));
    const auto b = json_lines(path(name + ".d.jsonl"));
    ASSERT_EQ(a.size(), 6u);
    ASSERT_EQ(b.size(), a.size());
    int skipped = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      expect_same_step(a[i], b[i]);
      skipped += a[i].value("skipped", false) ? 1 : 0;
    }
    if (name == "fp16_overflow") {
      EXPECT_GE(skipped, 1) << "the config should overflow";
    }
  }
}

TEST_F(TrainDaemonTest, KilledClientContinuesFromTheLastCompletedStep) {
  const std::string config = scratch_.write("fp16.json", kFp16);
  constexpr int kSteps = 24;
  const auto ref = run(argv(config, kSteps, path("ref.jsonl")));
  ASSERT_EQ(ref.exit_code, 0) << ref.err;
  const auto want = json_lines(path("ref.jsonl"));
  ASSERT_EQ(want.size(), size_t{kSteps});

  // A long run, killed once it has logged a few steps (mid-step, likely).
  const std::vector<std::string> daemon = {"--daemon", stratad_.socket(), "--session", "killed"};
  const pid_t pid = start(argv(config, 100000, path("first.jsonl"), daemon), path("first.err"));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (json_lines(path("first.jsonl")).size() < 3 &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
  const auto first = json_lines(path("first.jsonl"));
  ASSERT_GE(first.size(), 3u) << strata::testing::slurp(path("first.err"));
  ASSERT_LT(first.size(), size_t{kSteps} - 2) << "the client ran too far before the kill";

  // The same command again (to kSteps in all) continues the session.
  const auto second = run(argv(config, kSteps, path("second.jsonl"), daemon));
  ASSERT_EQ(second.exit_code, 0) << second.err << "\nstratad:\n" << stratad_.log();
  EXPECT_NE(second.err.find("continued after its step"), std::string::npos) << second.err;
  const auto rest = json_lines(path("second.jsonl"));
  ASSERT_FALSE(rest.empty());
  // The daemon kept every step the client logged (a step logged is
  // finished) and perhaps the one in flight if its finish_step had begun.
  const int64_t resumed_at = rest.front().value("step", int64_t{-1});
  EXPECT_GE(resumed_at, static_cast<int64_t>(first.size()) + 1);
  EXPECT_LE(resumed_at, static_cast<int64_t>(first.size()) + 2);
  EXPECT_EQ(rest.back().value("step", int64_t{-1}), kSteps);
  for (const json& line : first) expect_same_step(want[line["step"].get<int>() - 1], line);
  for (const json& line : rest) {
    const json& w = want[line["step"].get<int>() - 1];
    SCOPED_TRACE("after reattach");
    EXPECT_EQ(line["loss"], w["loss"]);
    EXPECT_EQ(line["loss_scale"], w["loss_scale"]);
    EXPECT_EQ(line["grad_norm"], w["grad_norm"]);
  }
}

// Checkpoints cross the boundary both ways: one stratad saved (a relative
// --save-dir, written by the daemon) resumes in-process, one saved
// in-process resumes through stratad (a new session loads it), and both
// continue bit for bit as an uninterrupted run.
TEST_F(TrainDaemonTest, CheckpointsResumeAcrossTheDaemonBoundary) {
  const std::string config = scratch_.write("fp16.json", kFp16);
  const auto ref = run(argv(config, 6, path("ref.jsonl")));
  ASSERT_EQ(ref.exit_code, 0) << ref.err;
  const auto want = json_lines(path("ref.jsonl"));
  ASSERT_EQ(want.size(), 6u);
  auto check_rest = [&](const std::string& log) {
    const auto got = json_lines(log);
    ASSERT_EQ(got.size(), 3u);
    for (const json& line : got) {
      ASSERT_GE(line.value("step", 0), 4);
      expect_same_step(want[line["step"].get<int>() - 1], line);
    }
  };
  // stratad saves (the path relative to the client's directory), in-process resumes.
  const std::vector<std::string> daemon = {"--daemon", stratad_.socket(), "--session", "saver"};
  std::vector<std::string> save = argv(config, 3, path("a1.jsonl"), daemon);
  save.insert(save.end(), {"--save-dir", "ck_daemon"});
  const auto saved = scratch_.run_strata(shell(save), "cd '" + scratch_.path() + "' && ");
  ASSERT_EQ(saved.exit_code, 0) << saved.err << "\nstratad:\n" << stratad_.log();
  ASSERT_TRUE(std::filesystem::exists(path("ck_daemon/meta.json")));
  const auto resumed = run(argv(config, 6, path("a2.jsonl"), {"--resume", path("ck_daemon")}));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
  check_rest(path("a2.jsonl"));

  // In-process saves, a new stratad session resumes from it.
  const auto saved2 = run(argv(config, 3, path("b1.jsonl"), {"--save-dir", path("ck_local")}));
  ASSERT_EQ(saved2.exit_code, 0) << saved2.err;
  std::vector<std::string> load =
      argv(config, 6, path("b2.jsonl"), {"--daemon", stratad_.socket(), "--session", "loader"});
  load.insert(load.end(), {"--resume", path("ck_local")});
  const auto loaded = run(load);
  ASSERT_EQ(loaded.exit_code, 0) << loaded.err << "\nstratad:\n" << stratad_.log();
  check_rest(path("b2.jsonl"));
}

TEST_F(TrainDaemonTest, AMissingDaemonIsAnErrorNamingItsSocket) {
  const std::string config = scratch_.write("fp16.json", kFp16);
  const std::string socket = path("nobody/here.sock");
  const auto r = run(argv(config, 2, path("log.jsonl"), {"--daemon", socket, "--session", "x"}));
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("cannot connect to stratad at " + socket), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("stratad --socket " + socket), std::string::npos) << r.err;
}

// stratad killed mid-run: the client fails within its timeout with an
// error naming the daemon, not a hang.
TEST_F(TrainDaemonTest, ADaemonKilledMidRunIsAnErrorNamingIt) {
  const std::string config = scratch_.write("fp16.json", kFp16);
  const pid_t pid = start(argv(config, 100000, path("log.jsonl"),
                               {"--daemon", stratad_.socket(), "--session", "orphan"}),
                          path("client.err"));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (json_lines(path("log.jsonl")).size() < 2 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  stratad_.kill_hard();
  int status = 0;
  pid_t done = 0;
  for (int i = 0; i < 600 && done == 0; ++i) {  // 30 s
    done = ::waitpid(pid, &status, WNOHANG);
    if (done == 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (done == 0) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    FAIL() << "the client did not end within 30 s of stratad's death";
  }
  const std::string err = strata::testing::slurp(path("client.err"));
  ASSERT_TRUE(WIFEXITED(status)) << err;
  EXPECT_EQ(WEXITSTATUS(status), 1) << err;
  EXPECT_NE(err.find("stratad at " + stratad_.socket()), std::string::npos) << err;
}

// A node's ranks share one stratad (`--daemon S --session dp --nproc 2`):
// each rank attaches as dp.rank<r>, whose session holds the rank's slice of
// the model, so the two sessions' host bytes together are one session's of
// the same model, and each about half; the run's losses are the in-process
// ranks' (fp32: within 1e-5 relative; the engine reduces in fp32 either
// way, in another order), and a checkpoint the ranks save through stratad
// resumes in-process.
TEST_F(TrainDaemonTest, RanksOfANodeShareOneStratadEachHoldingASlice) {
  const std::string config = scratch_.write("fp32.json", kFp32SyncGas2);
  const std::string ckpt = path("dp_ckpt");
  const auto in = run(argv(config, 4, path("in.jsonl"), {"--nproc", "2"}));
  ASSERT_EQ(in.exit_code, 0) << in.err;
  const auto d = run(
      argv(config, 4, path("d.jsonl"),
           {"--daemon", stratad_.socket(), "--session", "dp", "--nproc", "2", "--save-dir", ckpt}));
  ASSERT_EQ(d.exit_code, 0) << d.err << "\nstratad:\n" << stratad_.log();
  EXPECT_NE(d.err.find("session dp.rank0..1 (a slice each)"), std::string::npos) << d.err;
  const auto a = json_lines(path("in.jsonl"));
  const auto b = json_lines(path("d.jsonl"));
  ASSERT_EQ(a.size(), 4u);
  ASSERT_EQ(b.size(), a.size());
  for (size_t i = 0; i < a.size(); ++i) {
    const double la = a[i]["loss"].get<double>(), lb = b[i]["loss"].get<double>();
    EXPECT_NEAR(lb, la, 1e-5 * la) << "step " << i + 1;
  }
  // One rank's session of the same model, for its host bytes.
  const auto one =
      run(argv(config, 1, path("one.jsonl"), {"--daemon", stratad_.socket(), "--session", "one"}));
  ASSERT_EQ(one.exit_code, 0) << one.err;
  const auto top = scratch_.run_strata("top --json --socket '" + stratad_.socket() + "'");
  ASSERT_EQ(top.exit_code, 0) << top.err;
  const json stats = json::parse(top.out);
  std::map<std::string, double> host;
  for (const json& session : stats["sessions"]) {
    host[session["name"].get<std::string>()] = session["host_bytes"].get<double>();
  }
  ASSERT_EQ(host.count("dp.rank0"), 1u) << top.out;
  ASSERT_EQ(host.count("dp.rank1"), 1u) << top.out;
  ASSERT_EQ(host.count("one"), 1u) << top.out;
  // One copy, plus each session's own alignment of its slots (1.2% on
  // this 1.2M-param model).
  EXPECT_NEAR(host["dp.rank0"] + host["dp.rank1"], host["one"], 0.02 * host["one"]);
  EXPECT_NEAR(host["dp.rank0"], host["one"] / 2, 0.02 * host["one"]);
  // ... and `jobs` sums them: one job of two rank sessions at step 4.
  ASSERT_EQ(stats["jobs"].size(), 1u) << top.out;
  const json& job = stats["jobs"][0];
  EXPECT_EQ(job["name"], "dp");
  EXPECT_EQ(job["sessions"], 2);
  EXPECT_EQ(job["host_bytes"].get<double>(), host["dp.rank0"] + host["dp.rank1"]);
  EXPECT_EQ(job["min_step"], 4);
  EXPECT_EQ(job["max_step"], 4);
  // The ranks' checkpoint is the data-parallel format: it resumes in-process.
  const auto resumed = run(argv(config, 5, path("resumed.jsonl"), {"--resume", ckpt}));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
  const auto r = json_lines(path("resumed.jsonl"));
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0]["step"], 5);
}

TEST_F(TrainDaemonTest, FlagsItCannotServeYetAreRefusedWithWhatToDo) {
  const std::string config = scratch_.write("fp16.json", kFp16);
  const std::string log = path("log.jsonl");
  struct Case {
    std::vector<std::string> extra;
    std::string says;
  };
  const std::vector<Case> cases = {
      // A rank's session is NAME.rank<r>: a name of 64 leaves no room.
      {{"--daemon", stratad_.socket(), "--session", std::string(64, 's'), "--nproc", "2"},
       "rank 1's session"},
      {{"--daemon", stratad_.socket()}, "--daemon needs --session NAME"},
      {{"--session", "s"}, "it needs --daemon"},
      {{"--daemon", stratad_.socket(), "--session", "no/slash"}, "--session"},
  };
  for (const Case& c : cases) {
    const auto r = run(argv(config, 2, log, c.extra));
    SCOPED_TRACE(shell(c.extra));
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_NE(r.err.find(c.says), std::string::npos) << r.err;
  }
  EXPECT_TRUE(stratad_.alive());
}

}  // namespace
