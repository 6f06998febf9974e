// `strata train`, run as a user would: the real binary trains gpt2-tiny for
// a few steps on a small corpus written here (short sequences, optimizer
// offloaded to the CPU) and its per-step JSON lines are checked; bad inputs
// fail before any work with exit 1 and one "strata: error:" line; Ctrl-C
// ends the run after the current step with exit 130; GPT-2 BPE files switch
// the data to their tokens; --plot draws the loss curve with gnuplot.
#include <signal.h>
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
using strata::testing::slurp;

std::vector<json> json_lines(const std::string& path) {
  std::vector<json> out;
  std::istringstream in(slurp(path));
  for (std::string line; std::getline(in, line);) {
    out.push_back(json::parse(line, nullptr, /*allow_exceptions=*/false));
  }
  return out;
}

// fp16 with dynamic loss scaling (starting low, so no step is skipped),
// AdamW at a constant rate, optimizer states on the host.
constexpr char kConfig[] = R"({
  "train_micro_batch_size_per_gpu": 2,
  "gradient_accumulation_steps": 1,
  "steps_per_print": 2,
  "gradient_clipping": 1.0,
  "fp16": {"enabled": true, "loss_scale": 0, "initial_scale_power": 8},
  "optimizer": {"type": "AdamW", "params": {"lr": 3e-3, "weight_decay": 0.01}},
  "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}},
  "strata": {"overlap": "sync"}
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

TEST_F(TrainCommandTest, MalformedFlagsAreUsageErrors) {
  EXPECT_EQ(run(args({{"--gpu-mem", "12Q"}})).exit_code, 2);
  EXPECT_EQ(run(args({{"--device", "tpu"}})).exit_code, 2);
  EXPECT_EQ(run(args({{"--steps", "0"}})).exit_code, 2);
}

TEST_F(TrainCommandTest, InterruptFinishesTheStepAndExits130) {
  const std::string err = dir_ + "/.stderr";
  const std::string cmd = "exec '" + std::string(STRATA_STRATA_BINARY) + "' train " +
                          args({{"--steps", "100000"}, {"--eval-every", "100000"}}) + " 2>'" + err +
                          "'";
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  // Wait (up to 120 s) for the first logged step, then press Ctrl-C.
  bool started = false, exited = false;
  int status = 0;
  for (int i = 0; i < 1200 && !started && !exited; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    started = slurp(log()).find('\n') != std::string::npos;
    exited = ::waitpid(pid, &status, WNOHANG) == pid;
  }
  if (!exited) {
    ::kill(pid, SIGINT);
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  }
  ASSERT_TRUE(started) << slurp(err);
  ASSERT_TRUE(WIFEXITED(status)) << slurp(err);
  EXPECT_EQ(WEXITSTATUS(status), 130) << slurp(err);
  const std::string text = slurp(err);
  EXPECT_NE(text.find("summary: "), std::string::npos) << text;
  EXPECT_NE(text.find("nothing was saved"), std::string::npos) << text;
  // Every step that ran was logged completely.
  for (const json& j : json_lines(log())) EXPECT_TRUE(j.is_object());
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
