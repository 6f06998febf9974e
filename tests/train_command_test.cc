// `strata train`, run as a user would: the real binary trains gpt2-tiny for
// a few steps on a small corpus written here (short sequences, optimizer
// offloaded to the CPU, overlap mode) and its per-step JSON lines are
// checked; bad inputs and destinations fail before any work with exit 1 (2
// for a malformed number) and one "strata: error:" line; Ctrl-C and SIGTERM
// end the run after the current step (saving it) with exit 130 / 143; a
// closed pipe on stderr does not end it; a ds_config without an optimizer
// trains with AdamW from --lr/--weight-decay; GPT-2 BPE files switch the data
// to their tokens; --plot draws the loss curve with gnuplot.
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/bpe_test_files.h"
#include "tests/cli_test_util.h"

namespace {

using nlohmann::json;
namespace fs = std::filesystem;

using RunResult = strata::testing::CliRun;
using strata::testing::json_lines;
using strata::testing::slurp;

// fp16 with dynamic loss scaling (starting low, so no step is skipped),
// AdamW at a constant rate, optimizer states on the host; the default
// (overlap) mode.
constexpr char kConfig[] = R"({
  "train_micro_batch_size_per_gpu": 2,
  "gradient_accumulation_steps": 1,
  "steps_per_print": 2,
  "gradient_clipping": 1.0,
  "fp16": {"enabled": true, "loss_scale": 0, "initial_scale_power": 8},
  "optimizer": {"type": "AdamW", "params": {"lr": 3e-3, "weight_decay": 0.01}},
  "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}
})";

class TrainCommandTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string text;
    for (int i = 0; i < 400; ++i) {
      text += "the quick brown fox jumps over the lazy dog " + std::to_string(i % 10) + "\n";
    }
    corpus_ = write("corpus/a.txt", text);
    config_ = write("ds.json", kConfig);
  }

  std::string write(const std::string& name, const std::string& contents) {
    return scratch_.write(name, contents);
  }

  // A run with small, fast defaults; `changes` replace (or add) flags.
  std::string args(const std::map<std::string, std::string>& changes = {}) const {
    std::map<std::string, std::string> flags = {{"--model", "gpt2-tiny"},
                                                {"--data", dir_ + "/corpus"},
                                                {"--deepspeed_config", config_},
                                                {"--seq-len", "32"},
                                                {"--steps", "5"},
                                                {"--eval-every", "2"},
                                                {"--eval-batches", "2"},
                                                {"--log-json", log()}};
    for (const auto& [k, v] : changes) flags[k] = v;
    std::string out;
    for (const auto& [k, v] : flags) out += k + " '" + v + "' ";
    return out;
  }
  std::string log() const { return dir_ + "/log.jsonl"; }

  RunResult run(const std::string& a) {
    RunResult r = scratch_.run_strata("train " + a);
    EXPECT_GE(r.exit_code, 0) << a;
    return r;
  }

  // Fails before any work: exit 1, one error line containing `what`, no
  // step run, no log written.
  void expect_early_failure(const std::string& a, const std::string& what) {
    fs::remove(log());
    RunResult r = run(a);
    EXPECT_EQ(r.exit_code, 1) << r.err;
    EXPECT_EQ(r.err.rfind("strata: error: ", 0), 0u) << r.err;
    EXPECT_NE(r.err.find(what), std::string::npos) << r.err;
    EXPECT_EQ(r.err.find("step "), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(log())) << "a log was started: " << a;
  }

  strata::testing::ScratchDir scratch_{"strata_train_test_"};
  const std::string dir_ = scratch_.path();
  std::string corpus_, config_;
};

