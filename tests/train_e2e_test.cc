// End to end: gpt2-tiny learns the fortunes collection in 200 steps, the
// same way with fp32 in device memory and with fp16 and the optimizer
// offloaded to an NVMe swap folder; and `strata train --resume` continues
// an fp16, NVMe-offloaded run's loss curve bit for bit, also when the
// resumed run recomputes activations (--checkpoint-activations). All in the
// default (overlap) mode; train_command_test compares it with sync.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "core/config/ds_config.h"
#include "engine/training_engine.h"
#include "gpu/sim_device.h"
#include "gtest/gtest.h"
#include "model/cpu/matmul.h"
#include "model/gpt2_config.h"
#include "model/gpt2_model.h"
#include "model/text_corpus.h"
#include "nlohmann/json.hpp"
#include "tests/cli_test_util.h"
#include "tests/test_ds_config.h"

namespace strata {
namespace {

using nlohmann::json;
using strata::testing::json_lines;

constexpr char kFortunes[] = "/usr/share/games/fortunes";
constexpr int64_t kB = 4, kT = 32;
constexpr int kSteps = 200;
constexpr int kEvalBatches = 16;

config::DsConfig make_config(const std::string& extra) {
  const std::string text = R"({"train_micro_batch_size_per_gpu": 4,
    "gradient_accumulation_steps": 1, "gradient_clipping": 1.0,
    "optimizer": {"type": "AdamW", "params": {"lr": 6e-3, "weight_decay": 0.01}})" +
                           extra + "}";
  return strata::testing::parse_test_config(text);
}

struct Curve {
  std::vector<double> loss;
  double val_before = NAN, val_after = NAN;
  int64_t skipped = 0;
};

Curve train(const config::DsConfig& cfg) {
  Curve c;
  auto corpus = model::load_byte_corpus(kFortunes, {.micro_batch = kB, .seq_len = kT});
  EXPECT_TRUE(corpus.ok()) << corpus.status();
  if (!corpus.ok()) return c;
  auto mc = model::gpt2_config_by_name("gpt2-tiny");
  EXPECT_TRUE(mc.ok()) << mc.status();
  if (!mc.ok()) return c;
  auto net =
      model::make_gpt2_model({.config = *mc, .micro_batch = kB, .seq_len = kT}, corpus->get());
  EXPECT_TRUE(net.ok()) << net.status();
  if (!net.ok()) return c;
  gpu::SimDevice device;
  engine::EngineOptions eo;
  eo.allow_buffered_io = true;  // the scratch folder may be on tmpfs
  auto engine = engine::TrainingEngine::create(cfg, net->get(), &device, std::move(eo));
  EXPECT_TRUE(engine.ok()) << engine.status();
  if (!engine.ok()) return c;
  auto v = (*engine)->evaluate(kEvalBatches);
  EXPECT_TRUE(v.ok()) << v.status();
  c.val_before = v.ok() ? *v : NAN;
  for (int s = 0; s < kSteps; ++s) {
    auto st = (*engine)->train_step();
    EXPECT_TRUE(st.ok()) << st.status();
    if (!st.ok()) return c;
    c.loss.push_back(st->loss);
    c.skipped += st->skipped;
  }
  v = (*engine)->evaluate(kEvalBatches);
  EXPECT_TRUE(v.ok()) << v.status();
  c.val_after = v.ok() ? *v : NAN;
  return c;
}

// Mean of the training loss over steps [from, to): single steps are noisy.
double mean(const std::vector<double>& v, size_t from, size_t to) {
  double s = 0;
  for (size_t i = from; i < to; ++i) s += v[i];
  return s / static_cast<double>(to - from);
}

// 200 AdamW steps (lr 6e-3) of 4 x 32 bytes (~12 s per run on 2 cores):
// the validation loss (16 batches) falls from ln 256 ~ 5.55 to below 3.6
// (measured fp32 3.306, fp16 3.363; the same, bit for bit, in sync mode),
// the training loss over the last 20 steps below 3.5 (3.167, 3.238). fp16
// with the optimizer on NVMe follows fp32 within 5% in every 20-step window
// of the loss curve (measured worst 2.6%; the curves drift apart on the plateau near 3.3 because
// rounding differences grow there: 4.5% was seen at lr 3e-3) and ends within 5% of its validation
// loss, skipping at most 2 steps (measured 0; the scale starts at 2^8).
TEST(TrainE2eTest, Gpt2TinyLearnsFortunesInFp32AndInFp16OnNvme) {
  if (!std::filesystem::exists(kFortunes)) {
    GTEST_SKIP() << kFortunes << " is missing (scripts/install-deps.sh installs fortune-mod data)";
  }
  model::cpu::set_blas_threads(1);  // tiny matmuls; spinning BLAS threads only cost time
  testing::ScratchDir scratch("strata_e2e_");
  const Curve fp32 = train(make_config(""));
  const Curve fp16 = train(make_config(R"(, "fp16": {"enabled": true, "initial_scale_power": 8},
      "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "nvme",
      "nvme_path": ")" + scratch.path() +
                                       R"("}})"));
  ASSERT_EQ(fp32.loss.size(), static_cast<size_t>(kSteps));
  ASSERT_EQ(fp16.loss.size(), static_cast<size_t>(kSteps));
  double worst = 0;
  for (size_t w = 0; w < kSteps; w += 20) {
    const double a = mean(fp32.loss, w, w + 20), b = mean(fp16.loss, w, w + 20);
    worst = std::max(worst, std::abs(a - b) / a);
  }
  std::printf(
      "val loss fp32 %.4f -> %.4f, fp16/nvme %.4f -> %.4f; train loss (last 20) fp32 %.4f, "
      "fp16 %.4f; worst 20-step window gap %.2e; fp16 skipped %lld\n",
      fp32.val_before, fp32.val_after, fp16.val_before, fp16.val_after,
      mean(fp32.loss, kSteps - 20, kSteps), mean(fp16.loss, kSteps - 20, kSteps), worst,
      static_cast<long long>(fp16.skipped));
  for (const Curve* c : {&fp32, &fp16}) {
    EXPECT_NEAR(c->val_before, std::log(256.0), 0.3);
    EXPECT_LT(c->val_after, 3.6);
    EXPECT_LT(mean(c->loss, kSteps - 20, kSteps), 3.5);
  }
  EXPECT_LT(worst, 0.05);
  EXPECT_NEAR(fp16.val_after, fp32.val_after, 0.05 * fp32.val_after);
  EXPECT_LE(fp16.skipped, 2);
}

