// TrainingEngine on SimDevice with a real-compute MLP: precision/offload
// variants agree, overflow skips exactly, clipping matches a hand-computed
// update, and configs that cannot run fail at creation.
#include "engine/training_engine.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/config/ds_config.h"
#include "gpu/sim_device.h"
#include "gtest/gtest.h"
#include "tests/engine_test_fixture.h"
#include "tests/mlp_test_model.h"

namespace strata::engine {
namespace {

// (a) fp32 without offload, fp16 offloaded to the host, fp16 offloaded to
// NVMe and fp16 ZeRO-3 (params and states on NVMe) learn the same curve:
// losses fall by more than 4x over 50 steps; fp16 stays within 1%
// (relative) of fp32 at every step; the fp16 runs do the same arithmetic in
// different places, so they agree bit for bit.
TEST_F(TrainingEngineTest, LossCurvesAgreeAcrossPrecisionAndOffload) {
  constexpr int kSteps = 50;
  auto train = [&](const config::DsConfig& cfg) {
    TrainRun r;
    MlpTestModel model;
    auto engine = make_engine(cfg, &model);
    EXPECT_TRUE(engine.ok()) << engine.status();
    if (!engine.ok()) return r;
    for (int s = 0; s < kSteps; ++s) {
      auto st = (*engine)->train_step();
      EXPECT_TRUE(st.ok()) << st.status();
      if (!st.ok()) return r;
      r.loss.push_back(st->loss);
      r.skipped += st->skipped;
      r.last = *st;
    }
    r.master = all(**engine, StateKind::kMaster);
    return r;
  };
  const TrainRun fp32 = train(make_config(""));
  const TrainRun cpu = train(make_config(std::string(kCpuZero) + ", " + kFp16));
  const TrainRun nvme = train(make_config(nvme_zero() + ", " + kFp16));
  const TrainRun zero3 = train(make_config(
      "\"zero_optimization\": {\"stage\": 3, \"offload_optimizer\": {\"device\": \"nvme\", "
      "\"nvme_path\": \"" +
      dir_.string() + "\"}, \"offload_param\": {\"device\": \"nvme\", \"nvme_path\": \"" +
      dir_.string() + "\"}}, " + kFp16));
  ASSERT_EQ(zero3.loss, nvme.loss);
  EXPECT_EQ(zero3.master, nvme.master);
  ASSERT_EQ(fp32.loss.size(), kSteps);
  ASSERT_EQ(cpu.loss.size(), kSteps);
  ASSERT_EQ(nvme.loss.size(), kSteps);

  EXPECT_LT(fp32.loss.back(), fp32.loss.front() / 4);
  EXPECT_LT(cpu.loss.back(), cpu.loss.front() / 4);
  EXPECT_EQ(cpu.skipped, 0);
  for (int s = 0; s < kSteps; ++s) {
    EXPECT_NEAR(cpu.loss[s], fp32.loss[s], 0.01 * fp32.loss[s]) << "step " << s;
    EXPECT_EQ(cpu.loss[s], nvme.loss[s]) << "step " << s;
  }
  EXPECT_EQ(cpu.master, nvme.master);
  double worst = 0;
  for (int s = 0; s < kSteps; ++s)
    worst = std::max(worst, std::abs(cpu.loss[s] - fp32.loss[s]) / fp32.loss[s]);
  std::printf("loss fp32 %.5f -> %.5f, fp16 %.5f -> %.5f, worst relative gap %.2e\n",
              fp32.loss.front(), fp32.loss.back(), cpu.loss.front(), cpu.loss.back(), worst);

  // The offloaded runs really moved data: params H2D, grads D2H, and the
  // NVMe run read and wrote its optimizer states (the host cache holds two
  // of three layers).
  EXPECT_GT(cpu.last.bytes_in[0], 0u);
  EXPECT_GT(cpu.last.bytes_out[0], 0u);
  EXPECT_EQ(cpu.last.bytes_in[2], 0u);
  EXPECT_GT(nvme.last.bytes_in[2], 0u);
  EXPECT_GT(nvme.last.bytes_out[2], 0u);
  EXPECT_EQ(fp32.last.bytes_in[0], 0u);  // nothing leaves the device
}

// At gradient_accumulation_steps 1 the fused pass never touches the fp32
// accumulators (grad32): they take no host memory, their share of the plan's
// host budget caches NVMe-homed states, and steady steps read and write no
// NVMe bytes here (the plan's cache alone holds two of the three layers'
// states, the accumulators' share the third). At gas 2 they are used, and
// the states move as before. Either way the run is the cpu-offload run, bit
// for bit.
TEST_F(TrainingEngineTest, UnusedAccumulatorsLeaveTheirHostBytesToTheNvmeCache) {
  for (const int gas : {1, 2}) {
    SCOPED_TRACE(absl::StrCat("gas ", gas));
    std::vector<double> losses[2];
    StepStats last[2];
    int run = 0;
    for (const std::string& zero : {std::string(kCpuZero), nvme_zero()}) {
      MlpTestModel model;
      auto engine = make_engine(make_config(zero + ", " + kFp16, gas), &model);
      ASSERT_TRUE(engine.ok()) << engine.status();
      for (int s = 0; s < 4; ++s) {
        auto st = (*engine)->train_step();
        ASSERT_TRUE(st.ok()) << st.status();
        losses[run].push_back(st->loss);
        last[run] = *st;
      }
      ++run;
    }
    EXPECT_EQ(losses[0], losses[1]);
    const StepStats& nvme = last[1];
    if (gas == 1) {
      EXPECT_EQ(nvme.bytes_in[2], 0u) << "a steady step wrote states the host could keep";
      EXPECT_EQ(nvme.bytes_out[2], 0u) << "a steady step re-read states the host could keep";
    } else {
      EXPECT_GT(nvme.bytes_in[2], 0u);
      EXPECT_GT(nvme.bytes_out[2], 0u);
    }
  }
}

// bf16 offloaded to the host follows the fp32 curve within bf16's precision.
// The engine is the model's layers over an OffloadOptimizer: one bucket per
// layer, store-held params, and what the engine reads is the optimizer's.
TEST_F(TrainingEngineTest, StepsThroughItsOffloadOptimizer) {
  MlpTestModel model;
  auto engine = make_engine(make_config(kCpuZero), &model);
  ASSERT_TRUE(engine.ok()) << engine.status();
  ASSERT_TRUE((*engine)->train_step().ok());
  OffloadOptimizer& opt = (*engine)->optimizer();
  EXPECT_EQ(opt.num_buckets(), model.num_layers());
  EXPECT_EQ(opt.steps(), 1);
  EXPECT_EQ(opt.micro_batches(), 2);  // gas 2
  for (int l = 0; l < model.num_layers(); ++l) {
    auto handles = (*engine)->layer_params(l);
    ASSERT_TRUE(handles.ok());
    EXPECT_EQ(*handles, opt.bucket_params(l));
    for (size_t i = 0; i < handles->size(); ++i) {
      const ParamHandle h = (*handles)[i];
      EXPECT_EQ(opt.param(h).binding, ParamBinding::kStore);
      EXPECT_EQ(opt.param(h).name, model.layer_params(l)[i].name);
      EXPECT_EQ(*opt.read_state(h, StateKind::kExpAvg),
                *(*engine)->read_fp32(l, static_cast<int>(i), StateKind::kExpAvg));
    }
  }
  EXPECT_EQ((*engine)->layer_params(model.num_layers()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(TrainingEngineTest, Bf16FollowsFp32) {
  std::vector<double> losses[2];
  const config::DsConfig cfgs[2] = {
      make_config(""), make_config(std::string(kCpuZero) + ", \"bf16\": {\"enabled\": true}")};
  for (int i = 0; i < 2; ++i) {
    MlpTestModel model;
    auto engine = make_engine(cfgs[i], &model);
    ASSERT_TRUE(engine.ok()) << engine.status();
    EXPECT_EQ((*engine)->compute_dtype(), i == 0 ? DType::kFloat32 : DType::kBFloat16);
    for (int s = 0; s < 20; ++s) {
      auto st = (*engine)->train_step();
      ASSERT_TRUE(st.ok()) << st.status();
      losses[i].push_back(st->loss);
    }
  }
  EXPECT_LT(losses[1].back(), losses[1].front() / 3);
  for (int s = 0; s < 20; ++s) EXPECT_NEAR(losses[1][s], losses[0][s], 0.1 * losses[0][s]);
}

// (b) An inf in one micro-batch's gradient skips the step: master, exp_avg
// and exp_avg_sq stay bit-identical, the Adam step count and the schedule do
// not advance. Hysteresis 2: the first overflow only uses up hysteresis, the
// second halves the scale; a clean step then applies at the halved scale.
TEST_F(TrainingEngineTest, OverflowSkipsStepAndFollowsHysteresis) {
  for (const bool nvme : {false, true}) {
    SCOPED_TRACE(nvme ? "nvme" : "cpu");
    MlpTestModel model;
    const config::DsConfig cfg =
        make_config((nvme ? nvme_zero() : std::string(kCpuZero)) +
                    ", \"fp16\": {\"enabled\": true, \"initial_scale_power\": 10, "
                    "\"hysteresis\": 2}");
    auto created = make_engine(cfg, &model);
    ASSERT_TRUE(created.ok()) << created.status();
    TrainingEngine& e = **created;
    for (int s = 0; s < 3; ++s) ASSERT_TRUE(e.train_step().ok());
    ASSERT_EQ(e.optimizer_steps(), 3);
    const std::vector<float> master = all(e, StateKind::kMaster);
    const std::vector<float> m = all(e, StateKind::kExpAvg);
    const std::vector<float> v = all(e, StateKind::kExpAvgSq);
    const std::vector<float> param = *e.read_param(2, 0);

    model.poison(3 * 2 + 1);  // step 4, second micro-batch
    auto st = e.train_step();
    ASSERT_TRUE(st.ok()) << st.status();
    EXPECT_TRUE(st->skipped);
    EXPECT_TRUE(std::isinf(st->grad_norm));
    EXPECT_EQ(st->loss_scale, 1024);
    EXPECT_EQ(e.loss_scaler()->scale(), 1024);  // hysteresis 2 -> 1, scale kept
    EXPECT_EQ(e.loss_scaler()->hysteresis(), 1);
    EXPECT_EQ(e.optimizer_steps(), 3);
    EXPECT_EQ(all(e, StateKind::kMaster), master);
    EXPECT_EQ(all(e, StateKind::kExpAvg), m);
    EXPECT_EQ(all(e, StateKind::kExpAvgSq), v);
    EXPECT_EQ(*e.read_param(2, 0), param);

    model.poison(4 * 2);  // step 5, first micro-batch
    st = e.train_step();
    ASSERT_TRUE(st.ok()) << st.status();
    EXPECT_TRUE(st->skipped);
    EXPECT_EQ(e.loss_scaler()->scale(), 512);  // hysteresis used up: halved
    EXPECT_EQ(e.loss_scaler()->skipped_steps(), 2);
    EXPECT_EQ(all(e, StateKind::kMaster), master);
    EXPECT_EQ(all(e, StateKind::kExpAvgSq), v);

    st = e.train_step();
    ASSERT_TRUE(st.ok()) << st.status();
    EXPECT_FALSE(st->skipped);
    EXPECT_EQ(st->loss_scale, 512);
    EXPECT_TRUE(std::isfinite(st->grad_norm));
    EXPECT_EQ(e.optimizer_steps(), 4);
    EXPECT_NE(all(e, StateKind::kMaster), master);
  }
}

// The ds_config scheduler drives the lr; a skipped step does not advance it.
TEST_F(TrainingEngineTest, SchedulerFromConfigAdvancesOnAppliedStepsOnly) {
  MlpTestModel model;
  auto created = make_engine(
      make_config(std::string(kCpuZero) + ", " + kFp16 +
                  ", \"scheduler\": {\"type\": \"WarmupLR\", \"params\": {\"warmup_min_lr\": 0, "
                  "\"warmup_max_lr\": 0.01, \"warmup_num_steps\": 10, \"warmup_type\": "
                  "\"linear\"}}"),
      &model, {}, /*constant_lr=*/false);
  ASSERT_TRUE(created.ok()) << created.status();
  std::vector<double> lr;
  std::vector<bool> skipped;
  for (int s = 0; s < 6; ++s) {
    if (s == 2) model.poison(2 * 2);
    auto st = (*created)->train_step();
    ASSERT_TRUE(st.ok()) << st.status();
    lr.push_back(st->lr);
    skipped.push_back(st->skipped);
  }
  ASSERT_EQ(skipped, (std::vector<bool>{false, false, true, false, false, false}));
  EXPECT_EQ(lr[3], lr[2]);  // the skipped step's lr is used by the next one
  // DeepSpeed's WarmupLR: the first step runs at warmup_min_lr, then
  // min + (max - min) * iteration / warmup_num_steps from iteration 0.
  EXPECT_EQ(lr[0], 0.0);
  EXPECT_NEAR(lr[2], 0.001, 1e-12);
  EXPECT_NEAR(lr[4], 0.002, 1e-12);
  EXPECT_NEAR(lr[5], 0.003, 1e-12);
  EXPECT_LE(lr[5], 0.01);
}

// OneCycle cycles Adam's beta1 (and pins beta2 to 0.99) each step, as
// DeepSpeed's runtime/lr_schedules.py sets the optimizer's betas: checked
// through the engine, in every mode, from exp_avg and exp_avg_sq before and
// after each step against the step's gradient. The expected betas follow
// DeepSpeed's formula, written out here: step 1 runs at cycle_min_mom (the
// constructor's value); then with i = last_batch_iteration (0 after step
// 1), inside the cycle x = position in it, scale = x / step_ratio rising,
// (x - 1) / (step_ratio - 1) falling, beta1 = max_mom - (max_mom -
// min_mom) * scale; after it beta1 = max_mom * (1 + decay_mom_rate *
// (i - total + 1) / decay_step_size).
TEST_F(TrainingEngineTest, OneCycleMomentumReachesTheOptimizer) {
  const double min_mom = 0.85, max_mom = 0.95, decay_rate = 0.01, decay_step = 2;
  const double first = 3, second = 2, total = first + second, ratio = first / total;
  auto expected_beta1 = [&](int step) {
    const double i = step - 2;  // DeepSpeed's last_batch_iteration during this step
    if (i < 0) return min_mom;
    if (i < total) {
      const double b = i + 1;
      const double x = 1 + b / total - std::floor(1 + b / total);
      const double scale = x <= ratio ? x / ratio : (x - 1) / (ratio - 1);
      return max_mom - (max_mom - min_mom) * scale;
    }
    return max_mom * (1 + decay_rate * (i - total + 1) / decay_step);
  };
  for (const config::OverlapMode mode :
       {config::OverlapMode::kSync, config::OverlapMode::kOverlap}) {
    for (const bool delayed : {false, true}) {
      if (delayed && mode == config::OverlapMode::kSync) continue;
      SCOPED_TRACE(delayed                              ? "delayed update"
                   : mode == config::OverlapMode::kSync ? "sync"
                                                        : "overlap");
      MlpTestModel model;
      config::DsConfig cfg = make_config(
          std::string(kCpuZero) +
              ", \"scheduler\": {\"type\": \"OneCycle\", \"params\": {\"cycle_min_lr\": 0.001, "
              "\"cycle_max_lr\": 0.01, \"cycle_first_step_size\": 3, \"cycle_second_step_size\": "
              "2, "
              "\"decay_step_size\": 2, \"decay_mom_rate\": 0.01, \"cycle_min_mom\": 0.85, "
              "\"cycle_max_mom\": 0.95}}",
          /*gas=*/1);
      cfg.strata.overlap = mode;
      cfg.strata.delayed_param_update = delayed;
      EngineOptions o;
      o.speculation = EngineOptions::Speculation::kAlways;
      auto created = make_engine(cfg, &model, std::move(o), /*constant_lr=*/false);
      ASSERT_TRUE(created.ok()) << created.status();
      TrainingEngine& e = **created;
      std::vector<float> m = all(e, StateKind::kExpAvg), v = all(e, StateKind::kExpAvgSq);
      for (int step = 1; step <= 8; ++step) {
        SCOPED_TRACE("step " + std::to_string(step));
        auto st = e.train_step();
        ASSERT_TRUE(st.ok()) << st.status();
        ASSERT_FALSE(st->skipped);
        const std::vector<float> g = all(e, StateKind::kGradAccum);  // fp32: unscaled
        const std::vector<float> m2 = all(e, StateKind::kExpAvg), v2 = all(e, StateKind::kExpAvgSq);
        ASSERT_EQ(g.size(), m.size());
        const double b1 = expected_beta1(step), b2 = 0.99;
        int beta1_off = 0, config_betas_fit = 0;
        for (size_t k = 0; k < g.size(); ++k) {
          const double gk = g[k];
          const double em = b1 * m[k] + (1 - b1) * gk;
          const double ev = b2 * v[k] + (1 - b2) * gk * gk;
          const double tol_m = 1e-6 * (std::abs(m[k]) + std::abs(gk)) + 1e-30;
          const double tol_v = 1e-6 * (v[k] + gk * gk) + 1e-30;
          beta1_off += std::abs(m2[k] - em) > tol_m;
          EXPECT_NEAR(v2[k], ev, tol_v) << "element " << k;
          // The optimizer's own betas (0.9, 0.999) would not give this.
          config_betas_fit += std::abs(v2[k] - (0.999 * v[k] + 0.001 * gk * gk)) <= tol_v;
        }
        EXPECT_EQ(beta1_off, 0) << "beta1 " << b1;
        EXPECT_LT(config_betas_fit, static_cast<int>(g.size()) / 10);
        m = m2;
        v = v2;
      }
    }
  }
}

// The gradient of the mean squared error over micro-batches 0..gas-1 of
// `model` taken as one batch, at the initial params, in double: the
// reference for gradient accumulation. Layer by layer, w then b, as all()
// concatenates them.
std::vector<double> big_batch_gradient(MlpTestModel& model, int gas) {
  const std::vector<int>& d = model.dims();
  const int layers = static_cast<int>(d.size()) - 1, n = gas * model.batch();
  std::vector<std::vector<double>> w(layers), b(layers);
  for (int l = 0; l < layers; ++l) {
    for (int p = 0; p < 2; ++p) {
      std::vector<float> init(model.layer_params(l)[p].numel);
      model.init_param(l, p, init.data());
      (p == 0 ? w : b)[l].assign(init.begin(), init.end());
    }
  }
  std::vector<std::vector<double>> x(layers + 1), z(layers);
  std::vector<double> t;
  for (int k = 0; k < gas; ++k) {
    const std::vector<float> in = model.inputs(k), tg = model.targets(k);
    x[0].insert(x[0].end(), in.begin(), in.end());
    t.insert(t.end(), tg.begin(), tg.end());
  }
  for (int l = 0; l < layers; ++l) {
    const int in = d[l], out = d[l + 1];
    z[l].assign(size_t(n) * out, 0.0);
    x[l + 1].assign(size_t(n) * out, 0.0);
    for (int s = 0; s < n; ++s) {
      for (int o = 0; o < out; ++o) {
        double acc = b[l][o];
        for (int i = 0; i < in; ++i) acc += w[l][size_t(o) * in + i] * x[l][size_t(s) * in + i];
        z[l][size_t(s) * out + o] = acc;
        x[l + 1][size_t(s) * out + o] = l == layers - 1 ? acc : std::max(acc, 0.0);
      }
    }
  }
  // loss = mean over all n * outputs of (y - t)^2.
  std::vector<double> dx(x[layers].size());
  for (size_t k = 0; k < dx.size(); ++k) {
    dx[k] = 2.0 * (x[layers][k] - t[k]) / static_cast<double>(dx.size());
  }
  std::vector<std::vector<double>> dw(layers), db(layers);
  for (int l = layers - 1; l >= 0; --l) {
    const int in = d[l], out = d[l + 1];
    std::vector<double> dz = dx;
    if (l != layers - 1) {
      for (size_t k = 0; k < dz.size(); ++k) dz[k] = z[l][k] > 0 ? dz[k] : 0.0;
    }
    dw[l].assign(size_t(out) * in, 0.0);
    db[l].assign(out, 0.0);
    dx.assign(size_t(n) * in, 0.0);
    for (int s = 0; s < n; ++s) {
      for (int o = 0; o < out; ++o) {
        const double g = dz[size_t(s) * out + o];
        db[l][o] += g;
        for (int i = 0; i < in; ++i) {
          dw[l][size_t(o) * in + i] += g * x[l][size_t(s) * in + i];
          dx[size_t(s) * in + i] += g * w[l][size_t(o) * in + i];
        }
      }
    }
  }
  std::vector<double> out;
  for (int l = 0; l < layers; ++l) {
    out.insert(out.end(), dw[l].begin(), dw[l].end());
    out.insert(out.end(), db[l].begin(), db[l].end());
  }
  return out;
}

// Gradient accumulation averages as DeepSpeed does: over gas = 4
// micro-batches the accumulated gradient (grad32 / loss_scale) is the
// gradient of one batch of all 4 x 32 samples, computed independently in
// double; in sync and overlap mode (the worker accumulates), and in fp16
// (params and gradients rounded to fp16, so a looser bound). At gas 3 the
// loss is divided by 4 (the power of two above) and grad32 holds 3/4 of
// that (training_engine.h), while the step and its norm still average.
TEST_F(TrainingEngineTest, GradientAccumulationAveragesLikeOneBigBatch) {
  struct Case {
    const char* name;
    std::string members;
    config::OverlapMode mode;
    double tolerance;  // relative to the largest gradient element
    int gas = 4;
    double grad32_share = 1;  // grad32 / loss_scale / the mean gradient
  };
  const std::vector<Case> cases = {
      {"fp32 sync", kCpuZero, config::OverlapMode::kSync, 1e-5},
      {"fp32 overlap", kCpuZero, config::OverlapMode::kOverlap, 1e-5},
      {"fp16 overlap", std::string(kCpuZero) + ", " + kFp16, config::OverlapMode::kOverlap, 1e-2},
      {"fp32 sync gas 3", kCpuZero, config::OverlapMode::kSync, 1e-5, 3, 0.75},
      {"fp16 overlap gas 3", std::string(kCpuZero) + ", " + kFp16, config::OverlapMode::kOverlap,
       1e-2, 3, 0.75},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    MlpTestModel model;
    config::DsConfig cfg = make_config(c.members, c.gas);
    cfg.strata.overlap = c.mode;
    auto created = make_engine(cfg, &model);
    ASSERT_TRUE(created.ok()) << created.status();
    auto st = (*created)->train_step();
    ASSERT_TRUE(st.ok()) << st.status();
    const std::vector<float> grad32 = all(**created, StateKind::kGradAccum);
    const std::vector<double> ref = big_batch_gradient(model, c.gas);
    ASSERT_EQ(grad32.size(), ref.size());
    double largest = 0, ref_sq = 0;
    for (double g : ref) {
      largest = std::max(largest, std::abs(g));
      ref_sq += g * g;
    }
    for (size_t k = 0; k < ref.size(); ++k) {
      ASSERT_NEAR(grad32[k] / st->loss_scale / c.grad32_share, ref[k], c.tolerance * largest)
          << "element " << k;
    }
    // The norm the step reports is that of the averaged gradient too.
    EXPECT_NEAR(st->grad_norm, std::sqrt(ref_sq), c.tolerance * std::sqrt(ref_sq));
  }
}

// Without a loss scaler an inf gradient is an error, not NaN weights.
TEST_F(TrainingEngineTest, NonFiniteGradientWithoutScalerFailsTheStep) {
  MlpTestModel model;
  auto e = make_engine(make_config(kCpuZero), &model);
  ASSERT_TRUE(e.ok()) << e.status();
  const std::vector<float> master = all(**e, StateKind::kMaster);
  model.poison(0);
  auto st = (*e)->train_step();
  EXPECT_EQ(st.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(std::string(st.status().message()).find("inf or NaN"), std::string::npos);
  EXPECT_EQ(all(**e, StateKind::kMaster), master);
}

// (c) With a static loss scale of 128 and gradient_clipping 0.05, the
// update equals AdamW's first step on g = grad32 / (128 * coef) with
// coef = (norm + 1e-6) / 0.05, computed here in double. At step 1 with bias
// correction and no weight decay that is p - lr * g / (|g| + eps); eps is
// large enough (1e-3) for the update to depend on the clipped magnitude.
TEST_F(TrainingEngineTest, GradientClippingMatchesHandComputedUpdate) {
  MlpTestModel model;
  config::DsConfig cfg = make_config(std::string(kCpuZero) +
                                         ", \"fp16\": {\"enabled\": true, \"loss_scale\": 128}, "
                                         "\"gradient_clipping\": 0.05",
                                     /*gas=*/1);
  cfg.optimizer.eps = 1e-3;
  auto created = make_engine(cfg, &model);
  ASSERT_TRUE(created.ok()) << created.status();
  TrainingEngine& e = **created;
  const std::vector<float> before = all(e, StateKind::kMaster);
  auto st = e.train_step();
  ASSERT_TRUE(st.ok()) << st.status();
  ASSERT_FALSE(st->skipped);
  const std::vector<float> grad = all(e, StateKind::kGradAccum);  // scaled by 128
  const std::vector<float> after = all(e, StateKind::kMaster);
  ASSERT_EQ(grad.size(), before.size());

  double sum_sq = 0;
  for (float g : grad) sum_sq += double(g) * g;
  const double norm = std::sqrt(sum_sq) / 128;
  EXPECT_NEAR(st->grad_norm, norm, 1e-6 * norm);
  const double coef = (norm + 1e-6) / 0.05;
  ASSERT_GT(coef, 2.0) << "the test needs clipping to be active";
  EXPECT_NEAR(st->clip_coef, coef, 1e-6 * coef);  // grad_stats: within 1e-6 relative

  const double lr = 0.01, eps = 1e-3;
  int differs_from_unclipped = 0;
  for (size_t i = 0; i < grad.size(); ++i) {
    const double g = grad[i] / (128 * coef);
    const double expected = before[i] - lr * g / (std::abs(g) + eps);
    ASSERT_NEAR(after[i], expected, 1e-6) << "element " << i;
    const double g_raw = grad[i] / 128.0;
    const double unclipped = before[i] - lr * g_raw / (std::abs(g_raw) + eps);
    differs_from_unclipped += std::abs(unclipped - expected) > 1e-4;
  }
  EXPECT_GT(differs_from_unclipped, static_cast<int>(grad.size()) / 2);
}

// (d) Configs that parse but cannot run fail at creation, saying what to change.
TEST_F(TrainingEngineTest, NvmePathThatIsAFileFailsAtCreation) {
  const std::filesystem::path file = dir_ / "not_a_dir";
  std::ofstream(file) << "x";
  for (const std::filesystem::path& p : {file, file / "sub"}) {
    MlpTestModel model;
    const config::DsConfig cfg = make_config(
        "\"zero_optimization\": {\"stage\": 2, \"offload_optimizer\": {\"device\": \"nvme\", "
        "\"nvme_path\": \"" +
        p.string() + "\"}}, " + kFp16);
    auto e = make_engine(cfg, &model);
    ASSERT_FALSE(e.ok());
    EXPECT_EQ(e.status().code(), absl::StatusCode::kFailedPrecondition) << e.status();
    const std::string msg(e.status().message());
    EXPECT_NE(msg.find("offload_optimizer.nvme_path"), std::string::npos) << msg;
    EXPECT_NE(msg.find(p.string()), std::string::npos) << msg;
    EXPECT_NE(msg.find("writable directory"), std::string::npos) << msg;
  }
}

// An existing directory the process cannot create files in: a read-only
// one, or /proc for root (who ignores permission bits).
TEST_F(TrainingEngineTest, UnwritableNvmeDirFailsAtCreation) {
  std::filesystem::path dir = "/proc";
  if (geteuid() != 0) {
    dir = dir_ / "ro";
    std::filesystem::create_directories(dir);
    ::chmod(dir.c_str(), 0500);
  }
  MlpTestModel model;
  auto e = make_engine(
      make_config("\"zero_optimization\": {\"stage\": 2, \"offload_optimizer\": {\"device\": "
                  "\"nvme\", \"nvme_path\": \"" +
                  dir.string() + "\"}}"),
      &model);
  if (geteuid() != 0) ::chmod(dir.c_str(), 0700);
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), absl::StatusCode::kFailedPrecondition) << e.status();
  const std::string msg(e.status().message());
  EXPECT_NE(msg.find("cannot create files in \"" + dir.string() + "\""), std::string::npos) << msg;
  EXPECT_NE(msg.find("offload_optimizer.nvme_path"), std::string::npos) << msg;
}

TEST_F(TrainingEngineTest, DeviceBudgetTooSmallForOneLayerFailsAtCreation) {
  MlpTestModel model;  // layer 1: 32x32 + 32 params, fp16 param + grad = 4224 bytes
  EngineOptions o;
  o.device_budget_bytes = 4000;
  auto e = make_engine(make_config(std::string(kCpuZero) + ", " + kFp16), &model, std::move(o));
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), absl::StatusCode::kResourceExhausted);
  const std::string msg(e.status().message());
  EXPECT_NE(msg.find("layer 1 needs 4224 bytes"), std::string::npos) << msg;
  EXPECT_NE(msg.find("device budget of 4000"), std::string::npos) << msg;

  // Without offload everything must fit: the error points at offload_optimizer.
  EngineOptions o2;
  o2.device_budget_bytes = 20000;
  auto e2 = make_engine(make_config(kFp16), &model, std::move(o2));
  ASSERT_FALSE(e2.ok());
  EXPECT_NE(std::string(e2.status().message()).find("offload_optimizer.device"), std::string::npos)
      << e2.status();
}

// Without optimizer offload the host optimizer works on device memory,
// which only a host-addressable device allows (Device::host_addressable):
// a SimDevice that moves no data is refused, naming the key.
TEST_F(TrainingEngineTest, OffloadNoneNeedsAHostAddressableDevice) {
  gpu::SimDevice no_data({.move_data = false});
  ASSERT_FALSE(no_data.host_addressable());
  ASSERT_TRUE(device_.host_addressable());
  MlpTestModel model;
  EngineOptions o;
  o.lr_schedule = std::make_unique<ConstantLr>(0.01);
  auto e = TrainingEngine::create(make_config(""), &model, &no_data, std::move(o));
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(std::string(e.status().message()).find("offload_optimizer.device \"none\""),
            std::string::npos)
      << e.status();
  // The same config on the fixture's device (moving data) runs.
  auto ok = make_engine(make_config(""), &model);
  EXPECT_TRUE(ok.ok()) << ok.status();
}

TEST_F(TrainingEngineTest, MissingOptimizerAndMisplacedParamOffloadAreRejected) {
  MlpTestModel model;
  config::DsConfig cfg = make_config(kCpuZero);
  cfg.optimizer.type = config::OptimizerType::kNone;
  auto e = make_engine(cfg, &model);
  ASSERT_FALSE(e.ok());
  EXPECT_NE(std::string(e.status().message()).find("\"optimizer\""), std::string::npos)
      << e.status();

  // offload_param belongs to stage 3.
  cfg = make_config(kCpuZero);
  cfg.zero.offload_param.device = config::OffloadDevice::kCpu;
  e = make_engine(cfg, &model);
  ASSERT_FALSE(e.ok());
  EXPECT_NE(std::string(e.status().message()).find("offload_param needs stage 3"),
            std::string::npos)
      << e.status();
}

// The store's device pool is what the plan puts on the device (every
// layer's fp16 param and grad, in 256-byte blocks), not the device's free
// memory: the device holds the pool and the overflow check's scratch only.
TEST_F(TrainingEngineTest, DevicePoolIsThePlansSize) {
  MlpTestModel model;
  const config::DsConfig cfg =
      make_config(std::string(kCpuZero) + ", \"fp16\": {\"enabled\": true}");
  auto engine = make_engine(cfg, &model);
  ASSERT_TRUE(engine.ok()) << engine.status();
  uint64_t params_and_grads = 0;
  for (int l = 0; l < model.num_layers(); ++l) {
    for (const ParamSpec& p : model.layer_params(l)) {
      params_and_grads += 2 * ((p.numel * 2 + 255) / 256 * 256);
    }
  }
  const Placement& plan = (*engine)->optimizer().placement();
  EXPECT_EQ(plan.device_pool, params_and_grads);
  EXPECT_EQ(device_.stats().used_bytes, plan.device_pool + plan.device_scratch);
  EXPECT_LT(device_.stats().used_bytes, device_.stats().capacity_bytes / 1000);
  // Steps take nothing more from the device.
  for (int s = 0; s < 2; ++s) ASSERT_TRUE((*engine)->train_step().ok());
  EXPECT_EQ(device_.stats().used_bytes, plan.device_pool + plan.device_scratch);
}

// Steady steps make no device-wide synchronisation and no device
// allocation (the store's pool), and the host waits for the device only
// where the schedule must (the stream-ordered store, issue 14 item 3). At
// gradient_accumulation_steps 1: sync mode once per step (once per
// micro-batch: the host accumulates each one) (after the whole backward: its fp16 flags and
// every gradient's copy back), overlap and delayed at most twice per
// gradient bucket (the engine for the bucket's flags, the worker for its
// gradients) and once more for the loss. Before, every transfer and every
// layer ended in a host wait (about five per layer per micro-batch).
TEST_F(TrainingEngineTest, SteadyStepsMakeNoDeviceWideSynchronisation) {
  for (const char* mode : {"sync", "overlap", "delayed"}) {
    for (const int64_t bucket : {int64_t{500'000'000}, int64_t{1}}) {
      SCOPED_TRACE(absl::StrCat(mode, ", reduce_bucket_size ", bucket));
      MlpTestModel model;
      config::DsConfig cfg = make_config(std::string(kCpuZero) + ", \"fp16\": {\"enabled\": true}",
                                         /*gas=*/1);
      cfg.strata.overlap =
          std::string(mode) == "sync" ? config::OverlapMode::kSync : config::OverlapMode::kOverlap;
      cfg.strata.delayed_param_update = std::string(mode) == "delayed";
      cfg.zero.reduce_bucket_size = bucket;
      cfg.zero.reduce_bucket_size_given = true;
      auto engine = make_engine(cfg, &model);
      ASSERT_TRUE(engine.ok()) << engine.status();
      const int64_t buckets = static_cast<int64_t>((*engine)->reduce_buckets().size());
      EXPECT_EQ(buckets, bucket == 1 ? model.num_layers() : 1);
      std::vector<StepStats> steps;
      for (int s = 0; s < 4; ++s) {
        const gpu::SyncCounters before = device_.sync_counters();
        auto st = (*engine)->train_step();
        ASSERT_TRUE(st.ok()) << st.status();
        const gpu::SyncCounters after = device_.sync_counters();
        // StepStats is the device's count around the step.
        EXPECT_EQ(st->host_syncs, static_cast<int64_t>(after.host_syncs - before.host_syncs));
        EXPECT_EQ(st->device_syncs, static_cast<int64_t>(after.device_syncs - before.device_syncs));
        EXPECT_EQ(st->device_allocations,
                  static_cast<int64_t>(after.allocations - before.allocations));
        steps.push_back(*st);
      }
      for (size_t s = 1; s < steps.size(); ++s) {
        SCOPED_TRACE(s);
        EXPECT_EQ(steps[s].device_syncs, 0);
        EXPECT_EQ(steps[s].device_allocations, 0);
        EXPECT_GT(steps[s].host_syncs, 0);
        if (std::string(mode) == "sync") {
          EXPECT_LE(steps[s].host_syncs, 1);
        } else {
          EXPECT_LE(steps[s].host_syncs, 2 * buckets + 1);
        }
      }
    }
  }
}

// Layers are grouped into gradient buckets of reduce_bucket_size elements
// in backward order; a layer larger than the bucket is a bucket of its own.
// Checkpoints stay keyed by layer, so the grouping does not change them.
TEST_F(TrainingEngineTest, GradientBucketsFollowReduceBucketSize) {
  // MlpTestModel's layers hold 544, 1056 and 132 elements.
  struct Case {
    int64_t elements;
    std::vector<std::vector<int>> buckets;
  };
  for (const Case& c :
       {Case{1200, {{2, 1}, {0}}}, Case{1000, {{2}, {1}, {0}}}, Case{500'000'000, {{2, 1, 0}}}}) {
    SCOPED_TRACE(c.elements);
    MlpTestModel model;
    config::DsConfig cfg = make_config(kCpuZero);
    cfg.zero.reduce_bucket_size = c.elements;
    cfg.zero.reduce_bucket_size_given = true;
    cfg.zero.allgather_bucket_size = c.elements;
    auto engine = make_engine(cfg, &model);
    ASSERT_TRUE(engine.ok()) << engine.status();
    EXPECT_EQ((*engine)->reduce_buckets(), c.buckets);
    ASSERT_TRUE((*engine)->train_step().ok());
  }
  // Not set in the config: about eight buckets, here each layer its own
  // (1732 elements / 8), so overlap mode still overlaps.
  {
    MlpTestModel model;
    config::DsConfig cfg = make_config(kCpuZero);
    ASSERT_FALSE(cfg.zero.reduce_bucket_size_given);
    auto engine = make_engine(cfg, &model);
    ASSERT_TRUE(engine.ok()) << engine.status();
    EXPECT_EQ((*engine)->reduce_buckets(), (std::vector<std::vector<int>>{{2}, {1}, {0}}));
  }
  // The same run bucketed two ways trains bit for bit alike.
  std::vector<std::vector<float>> masters;
  for (const int64_t elements : {int64_t{1}, int64_t{500'000'000}}) {
    MlpTestModel model;
    config::DsConfig cfg = make_config(kCpuZero);
    cfg.zero.reduce_bucket_size = elements;
    cfg.zero.reduce_bucket_size_given = true;
    auto engine = make_engine(cfg, &model);
    ASSERT_TRUE(engine.ok()) << engine.status();
    for (int s = 0; s < 3; ++s) ASSERT_TRUE((*engine)->train_step().ok());
    auto m = (*engine)->read_fp32(1, 0, StateKind::kMaster);
    ASSERT_TRUE(m.ok());
    masters.push_back(*m);
  }
  EXPECT_EQ(masters[0], masters[1]);
}

}  // namespace
}  // namespace strata::engine
