// TrainingEngine `overlap` mode and ZeRO-3 on SimDevice with a real-compute
// MLP: overlap gives the weights, optimizer states and params of `sync` bit
// for bit, with and without rollbacks (overflow, clipping, a rollback
// buffer too small for every layer); stage 3 with params offloaded to the
// host or NVMe computes exactly what stage 2 does while the device holds
// only part of the model; fp16 overflow is found on the device and named.
#include <cstdio>
#include <string>
#include <vector>

#include "engine/training_engine.h"
#include "gtest/gtest.h"
#include "tests/engine_test_fixture.h"

namespace strata::engine {
namespace {

struct Outcome {
  std::vector<double> loss;
  std::vector<float> master, exp_avg, exp_avg_sq, params;
  std::vector<StepStats> steps;
};

class EngineOverlapTest : public TrainingEngineTest {
 protected:
  // Runs `steps` steps; micro-batches in `poison` get an inf gradient.
  Outcome run(const config::DsConfig& cfg, int steps, std::vector<int64_t> poison = {},
              EngineOptions o = {}) {
    Outcome out;
    MlpTestModel model;
    // Every step speculative, whatever the timing (the tests count layers).
    o.speculation = EngineOptions::Speculation::kAlways;
    auto created = make_engine(cfg, &model, std::move(o));
    EXPECT_TRUE(created.ok()) << created.status();
    if (!created.ok()) return out;
    TrainingEngine& e = **created;
    for (int s = 0; s < steps; ++s) {
      const int64_t first = s * cfg.gradient_accumulation_steps;
      for (int64_t p : poison) {
        if (p >= first && p < first + cfg.gradient_accumulation_steps) model.poison(p);
      }
      auto st = e.train_step();
      EXPECT_TRUE(st.ok()) << st.status();
      if (!st.ok()) return out;
      out.loss.push_back(st->loss);
      out.steps.push_back(*st);
    }
    out.master = all(e, StateKind::kMaster);
    out.exp_avg = all(e, StateKind::kExpAvg);
    out.exp_avg_sq = all(e, StateKind::kExpAvgSq);
    for (int l = 0; l < 3; ++l) {
      for (int p = 0; p < 2; ++p) {
        auto v = e.read_param(l, p);
        EXPECT_TRUE(v.ok()) << v.status();
        if (v.ok()) out.params.insert(out.params.end(), v->begin(), v->end());
      }
    }
    return out;
  }

  static config::DsConfig with_mode(config::DsConfig cfg, config::OverlapMode mode) {
    cfg.strata.overlap = mode;
    return cfg;
  }