TEST_F(TrainCommandTest, TrainsAndLogsEveryStep) {
  const std::string trace = dir_ + "/run.trace.json";
  RunResult r = run(args({{"--trace", trace}, {"--sample", "16"}}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("byte-level vocab 256"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("summary: 5 step(s)"), std::string::npos) << r.err;
  const size_t sample = r.err.find("sample (16 bytes, temperature 0.80):\n");
  ASSERT_NE(sample, std::string::npos) << r.err;
  EXPECT_GE(r.err.size() - sample,
            std::string("sample (16 bytes, temperature 0.80):\n").size() + 16);

  // The progress lines end with the step's host/device synchronisations.
  EXPECT_NE(r.err.find("skipped 0  syncs "), std::string::npos) << r.err;

  const std::vector<json> lines = json_lines(log());
  ASSERT_EQ(lines.size(), 5u);
  for (size_t i = 0; i < lines.size(); ++i) {
    const json& j = lines[i];
    ASSERT_TRUE(j.is_object()) << "line " << i + 1 << " is not JSON";
    EXPECT_EQ(j["step"], static_cast<int>(i + 1));
    for (const char* key :
         {"loss", "lr", "loss_scale", "grad_norm", "step_seconds", "tokens_per_second"}) {
      ASSERT_TRUE(j.contains(key) && j[key].is_number()) << key << " in " << j.dump();
      EXPECT_TRUE(std::isfinite(j[key].get<double>())) << key << " in " << j.dump();
    }
    EXPECT_TRUE(j["skipped"].is_boolean());
    EXPECT_FALSE(j["skipped"].get<bool>()) << j.dump();
    // The step's synchronisations: the host waits on every step; after the
    // first, nothing synchronises the whole device.
    ASSERT_TRUE(j["host_syncs"].is_number_integer()) << j.dump();
    EXPECT_GT(j["host_syncs"].get<int64_t>(), 0) << j.dump();
    ASSERT_TRUE(j["device_syncs"].is_number_integer()) << j.dump();
    if (i > 0) EXPECT_EQ(j["device_syncs"].get<int64_t>(), 0) << j.dump();
    EXPECT_GT(j["tokens_per_second"].get<double>(), 0);
    EXPECT_DOUBLE_EQ(j["lr"].get<double>(), 3e-3);
    for (const char* dir : {"bytes_in", "bytes_out"}) {
      for (const char* tier : {"device", "host", "nvme"}) {
        EXPECT_TRUE(j[dir][tier].is_number_unsigned()) << dir << "." << tier << " " << j.dump();
      }
    }
    // Evaluated every 2 steps and at the end.
    const bool evaluated = (i + 1) % 2 == 0 || i + 1 == lines.size();
    ASSERT_EQ(j.contains("val_loss"), evaluated) << j.dump();
    if (evaluated) {
      EXPECT_TRUE(std::isfinite(j["val_loss"].get<double>()));
    }
  }
  // A repetitive corpus is learnt quickly: the loss falls from about ln 256.
  const double first = lines.front()["loss"], last = lines.back()["loss"];
  EXPECT_NEAR(first, std::log(256.0), 0.3);
  EXPECT_LT(last, first - 0.1);

  const json t = json::parse(slurp(trace), nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(t.is_object()) << "trace is not JSON";
  int steps = 0;
  for (const json& e : t["traceEvents"]) steps += e.value("name", "") == "train_step";
  EXPECT_EQ(steps, 5);
}

TEST_F(TrainCommandTest, BadInputsFailBeforeAnyWork) {
  expect_early_failure(args({{"--data", dir_ + "/missing"}}), dir_ + "/missing");
  write("empty/e.txt", "");
  expect_early_failure(args({{"--data", dir_ + "/empty"}}), "empty");
  write("short.txt", "too short for one sequence");
  expect_early_failure(args({{"--data", dir_ + "/short.txt"}}), "too few");
  expect_early_failure(args({{"--seq-len", "257"}}),
                       "--seq-len 257 is longer than gpt2-tiny allows");
  expect_early_failure(args({{"--model", "gpt3"}}), "unknown model \"gpt3\"");
  expect_early_failure(args({{"--deepspeed_config", dir_ + "/none.json"}}), "none.json");
  // Here there is no GPU (or, on a GPU machine, no CUDA training path yet).
  expect_early_failure(args({{"--device", "cuda"}}), "--device cuda");
  RunResult cuda = run(args({{"--device", "cuda"}}));
  EXPECT_NE(cuda.err.find("use --device cpu"), std::string::npos) << cuda.err;
}

// Every number is parsed by core/parse.h before any work: nan, junk, out of
// range and values CLI11 would have let through are usage errors (exit 2),
// one error line naming the flag, no step, no log.
TEST_F(TrainCommandTest, MalformedFlagsAreUsageErrors) {
  EXPECT_EQ(run(args({{"--device", "tpu"}})).exit_code, 2);
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"--gpu-mem", "12Q"},      {"--gpu-mem", "nan"},      {"--steps", "0"},
      {"--steps", "nan"},        {"--steps", "1e99"},       {"--steps", "-1"},
      {"--steps", "5x"},         {"--seq-len", "0"},        {"--seq-len", "abc"},
      {"--eval-every", "0"},     {"--eval-batches", "1.5"}, {"--seed", "-3"},
      {"--save-every", "0"},     {"--sample", "inf"},       {"--temperature", "nan"},
      {"--temperature", "-0.5"}, {"--temperature", "11"},   {"--lr", "0"},
      {"--lr", "nan"},           {"--weight-decay", "-1"},
  };
  for (const auto& [flag, value] : bad) {
    fs::remove(log());
    std::map<std::string, std::string> changes = {{flag, value}, {"--sample", "4"}};
    if (flag == "--sample") changes[flag] = value;
    if (flag == "--save-every") changes["--save-dir"] = dir_ + "/ckpt";
    RunResult r = run(args(changes));
    EXPECT_EQ(r.exit_code, 2) << flag << " " << value << ": " << r.err;
    EXPECT_EQ(r.err.rfind("strata: error: " + flag, 0), 0u) << r.err;
    EXPECT_EQ(r.err.find("step "), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(log())) << flag << " " << value;
  }
}

// Destinations that cannot be written are found before the first step, not
// after the last.
TEST_F(TrainCommandTest, UnwritableDestinationsFailBeforeAnyWork) {
  const std::string file = write("a_file", "x");
  expect_early_failure(args({{"--save-dir", file + "/ckpt"}}), "--save-dir " + file + "/ckpt");
  expect_early_failure(args({{"--save-dir", file}}), "--save-dir " + file);
  expect_early_failure(args({{"--trace", file + "/t.json"}}), "--trace " + file + "/t.json");
  expect_early_failure(args({{"--trace", dir_}}), "--trace " + dir_ + ": is a folder");
  fs::create_directories(log());  // the log path is a folder
  RunResult r = run(args());
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_EQ(r.err.rfind("strata: error: --log-json " + log() + ": is a folder", 0), 0u) << r.err;
  EXPECT_EQ(r.err.find("step "), std::string::npos) << r.err;
  fs::remove(log());
  expect_early_failure(args({{"--log-json", dir_ + "/no/such/log.jsonl"}}),
                       dir_ + "/no/such does not exist");
  // A FIFO would block the run forever at the open; a device is no log.
  ASSERT_EQ(::mkfifo((dir_ + "/fifo").c_str(), 0600), 0);
  expect_early_failure(args({{"--log-json", dir_ + "/fifo"}}), "is a FIFO");
  expect_early_failure(args({{"--trace", "/dev/null"}}), "--trace: /dev/null is a device");
  EXPECT_FALSE(fs::exists(file + "/ckpt"));
}

// Starts `strata train ARGS` (stderr into a file), waits for its first
// logged step, sends `sig` and returns its wait status and stderr.
struct Stopped {
  int status = 0;
  bool started = false;
  std::string err;
};
Stopped stop_after_first_step(const std::string& dir, const std::string& a,
                              const std::string& log_path, int sig) {
  const std::string err = dir + "/.stderr";
  const std::string cmd =
      "exec '" + std::string(STRATA_STRATA_BINARY) + "' train " + a + " 2>'" + err + "'";
  Stopped s;
  const pid_t pid = ::fork();
  if (pid < 0) return s;
  if (pid == 0) {
    ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  // Wait (up to 120 s) for the first logged step, then send the signal.
  bool exited = false;
  for (int i = 0; i < 1200 && !s.started && !exited; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    s.started = slurp(log_path).find('\n') != std::string::npos;
    exited = ::waitpid(pid, &s.status, WNOHANG) == pid;
  }
  if (!exited) {
    ::kill(pid, sig);
    ::waitpid(pid, &s.status, 0);
  }
  s.err = slurp(err);
  return s;
}

TEST_F(TrainCommandTest, InterruptFinishesTheStepAndExits130) {
  const Stopped s = stop_after_first_step(
      dir_, args({{"--steps", "100000"}, {"--eval-every", "100000"}}), log(), SIGINT);
  ASSERT_TRUE(s.started) << s.err;
  ASSERT_TRUE(WIFEXITED(s.status)) << s.err;
  EXPECT_EQ(WEXITSTATUS(s.status), 130) << s.err;
  EXPECT_NE(s.err.find("summary: "), std::string::npos) << s.err;
  EXPECT_NE(s.err.find("interrupted after step"), std::string::npos) << s.err;
  EXPECT_NE(s.err.find("nothing was saved"), std::string::npos) << s.err;
  // Every step that ran was logged completely.
  for (const json& j : json_lines(log())) EXPECT_TRUE(j.is_object());
}

// SIGTERM (a batch scheduler, `docker stop`) does what Ctrl-C does: the step
// finishes, --save-dir gets a checkpoint `strata sample` loads, the summary
// is printed, and the exit status is 143 (128 + SIGTERM).
TEST_F(TrainCommandTest, SigtermSavesTheCheckpointAndExits143) {
  const std::string ckpt = dir_ + "/ckpt";
  const Stopped s = stop_after_first_step(
      dir_, args({{"--steps", "100000"}, {"--eval-every", "100000"}, {"--save-dir", ckpt}}), log(),
      SIGTERM);
  ASSERT_TRUE(s.started) << s.err;
  ASSERT_TRUE(WIFEXITED(s.status)) << "killed by signal " << WTERMSIG(s.status) << ": " << s.err;
  EXPECT_EQ(WEXITSTATUS(s.status), 143) << s.err;
  EXPECT_NE(s.err.find("summary: "), std::string::npos) << s.err;
  EXPECT_NE(s.err.find("terminated (SIGTERM) after step"), std::string::npos) << s.err;
  EXPECT_NE(s.err.find("resume with --resume " + ckpt), std::string::npos) << s.err;
  const std::vector<json> lines = json_lines(log());
  ASSERT_FALSE(lines.empty());
  for (const json& j : lines) EXPECT_TRUE(j.is_object());
  const RunResult sample =
      scratch_.run_strata("sample --ckpt '" + ckpt + "' --prompt the --tokens 2");
  EXPECT_EQ(sample.exit_code, 0) << sample.err;
  EXPECT_NE(sample.err.find("after " + std::to_string(lines.back()["step"].get<int>()) + " steps"),
            std::string::npos)
      << sample.err;
}

// A reader that goes away (`strata train ... 2>&1 | head -1`) or a closed
// stderr does not end the run: it finishes, exits 0 and logs every step.
TEST_F(TrainCommandTest, ClosedPipeOrStderrDoesNotEndTheRun) {
  const std::string rc = dir_ + "/rc";
  const std::string cmd = "{ '" + std::string(STRATA_STRATA_BINARY) + "' train " +
                          args({{"--steps", "6"}}) + " 2>&1; echo $? >'" + rc +
                          "'; } | head -1 >/dev/null";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  EXPECT_EQ(slurp(rc), "0\n");
  std::vector<json> lines = json_lines(log());
  ASSERT_EQ(lines.size(), 6u);
  for (const json& j : lines) EXPECT_TRUE(j.is_object() && j.contains("loss")) << j.dump();
  EXPECT_TRUE(lines.back().contains("val_loss"));

  fs::remove(log());
  const std::string closed = "'" + std::string(STRATA_STRATA_BINARY) + "' train " +
                             args({{"--steps", "3"}}) + " 2>&- >&-; echo $? >'" + rc + "'";
  ASSERT_EQ(std::system(closed.c_str()), 0);
  EXPECT_EQ(slurp(rc), "0\n");
  lines = json_lines(log());
  ASSERT_EQ(lines.size(), 3u);
  // No progress text went into the log (it would take stderr's number).
  for (const json& j : lines) EXPECT_TRUE(j.is_object());
}

// The user's own ds_config has no "optimizer" (their train.py builds it):
// trained with AdamW at --lr / --weight-decay, said in one line. With an
// optimizer section in the config, the flags change nothing and say so.
TEST_F(TrainCommandTest, ConfigWithoutOptimizerTrainsWithAdamWFromFlags) {
  const std::string fixture = std::string(STRATA_FIXTURES_DIR) + "/ds_config_gpt2_rtx5090.json";
  RunResult r = run(args({{"--deepspeed_config", fixture}, {"--steps", "2"}}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find(fixture + " has no \"optimizer\" section"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("training with AdamW, lr 0.0006 (--lr), weight decay 0.1"),
            std::string::npos)
      << r.err;
  std::vector<json> lines = json_lines(log());
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_DOUBLE_EQ(lines[0]["lr"].get<double>(), 6e-4);

  r = run(args({{"--deepspeed_config", fixture}, {"--steps", "1"}, {"--lr", "1e-4"}}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("lr 0.0001 (--lr)"), std::string::npos) << r.err;
  lines = json_lines(log());
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_DOUBLE_EQ(lines[0]["lr"].get<double>(), 1e-4);

  r = run(args({{"--steps", "1"}, {"--lr", "1e-4"}, {"--weight-decay", "0"}}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("strata: warning: --lr and --weight-decay ignored: " + config_ +
                       " has an \"optimizer\" section (AdamW, lr 0.003"),
            std::string::npos)
      << r.err;
  EXPECT_EQ(r.err.find("training with AdamW"), std::string::npos) << r.err;
  lines = json_lines(log());
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_DOUBLE_EQ(lines[0]["lr"].get<double>(), 3e-3);
}

// The default overlap mode and DeepSpeed's sync order log the same losses
// and gradient norms, bit for bit (the speculative steps roll back exactly).
TEST_F(TrainCommandTest, OverlapAndSyncModesLogTheSameSteps) {
  RunResult overlap = run(args({{"--steps", "3"}}));
  ASSERT_EQ(overlap.exit_code, 0) << overlap.err;
  const std::vector<json> a = json_lines(log());
  std::string sync_config = kConfig;
  sync_config.insert(sync_config.rfind('}'), R"(, "strata": {"overlap": "sync"})");
  RunResult sync =
      run(args({{"--steps", "3"}, {"--deepspeed_config", write("sync.json", sync_config)}}));
  ASSERT_EQ(sync.exit_code, 0) << sync.err;
  const std::vector<json> b = json_lines(log());
  ASSERT_EQ(a.size(), 3u);
  ASSERT_EQ(b.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(a[i]["loss"].get<double>(), b[i]["loss"].get<double>()) << "step " << i + 1;
    EXPECT_EQ(a[i]["grad_norm"], b[i]["grad_norm"]) << "step " << i + 1;
  }
  EXPECT_EQ(a.back()["val_loss"].get<double>(), b.back()["val_loss"].get<double>());
}

// --save-dir / --resume: two steps saved (every step and at the end), then a
// resumed run to step 4 logs steps 3 and 4 with the same losses, bit for
// bit, as an uninterrupted 4-step run.
TEST_F(TrainCommandTest, ResumeContinuesFromTheSavedStep) {
  RunResult full = run(args({{"--steps", "4"}}));
  ASSERT_EQ(full.exit_code, 0) << full.err;
  const std::vector<json> ref = json_lines(log());
  ASSERT_EQ(ref.size(), 4u);

  const std::string ckpt = dir_ + "/ckpt";
  RunResult first = run(args({{"--steps", "2"}, {"--save-every", "1"}, {"--save-dir", ckpt}}));
  ASSERT_EQ(first.exit_code, 0) << first.err;
  EXPECT_NE(first.err.find("step 2: checkpoint saved to " + ckpt), std::string::npos) << first.err;
  EXPECT_TRUE(fs::exists(ckpt + "/meta.json"));

  RunResult second = run(args({{"--steps", "4"}, {"--resume", ckpt}}));
  ASSERT_EQ(second.exit_code, 0) << second.err;
  EXPECT_NE(second.err.find("resumed from " + ckpt + " after step 2"), std::string::npos)
      << second.err;
  const std::vector<json> resumed = json_lines(log());
  ASSERT_EQ(resumed.size(), 2u) << second.err;
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(resumed[i]["step"], ref[i + 2]["step"]);
    EXPECT_EQ(resumed[i]["loss"].get<double>(), ref[i + 2]["loss"].get<double>()) << i;
  }

  RunResult wrong = run(args({{"--resume", dir_ + "/nope"}}));
  EXPECT_EQ(wrong.exit_code, 1) << wrong.err;
  EXPECT_NE(wrong.err.find("--resume"), std::string::npos) << wrong.err;
}

// --vocab/--merges: the corpus becomes BPE tokens, the model's vocabulary the
// file's (256 bytes + 10 merges + <|endoftext|>), and the checkpoint records
// the tokenizer files by absolute path (given here relative to the cwd).
TEST_F(TrainCommandTest, BpeFilesSwitchTheCorpusToTheirTokens) {
  const strata::testing::BpeFiles files = strata::testing::BpeFiles::english();
  write("tok/vocab.json", files.vocab.dump());
  write("tok/merges.txt", files.merges);
  const std::string ckpt = dir_ + "/ckpt";
  RunResult r = scratch_.run_strata("train " + args({{"--vocab", "tok/vocab.json"},
                                                     {"--merges", "tok/merges.txt"},
                                                     {"--save-dir", ckpt},
                                                     {"--steps", "2"},
                                                     {"--sample", "4"}}),
                                    "cd '" + dir_ + "' && ");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("GPT-2 BPE vocab 267 (tok/vocab.json)"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("sample (4 tokens, temperature 0.80):"), std::string::npos) << r.err;
  const std::vector<json> lines = json_lines(log());
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_NEAR(lines.front()["loss"].get<double>(), std::log(267.0), 0.3);

  const json meta = json::parse(slurp(ckpt + "/meta.json"), nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(meta.is_object());
  const json& user = meta["user"];
  EXPECT_EQ(user["model"]["vocab_size"], 267) << user.dump();
  EXPECT_EQ(user["tokenizer"],
            (json{{"kind", "bpe"},
                  {"vocab", fs::canonical(dir_ + "/tok/vocab.json").string()},
                  {"merges", fs::canonical(dir_ + "/tok/merges.txt").string()}}));
  EXPECT_EQ(user["compute_dtype"], "fp16");
  EXPECT_EQ(user["train_seq_len"], 32);
}

TEST_F(TrainCommandTest, TokenizerDataAndPlotInputsFailBeforeAnyWork) {
  // --vocab and --merges come together (usage errors, exit 2).
  RunResult v = run(args({{"--vocab", dir_ + "/v.json"}}));
  EXPECT_EQ(v.exit_code, 2) << v.err;
  EXPECT_NE(v.err.find("--vocab requires --merges"), std::string::npos) << v.err;
  RunResult m = run(args({{"--merges", dir_ + "/m.txt"}}));
  EXPECT_EQ(m.exit_code, 2) << m.err;
  EXPECT_NE(m.err.find("--merges requires --vocab"), std::string::npos) << m.err;

  // Malformed or missing tokenizer files are named with the line.
  const strata::testing::BpeFiles files;
  const std::string vocab = write("bad/vocab.json", files.vocab.dump());
  const std::string merges = write("bad/merges.txt", "#version: 0.2\na b c\n");
  expect_early_failure(args({{"--vocab", vocab}, {"--merges", merges}}),
                       merges + ":2: expected two tokens");
  expect_early_failure(args({{"--vocab", dir_ + "/none.json"}, {"--merges", merges}}),
                       dir_ + "/none.json");

  // A glob that matches nothing names the pattern.
  expect_early_failure(args({{"--data", dir_ + "/corpus/*.none"}}),
                       dir_ + "/corpus/*.none: the pattern matches no file");

  // --plot with no gnuplot on PATH: said before training, with how to
  // install it.
  fs::remove(log());
  RunResult p =
      scratch_.run_strata("train " + args({{"--plot", dir_ + "/loss.png"}}), "PATH=/nonexistent ");
  EXPECT_EQ(p.exit_code, 1) << p.err;
  EXPECT_EQ(p.err.rfind("strata: error: --plot", 0), 0u) << p.err;
  EXPECT_NE(p.err.find("apt-get install gnuplot-nox"), std::string::npos) << p.err;
  EXPECT_EQ(p.err.find("step "), std::string::npos) << p.err;
  EXPECT_FALSE(fs::exists(log()));
  // Nor is a folder that is not there found out after training.
  expect_early_failure(args({{"--plot", dir_ + "/no/such/loss.png"}}),
                       "cannot write into " + dir_ + "/no/such");
}

// --plot draws the loss curve at the end: a PNG of the documented size.
// The data is given as a glob here.
TEST_F(TrainCommandTest, PlotWritesALossCurvePng) {
  if (std::system("command -v gnuplot >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "gnuplot is not installed (apt-get install gnuplot-nox)";
  }
  const std::string png = dir_ + "/loss.png";
  RunResult r = run(args({{"--plot", png}, {"--steps", "3"}, {"--data", dir_ + "/corpus/*.txt"}}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("loss curve written to " + png), std::string::npos) << r.err;
  const std::string data = slurp(png);
  ASSERT_GE(data.size(), 24u);
  EXPECT_EQ(data.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  EXPECT_EQ(data.substr(12, 4), "IHDR");  // after the chunk's 4-byte length
  auto be32 = [&](size_t at) {
    uint32_t v = 0;
    for (size_t i = 0; i < 4; ++i) v = (v << 8) | static_cast<unsigned char>(data[at + i]);
    return v;
  };
  EXPECT_EQ(be32(16), 960u);  // width, then height
  EXPECT_EQ(be32(20), 540u);
}

}  // namespace