// Through the CLI, fp16 with the optimizer on NVMe: an uninterrupted 8-step
// run (saving every 4 steps) is the reference; a 4-step run saving every 2
// logs the same first 4 losses; resuming its checkpoint to step 8, with
// activation checkpointing switched on, logs steps 5..8 with the reference's
// losses, gradient norms and final validation loss, bit for bit.
TEST(TrainE2eTest, ResumeThroughTheCliContinuesTheLossCurve) {
  testing::ScratchDir scratch("strata_e2e_resume_");
  const std::string dir = scratch.path();
  std::string text;
  for (int i = 0; i < 500; ++i) {
    text +=
        "a stitch in time saves nine; " + std::to_string(i * 7 % 13) + " hands make light work\n";
  }
  scratch.write("corpus/c.txt", text);
  const std::string config = scratch.write("ds.json", R"({
    "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
    "gradient_clipping": 1.0, "steps_per_print": 100,
    "fp16": {"enabled": true, "loss_scale": 0, "initial_scale_power": 8},
    "optimizer": {"type": "AdamW", "params": {"lr": 3e-3, "weight_decay": 0.01}},
    "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "nvme",
                          "nvme_path": ")" + dir + R"(/swap"}}})");
  std::filesystem::create_directories(dir + "/swap");
  auto train = [&](const std::string& log, const std::string& more) {
    const testing::CliRun r = scratch.run_strata(
        "train --model gpt2-tiny --data '" + dir + "/corpus' --deepspeed_config '" + config +
        "' --seq-len 32 --eval-every 4 --eval-batches 2 --log-json '" + dir + "/" + log + "' " +
        more);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return r;
  };
  train("ref.jsonl", "--steps 8 --save-every 4 --save-dir '" + dir + "/ref_ckpt'");
  train("part.jsonl", "--steps 4 --save-every 2 --save-dir '" + dir + "/ckpt'");
  const testing::CliRun resumed =
      train("resumed.jsonl", "--steps 8 --resume '" + dir + "/ckpt' --checkpoint-activations");
  EXPECT_NE(resumed.err.find("after step 4"), std::string::npos) << resumed.err;

  const std::vector<json> ref = json_lines(dir + "/ref.jsonl");
  const std::vector<json> part = json_lines(dir + "/part.jsonl");
  const std::vector<json> res = json_lines(dir + "/resumed.jsonl");
  ASSERT_EQ(ref.size(), 8u);
  ASSERT_EQ(part.size(), 4u);
  ASSERT_EQ(res.size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(part[i]["loss"].get<double>(), ref[i]["loss"].get<double>()) << "step " << i + 1;
  }
  for (size_t i = 0; i < 4; ++i) {
    const json& want = ref[i + 4];
    EXPECT_EQ(res[i]["step"], want["step"]);
    EXPECT_EQ(res[i]["loss"].get<double>(), want["loss"].get<double>()) << "step " << i + 5;
    EXPECT_EQ(res[i]["grad_norm"], want["grad_norm"]) << "step " << i + 5;
    EXPECT_EQ(res[i]["loss_scale"], want["loss_scale"]) << "step " << i + 5;
  }
  ASSERT_TRUE(res.back().contains("val_loss"));
  EXPECT_EQ(res.back()["val_loss"].get<double>(), ref.back()["val_loss"].get<double>());
  EXPECT_LT(ref.back()["loss"].get<double>(), ref.front()["loss"].get<double>());
}

}  // namespace
}  // namespace strata