  static void expect_identical(const Outcome& a, const Outcome& b) {
    ASSERT_EQ(a.loss.size(), b.loss.size());
    for (size_t s = 0; s < a.loss.size(); ++s) {
      EXPECT_EQ(a.loss[s], b.loss[s]) << "step " << s + 1;
      EXPECT_EQ(a.steps[s].skipped, b.steps[s].skipped) << "step " << s + 1;
      EXPECT_EQ(a.steps[s].grad_norm, b.steps[s].grad_norm) << "step " << s + 1;
      EXPECT_EQ(a.steps[s].clip_coef, b.steps[s].clip_coef) << "step " << s + 1;
    }
    EXPECT_EQ(a.master, b.master);
    EXPECT_EQ(a.exp_avg, b.exp_avg);
    EXPECT_EQ(a.exp_avg_sq, b.exp_avg_sq);
    EXPECT_EQ(a.params, b.params);
  }
};

struct OverlapCase {
  const char* name;
  std::string members;  // ds_config members besides the defaults
  std::vector<int64_t> poison;
  int64_t rollback_buffer_bytes = 1 << 30;
  // Expected per applied step: layers stepped during backward, and rolled back.
  int speculative;
  int rolled_back;
};

TEST_F(EngineOverlapTest, OverlapMatchesSyncBitForBit) {
  const std::string clip = ", \"gradient_clipping\": 0.05";
  const std::vector<OverlapCase> cases = {
      // No rollback: every layer is stepped during backward and kept.
      {"fp16 cpu", std::string(kCpuZero) + ", " + kFp16, {}, 1 << 30, 3, 0},
      {"bf16 cpu", std::string(kCpuZero) + ", \"bf16\": {\"enabled\": true}", {}, 1 << 30, 3, 0},
      {"fp32 on device", "", {}, 1 << 30, 3, 0},
      // A clip on every step: each layer is restored and stepped again.
      {"fp16 nvme clipped", nvme_zero() + ", " + kFp16 + clip, {}, 1 << 30, 3, 3},
      {"bf16 cpu clipped",
       std::string(kCpuZero) + ", \"bf16\": {\"enabled\": true}" + clip,
       {},
       1 << 30,
       3,
       3},
      // Overflows (hysteresis 2: the second one halves the scale) roll back
      // whatever was stepped before the poisoned layer's backward.
      {"fp16 cpu overflow", std::string(kCpuZero) + ", " + kFp16, {5, 8, 13}, 1 << 30, 3, 0},
      // Room for one layer's copies only (the last: 4 x 36 floats x 3): the
      // others wait for the end of backward.
      {"fp16 cpu clipped, small buffer",
       std::string(kCpuZero) + ", " + kFp16 + clip,
       {},
       3 * 4 * 132,
       1,
       1},
  };
  for (const OverlapCase& c : cases) {
    SCOPED_TRACE(c.name);
    config::DsConfig cfg = make_config(c.members);
    cfg.strata.rollback_buffer_bytes = c.rollback_buffer_bytes;
    const Outcome sync = run(with_mode(cfg, config::OverlapMode::kSync), 10, c.poison);
    const Outcome overlap = run(with_mode(cfg, config::OverlapMode::kOverlap), 10, c.poison);
    expect_identical(sync, overlap);
    ASSERT_EQ(overlap.steps.size(), 10u);
    int skipped = 0;
    for (const StepStats& st : overlap.steps) {
      if (st.skipped) {
        ++skipped;
        EXPECT_EQ(st.rolled_back_layers, st.speculative_layers) << "step " << st.step;
        continue;
      }
      EXPECT_EQ(st.speculative_layers, c.speculative) << "step " << st.step;
      EXPECT_EQ(st.rolled_back_layers, c.rolled_back) << "step " << st.step;
    }
    for (const StepStats& st : sync.steps) EXPECT_EQ(st.speculative_layers, 0);
    EXPECT_EQ(skipped, static_cast<int>(c.poison.size()));
  }
}

// The poisoned layer 0 runs its backward last: whatever the worker stepped
// of layers 2 and 1 by then is rolled back (how much is a race); the
// overflow is named by layer and param.
TEST_F(EngineOverlapTest, OverflowIsFoundOnTheDeviceAndNamed) {
  for (const auto mode : {config::OverlapMode::kSync, config::OverlapMode::kOverlap}) {
    const Outcome o =
        run(with_mode(make_config(std::string(kCpuZero) + ", " + kFp16, /*gas=*/1), mode), 3, {1});
    ASSERT_EQ(o.steps.size(), 3u);
    const StepStats& st = o.steps[1];
    EXPECT_TRUE(st.skipped);
    EXPECT_EQ(st.overflow_layer, 0);
    EXPECT_EQ(st.overflow_param, "w");
    EXPECT_EQ(st.rolled_back_layers, st.speculative_layers);
    EXPECT_LE(st.speculative_layers, mode == config::OverlapMode::kOverlap ? 2 : 0);
    EXPECT_EQ(o.steps[0].overflow_layer, -1);
    EXPECT_EQ(o.steps[2].overflow_layer, -1);
  }
}

// A deterministic overflow rollback: fp16, hysteresis 2. Step 3 overflows
// in layer 0 (the last backward, held back 150 ms so the worker has stepped
// layers 2 and 1 speculatively): both are rolled back, hysteresis drops to
// 1. Step 5 overflows in layer 1 (layer 2 stepped before it): one layer
// rolled back, the scale halves. Everything equals sync bit for bit.
TEST_F(EngineOverlapTest, OverflowRollbackIsDeterministic) {
  config::DsConfig base = make_config(std::string(kCpuZero) + ", " + kFp16);
  // One layer per gradient bucket, so each layer's gradients reach the
  // worker while the next layers' backward runs (the default 5e8 elements
  // puts this small model in one bucket, handed over after the backward).
  base.zero.reduce_bucket_size = 1;
  base.zero.reduce_bucket_size_given = true;
  struct Run {
    Outcome o;
    LossScaler::State scaler{};
  };
  auto run_mode = [&](config::OverlapMode mode) {
    Run r;
    MlpTestModel model;
    EngineOptions eo;
    eo.speculation = EngineOptions::Speculation::kAlways;
    auto created = make_engine(with_mode(base, mode), &model, std::move(eo));
    EXPECT_TRUE(created.ok()) << created.status();
    if (!created.ok()) return r;
    TrainingEngine& e = **created;
    for (int s = 0; s < 7; ++s) {
      model.clear_faults();
      if (s == 2) {  // step 3: micro-batches 4 and 5
        model.delay_backward(5, 0, 150);
        model.poison(5, 0);
      }
      if (s == 4) {  // step 5: micro-batches 8 and 9
        model.delay_backward(9, 1, 150);
        model.poison(9, 1);
      }
      auto st = e.train_step();
      EXPECT_TRUE(st.ok()) << st.status();
      if (!st.ok()) return r;
      r.o.loss.push_back(st->loss);
      r.o.steps.push_back(*st);
    }
    r.o.master = all(e, StateKind::kMaster);
    r.o.exp_avg = all(e, StateKind::kExpAvg);
    r.o.exp_avg_sq = all(e, StateKind::kExpAvgSq);
    for (int l = 0; l < 3; ++l) {
      for (int p = 0; p < 2; ++p) {
        auto v = e.read_param(l, p);
        if (v.ok()) r.o.params.insert(r.o.params.end(), v->begin(), v->end());
      }
    }
    r.scaler = e.loss_scaler()->state();
    return r;
  };
  const Run sync = run_mode(config::OverlapMode::kSync);
  const Run overlap = run_mode(config::OverlapMode::kOverlap);
  expect_identical(sync.o, overlap.o);
  ASSERT_EQ(overlap.o.steps.size(), 7u);
  const std::vector<StepStats>& st = overlap.o.steps;
  for (int s : {0, 1, 3, 5, 6}) {
    EXPECT_FALSE(st[s].skipped) << "step " << s + 1;
    EXPECT_EQ(st[s].speculative_layers, 3) << "step " << s + 1;
    EXPECT_EQ(st[s].rolled_back_layers, 0) << "step " << s + 1;
  }
  EXPECT_TRUE(st[2].skipped);
  EXPECT_EQ(st[2].overflow_layer, 0);
  EXPECT_EQ(st[2].speculative_layers, 2);
  EXPECT_EQ(st[2].rolled_back_layers, 2);
  EXPECT_EQ(st[2].loss_scale, 1024);
  EXPECT_TRUE(st[4].skipped);
  EXPECT_EQ(st[4].overflow_layer, 1);
  EXPECT_EQ(st[4].speculative_layers, 1);
  EXPECT_EQ(st[4].rolled_back_layers, 1);
  EXPECT_EQ(st[4].loss_scale, 1024);  // the scale this step ran at
  EXPECT_EQ(st[5].loss_scale, 512);   // hysteresis used up at step 5: halved
  for (const Run* r : {&sync, &overlap}) {
    EXPECT_EQ(r->scaler.scale, 512);
    EXPECT_EQ(r->scaler.skipped, 2);
    EXPECT_EQ(r->scaler.hysteresis, 1);
    EXPECT_EQ(r->scaler.iteration, 7);
    EXPECT_EQ(r->scaler.last_overflow_iteration, 4);
  }
}

// ZeRO-3: params homed on the host or NVMe, a device budget of about two
// layers, so every step fetches every layer's params again; the numbers are
// stage 2's exactly.
TEST_F(EngineOverlapTest, Stage3MatchesStage2WithParamsOffloaded) {
  const std::string fp16 = std::string(", ") + kFp16;
  const Outcome stage2 = run(make_config(std::string(kCpuZero) + fp16), 8);
  for (const char* where : {"cpu", "nvme"}) {
    SCOPED_TRACE(where);
    const std::string zero3 =
        "\"zero_optimization\": {\"stage\": 3, \"offload_optimizer\": {\"device\": \"cpu\"}, "
        "\"offload_param\": {\"device\": \"" +
        std::string(where) + "\", \"nvme_path\": \"" + dir_.string() + "\"}}";
    EngineOptions o;
    o.device_budget_bytes = 8192;  // layer 1 alone needs 4224 (fp16 params + grads)
    const Outcome stage3 = run(make_config(zero3 + fp16), 8, {}, std::move(o));
    expect_identical(stage2, stage3);
    ASSERT_FALSE(stage3.steps.empty());
    // Params come back to the device every step: at least all of them.
    const uint64_t param_bytes = (512 + 32 + 1024 + 32 + 128 + 4) * 2;
    EXPECT_GE(stage3.steps.back().bytes_in[0], param_bytes);
    if (std::string(where) == "nvme") {
      EXPECT_GT(stage3.steps.back().bytes_in[2], 0u);
    }
  }
}

// Delayed parameter update: step 2's forward still sees the initial params
// (step 1's update runs beside it), so its loss is that of a run whose
// updates change nothing (lr 0); from step 3 on the run learns, one step
// stale, a little slower than sync; a save finishes the pending update, so a resumed
// run continues bit for bit; an overflow submits no update.
TEST_F(EngineOverlapTest, DelayedParamUpdateIsOneStepStale) {
  const std::string members = std::string(kCpuZero) + ", " + kFp16;
  config::DsConfig dpu = make_config(members);
  dpu.strata.delayed_param_update = true;
  const Outcome delayed = run(dpu, 30);
  const Outcome sync = run(with_mode(make_config(members), config::OverlapMode::kSync), 30);
  config::DsConfig frozen_cfg = with_mode(make_config(members), config::OverlapMode::kSync);
  frozen_cfg.optimizer.lr = 0;
  const Outcome frozen = run(frozen_cfg, 2);
  ASSERT_EQ(delayed.loss.size(), 30u);
  ASSERT_EQ(frozen.loss.size(), 2u);
  EXPECT_EQ(delayed.loss[0], sync.loss[0]);
  EXPECT_EQ(delayed.loss[1], frozen.loss[1]);
  EXPECT_NE(delayed.loss[1], sync.loss[1]);
  EXPECT_LT(delayed.loss.back(), delayed.loss.front() / 3);
  // Stale updates learn more slowly on this small problem, not much.
  EXPECT_LT(delayed.loss.back(), 2.5 * sync.loss.back());
  std::printf("loss after 30 steps: sync %.4f, delayed update %.4f (from %.4f)\n", sync.loss.back(),
              delayed.loss.back(), delayed.loss.front());
  for (const StepStats& st : delayed.steps) EXPECT_EQ(st.speculative_layers, 0);

  // Save after step 4 (finishing the pending update), go on to step 8; a
  // fresh engine loading the save gives steps 5-8 bit for bit.
  const std::string ckpt = (dir_ / "dpu_ckpt").string();
  std::vector<double> tail;
  {
    MlpTestModel model;
    auto e = make_engine(dpu, &model);
    ASSERT_TRUE(e.ok()) << e.status();
    for (int s = 0; s < 4; ++s) ASSERT_TRUE((*e)->train_step().ok());
    ASSERT_TRUE((*e)->save_checkpoint(ckpt).ok());
    for (int s = 0; s < 4; ++s) {
      auto st = (*e)->train_step();
      ASSERT_TRUE(st.ok()) << st.status();
      tail.push_back(st->loss);
    }
  }
  MlpTestModel model;
  auto e = make_engine(dpu, &model);
  ASSERT_TRUE(e.ok()) << e.status();
  ASSERT_TRUE((*e)->load_checkpoint(ckpt).ok());
  for (int s = 0; s < 4; ++s) {
    auto st = (*e)->train_step();
    ASSERT_TRUE(st.ok()) << st.status();
    EXPECT_EQ(st->loss, tail[s]) << "resumed step " << s + 5;
  }

  // An overflow at step 3 submits no update: the masters after step 3 are
  // those after step 2's update.
  MlpTestModel poisoned;
  auto p = make_engine(dpu, &poisoned);
  ASSERT_TRUE(p.ok());
  for (int s = 0; s < 2; ++s) ASSERT_TRUE((*p)->train_step().ok());
  const std::vector<float> before = all(**p, StateKind::kMaster);  // finishes update 2
  poisoned.poison(2 * 2 + 1);
  auto st = (*p)->train_step();
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_TRUE(st->skipped);
  EXPECT_EQ(all(**p, StateKind::kMaster), before);
}

// stage3_max_live_parameters caps the device only when offload_param moves
// params off it: with offload_param none, stage 3 keeps what stage 2 keeps
// (without any offload, the whole model on the device) and computes the same.
TEST_F(EngineOverlapTest, Stage3WithoutParamOffloadIsNotCappedByMaxLiveParameters) {
  for (const char* optimizer : {"none", "cpu"}) {
    SCOPED_TRACE(std::string("offload_optimizer ") + optimizer);
    auto zero = [&](int stage) {
      return make_config("\"zero_optimization\": {\"stage\": " + std::to_string(stage) +
                         ", \"stage3_max_live_parameters\": 100, \"offload_optimizer\": "
                         "{\"device\": \"" +
                         optimizer + "\"}}, " + kFp16);
    };
    MlpTestModel model2, model3;
    auto stage2 = make_engine(zero(2), &model2);
    auto stage3 = make_engine(zero(3), &model3);
    ASSERT_TRUE(stage2.ok()) << stage2.status();
    ASSERT_TRUE(stage3.ok()) << stage3.status();
    // What the 8 GiB device has free, not 100 params' worth (or one layer's).
    EXPECT_GT((*stage3)->store_stats().tiers[0].budget_bytes, uint64_t{1} << 30);
    for (int s = 0; s < 3; ++s) {
      auto a = (*stage2)->train_step();
      auto b = (*stage3)->train_step();
      ASSERT_TRUE(a.ok() && b.ok());
      EXPECT_EQ(a->loss, b->loss);
      EXPECT_EQ(a->bytes_in[0], b->bytes_in[0]);
    }
    EXPECT_EQ(all(**stage2, StateKind::kMaster), all(**stage3, StateKind::kMaster));
  }
}

TEST_F(EngineOverlapTest, Stage3LayerLargerThanTheDeviceIsRefusedAtCreation) {
  MlpTestModel model;
  EngineOptions o;
  o.device_budget_bytes = 4000;
  auto e = make_engine(make_config("\"zero_optimization\": {\"stage\": 3, \"offload_optimizer\": "
                                   "{\"device\": \"cpu\"}, \"offload_param\": {\"device\": "
                                   "\"cpu\"}}, " +
                                   std::string(kFp16)),
                       &model, std::move(o));
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), absl::StatusCode::kResourceExhausted);
  const std::string msg(e.status().message());
  EXPECT_NE(msg.find("ZeRO-3 fetches one layer at a time"), std::string::npos) << msg;
  EXPECT_NE(msg.find("layer 1 needs 4224 bytes"), std::string::npos) << msg;
}

}  // namespace
}  // namespace strata::engine
