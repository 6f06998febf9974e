// `strata sample`, run as a user would: a checkpoint saved by `strata train`
// (gpt2-tiny, a few fp32 steps) continues a prompt on stdout exactly as the
// trained model did in the training process; a BPE checkpoint finds its
// tokenizer files; missing, foreign and metadata-less checkpoints and
// prompts the vocabulary lacks fail with one "strata: error:" line.
#include <filesystem>
#include <string>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/bpe_test_files.h"
#include "tests/cli_test_util.h"

namespace {

using nlohmann::json;
namespace fs = std::filesystem;
using strata::testing::CliRun;
using strata::testing::slurp;

// fp32, no offload: the other placement from train_command_test's; the
// default (overlap) mode.
constexpr char kConfig[] = R"({
  "train_micro_batch_size_per_gpu": 2,
  "gradient_accumulation_steps": 1,
  "optimizer": {"type": "AdamW", "params": {"lr": 3e-3}}
})";

class SampleCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string text;
    for (int i = 0; i < 300; ++i) text += "the quick brown fox jumps over the lazy dog\n";
    scratch_.write("corpus.txt", text);
    scratch_.write("ds.json", kConfig);
  }

  // Trains 3 steps and saves to dir_/NAME; `extra` adds flags.
  CliRun train(const std::string& name, const std::string& extra = "") {
    return scratch_.run_strata("train --model gpt2-tiny --data '" + dir_ +
                               "/corpus.txt' --deepspeed_config '" + dir_ +
                               "/ds.json' --seq-len 32 --steps 3 --eval-every 3 --eval-batches 1 "
                               "--save-dir '" +
                               dir_ + "/" + name + "' " + extra);
  }
  CliRun sample(const std::string& args) { return scratch_.run_strata("sample " + args); }

  // One error line naming `what`, nothing on stdout.
  void expect_error(const CliRun& r, const std::string& what) {
    EXPECT_EQ(r.exit_code, 1) << r.err;
    EXPECT_EQ(r.err.rfind("strata: error: ", 0), 0u) << r.err;
    EXPECT_NE(r.err.find(what), std::string::npos) << r.err;
    EXPECT_TRUE(r.out.empty()) << r.out;
  }

  strata::testing::ScratchDir scratch_{"strata_sample_test_"};
  const std::string dir_ = scratch_.path();
};

TEST_F(SampleCliTest, ContinuesAsTheTrainedModelDid) {
  CliRun t = train("ckpt", "--sample 12 --temperature 0");
  ASSERT_EQ(t.exit_code, 0) << t.err;
  const std::string header = "sample (12 bytes, temperature 0.00):\n";
  const size_t at = t.err.find(header);
  ASSERT_NE(at, std::string::npos) << t.err;
  // The sample is the last thing train prints, followed by a newline.
  const std::string in_training = t.err.substr(at + header.size(), 12);
  ASSERT_EQ(t.err.size(), at + header.size() + 12 + 1) << t.err;

  // An empty prompt continues a newline, as train's --sample does.
  CliRun s = sample("--ckpt '" + dir_ + "/ckpt' --prompt '' --tokens 12 --temperature 0");
  ASSERT_EQ(s.exit_code, 0) << s.err;
  EXPECT_EQ(s.out, in_training + "\n");
  EXPECT_NE(s.err.find("gpt2-tiny (fp32, byte tokens) after 3 steps"), std::string::npos) << s.err;

  // The prompt is echoed; a seed gives the same text each time.
  const std::string args = "--ckpt '" + dir_ + "/ckpt' --prompt 'the quick' --tokens 16 --seed 5";
  CliRun a = sample(args), b = sample(args);
  ASSERT_EQ(a.exit_code, 0) << a.err;
  EXPECT_EQ(a.out.rfind("the quick", 0), 0u) << a.out;
  EXPECT_EQ(a.out.size(), 9u + 16u + 1u);
  EXPECT_EQ(a.out, b.out);
}

TEST_F(SampleCliTest, BpeCheckpointUsesItsTokenizerFiles) {
  const strata::testing::BpeFiles files = strata::testing::BpeFiles::english();
  const std::string vocab = scratch_.write("vocab.json", files.vocab.dump());
  const std::string merges = scratch_.write("merges.txt", files.merges);
  CliRun t = train("bpe", "--vocab '" + vocab + "' --merges '" + merges + "'");
  ASSERT_EQ(t.exit_code, 0) << t.err;

  CliRun s = sample("--ckpt '" + dir_ + "/bpe' --prompt 'the fox' --tokens 5 --temperature 0");
  ASSERT_EQ(s.exit_code, 0) << s.err;
  EXPECT_EQ(s.out.rfind("the fox", 0), 0u) << s.out;
  EXPECT_GT(s.out.size(), std::string("the fox\n").size());
  EXPECT_NE(s.err.find("BPE 267 tokens"), std::string::npos) << s.err;

  fs::remove(vocab);
  expect_error(sample("--ckpt '" + dir_ + "/bpe' --prompt x"), vocab);
}

TEST_F(SampleCliTest, UnusableCheckpointsAndPromptsFail) {
  expect_error(sample("--ckpt '" + dir_ + "/nope' --prompt x"), dir_ + "/nope");

  scratch_.write("foreign/meta.json", "{\"hello\": 1}\n");
  expect_error(sample("--ckpt '" + dir_ + "/foreign' --prompt x"), "not a strata checkpoint");

  CliRun t = train("ckpt");
  ASSERT_EQ(t.exit_code, 0) << t.err;
  const json meta = json::parse(slurp(dir_ + "/ckpt/meta.json"));

  // A checkpoint without the model description train records.
  fs::copy(dir_ + "/ckpt", dir_ + "/bare");
  json bare = meta;
  bare.erase("user");
  scratch_.write("bare/meta.json", bare.dump());
  expect_error(sample("--ckpt '" + dir_ + "/bare' --prompt x"),
               "does not say which model it holds");

  // Malformed numbers are usage errors, found before the checkpoint is read.
  for (const std::string bad : {"--temperature nan", "--temperature -1", "--temperature 1e9",
                                "--tokens -1", "--tokens 1.5", "--tokens inf", "--seed x"}) {
    CliRun r = sample("--ckpt '" + dir_ + "/ckpt' --prompt x " + bad);
    EXPECT_EQ(r.exit_code, 2) << bad << ": " << r.err;
    EXPECT_EQ(r.err.rfind("strata: error: " + bad.substr(0, bad.find(' ')), 0), 0u) << r.err;
    EXPECT_TRUE(r.out.empty()) << r.out;
  }

  // A byte-level model whose vocabulary lacks a prompt byte.
  fs::copy(dir_ + "/ckpt", dir_ + "/small");
  json small = meta;
  small["user"]["model"]["vocab_size"] = 100;
  scratch_.write("small/meta.json", small.dump());
  expect_error(sample("--ckpt '" + dir_ + "/small' --prompt 'ab~'"),
               "--prompt: byte 0x7E at offset 2 is outside the model's vocabulary");
}

}  // namespace
