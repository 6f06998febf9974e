// OffloadOptimizer as a framework uses it: params whose values and
// gradients live in the test's own host memory (ParamBinding::kHost) or in
// SimDevice memory (kDevice), a quadratic loss whose gradient the test
// computes itself, and a plain AdamW written here as the reference. Checks
// the result against the reference over 20+ steps with two groups (and
// set_group between steps), that sync, overlap, gradient accumulation,
// extra grad_ready calls, NVMe offload, concurrent grad_ready and a
// save/load round trip agree bit for bit, that an external loss scale
// turns an inf gradient into a skipped step, and the misuse errors.
#include "engine/offload_optimizer.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/dtype.h"
#include "core/status.h"
#include "gpu/sim_device.h"
#include "gtest/gtest.h"
#include "tests/test_ds_config.h"

namespace strata::engine {
namespace {

// Sizes: one below a vector width, one mid-size, one above the
// accumulation's 16384-element chunk (several chunks, threads).
constexpr uint64_t kSizes[3] = {37, 1000, 20000};
constexpr int kBuckets[3] = {0, 0, 1};
constexpr int kGroups[3] = {0, 1, 1};

// The framework side: host params and grads of loss =
// sum_i 0.5 * c_k * (w_i - t_i)^2 for micro-batch k, c_k = 1 + 0.25 k.
struct HostModel {
  std::vector<std::vector<float>> w, g, t;
  HostModel() {
    for (int p = 0; p < 3; ++p) {
      w.emplace_back(kSizes[p]);
      g.emplace_back(kSizes[p], 0.0f);
      t.emplace_back(kSizes[p]);
      for (uint64_t i = 0; i < kSizes[p]; ++i) {
        w[p][i] = std::sin(0.37f * static_cast<float>(i + 11 * p)) * 0.8f;
        t[p][i] = std::cos(0.11f * static_cast<float>(i + 7 * p)) * 0.5f;
      }
    }
  }
  void grads(int p, int micro, float scale = 1.0f) {
    const float c = (1.0f + 0.25f * static_cast<float>(micro)) * scale;
    for (uint64_t i = 0; i < kSizes[p]; ++i) g[p][i] = c * (w[p][i] - t[p][i]);
  }
};

// Plain AdamW (torch's formula and operation order, fp32), one param.
struct RefParam {
  std::vector<float> p, m, v, acc;
};
void ref_adamw(RefParam& r, const GroupHyperparams& hp, int64_t step) {
  const double bc1 = 1.0 - std::pow(hp.beta1, static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(hp.beta2, static_cast<double>(step));
  const float decay = static_cast<float>(1.0 - hp.lr * hp.weight_decay);
  const float neg_step = static_cast<float>(-(hp.lr / bc1));
  const float bc2_sqrt = static_cast<float>(std::sqrt(bc2));
  const float b1 = static_cast<float>(1.0 - hp.beta1), b2 = static_cast<float>(hp.beta2);
  const float omb2 = static_cast<float>(1.0 - hp.beta2), eps = static_cast<float>(hp.eps);
  for (size_t i = 0; i < r.p.size(); ++i) {
    const float g = r.acc[i];
    r.p[i] *= decay;
    r.m[i] = r.m[i] + b1 * (g - r.m[i]);
    r.v[i] = r.v[i] * b2 + (omb2 * g) * g;
    const float denom = std::sqrt(r.v[i]) / bc2_sqrt + eps;
    r.p[i] = r.p[i] + (neg_step * r.m[i]) / denom;
  }
}

struct State {
  std::vector<std::vector<float>> master, m, v, param;
  int64_t steps = 0, optimizer_steps = 0;
  bool operator==(const State& o) const {
    return master == o.master && m == o.m && v == o.v && param == o.param && steps == o.steps &&
           optimizer_steps == o.optimizer_steps;
  }
};

class OffloadOptimizerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           ("offload_optimizer_" + std::to_string(getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  config::DsConfig make_config(const std::string& overlap, int gas = 1,
                               const std::string& extra = "", bool nvme = false) {
    const std::string offload =
        nvme ? "{\"device\": \"nvme\", \"nvme_path\": \"" + dir_.string() + "/swap\"}"
             : "{\"device\": \"cpu\"}";
    return strata::testing::parse_test_config(
        "{\"train_micro_batch_size_per_gpu\": 1, \"gradient_accumulation_steps\": " +
        std::to_string(gas) +
        ", \"optimizer\": {\"type\": \"AdamW\", \"params\": {\"lr\": 0.01, \"weight_decay\": "
        "0.1}}, \"zero_optimization\": {\"stage\": 2, \"offload_optimizer\": " +
        offload + "}, \"strata\": {\"overlap\": \"" + overlap +
        "\", \"prefetch_window_bytes\": 4096}" + (extra.empty() ? "" : ", " + extra) + "}");
  }

  static GroupHyperparams group0() { return {.lr = 0.01, .weight_decay = 0.1}; }
  static GroupHyperparams group1() { return {.lr = 0.003, .beta1 = 0.8, .weight_decay = 0.0}; }

  // An optimizer over `model`'s params (kHost, or kDevice on device_ with
  // `dev` buffers the test copies through), initialised to model.w.
  std::unique_ptr<OffloadOptimizer> make(const config::DsConfig& cfg, HostModel& model,
                                         ParamBinding binding = ParamBinding::kHost,
                                         std::vector<void*>* dev = nullptr,
                                         double grad_divisor = 1.0) {
    OffloadOptimizerOptions o;
    o.grad_divisor = grad_divisor;
    o.use_schedule = false;
    o.allow_buffered_io = true;  // TempDir may be tmpfs
    o.speculation = SpeculationPolicy::kAlways;
    o.fuse_gradient_pass = fuse_;
    auto opt = OffloadOptimizer::create(cfg, &device_, std::move(o));
    EXPECT_TRUE(opt.ok()) << opt.status();
    if (!opt.ok()) return nullptr;
    EXPECT_EQ((*opt)->add_group(group0()), 0);
    EXPECT_EQ((*opt)->add_group(group1()), 1);
    for (int p = 0; p < 3; ++p) {
      ParamDesc d{.name = "p" + std::to_string(p),
                  .numel = kSizes[p],
                  .bucket = kBuckets[p],
                  .group = kGroups[p],
                  .binding = binding,
                  .param = model.w[p].data(),
                  .grad = model.g[p].data()};
      if (binding == ParamBinding::kDevice) {
        d.param = (*dev)[2 * p];
        d.grad = (*dev)[2 * p + 1];
      }
      auto h = (*opt)->add_param(d);
      EXPECT_TRUE(h.ok()) << h.status();
      EXPECT_EQ(*h, p);
    }
    EXPECT_TRUE((*opt)->finalize().ok());
    for (int p = 0; p < 3; ++p) EXPECT_TRUE((*opt)->set_value(p, model.w[p].data()).ok());
    return std::move(*opt);
  }

  // One step: `calls` micro-batches (grad_ready per bucket each), the
  // framework waiting for its gradients before the next backward.
  // `grad_factor` multiplies every gradient besides the loss scale.
  static absl::StatusOr<OptimizerStepResult> step(OffloadOptimizer& opt, HostModel& model,
                                                  int calls,
                                                  std::optional<double> scale = std::nullopt,
                                                  float grad_factor = 1.0f) {
    auto s = opt.begin_step(scale);
    if (!s.ok()) return s.status();
    for (int k = 0; k < calls; ++k) {
      if (k > 0) {
        if (auto w = opt.wait_grads(); !w.ok()) return opt.abort_step(w);
      }
      for (int p = 0; p < 3; ++p) model.grads(p, k, static_cast<float>(*s) * grad_factor);
      for (int b = 1; b >= 0; --b) {
        if (auto g = opt.grad_ready(b); !g.ok()) return opt.abort_step(g);
      }
    }
    return opt.finish_step();
  }

  static State state(OffloadOptimizer& opt, HostModel& model) {
    State s;
    for (int p = 0; p < 3; ++p) {
      s.master.push_back(*opt.read_state(p, StateKind::kMaster));
      s.m.push_back(*opt.read_state(p, StateKind::kExpAvg));
      s.v.push_back(*opt.read_state(p, StateKind::kExpAvgSq));
      s.param.push_back(model.w[p]);
      EXPECT_EQ(*opt.read_param(p), model.w[p]) << "the kHost binding holds the store's param";
    }
    s.steps = opt.steps();
    s.optimizer_steps = opt.optimizer_steps();
    return s;
  }

  // `steps` steps of `calls` micro-batches from a fresh model.
  State run(const config::DsConfig& cfg, int steps, int calls) {
    HostModel model;
    auto opt = make(cfg, model);
    for (int i = 0; i < steps; ++i) {
      auto r = step(*opt, model, calls);
      EXPECT_TRUE(r.ok()) << r.status();
    }
    return state(*opt, model);
  }

  std::filesystem::path dir_;
  gpu::SimDevice device_;
  bool fuse_ = true;  // OffloadOptimizerOptions::fuse_gradient_pass of make()
};

TEST_F(OffloadOptimizerTest, MatchesReferenceAdamWWithGroupsAndSetGroup) {
  HostModel model;
  auto opt = make(make_config("sync"), model);
  ASSERT_NE(opt, nullptr);
  std::vector<RefParam> ref(3);
  HostModel ref_model;
  for (int p = 0; p < 3; ++p) {
    ref[p].p = ref_model.w[p];
    ref[p].m.assign(kSizes[p], 0.0f);
    ref[p].v.assign(kSizes[p], 0.0f);
  }
  GroupHyperparams hps[2] = {group0(), group1()};
  for (int s = 1; s <= 24; ++s) {
    if (s == 13) {
      // Between steps: group 1 gets another lr and weight decay.
      hps[1].lr = 0.02;
      hps[1].weight_decay = 0.05;
      ASSERT_TRUE(opt->set_group(1, hps[1]).ok());
    }
    auto r = step(*opt, model, 1);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->step, s);
    EXPECT_FALSE(r->skipped);
    EXPECT_DOUBLE_EQ(r->lr, hps[0].lr);
    for (int p = 0; p < 3; ++p) {
      ref_model.w[p] = ref[p].p;
      ref_model.grads(p, 0);
      ref[p].acc = ref_model.g[p];
      ref_adamw(ref[p], hps[kGroups[p]], s);
    }
  }
  EXPECT_EQ(opt->optimizer_steps(), 24);
  for (int p = 0; p < 3; ++p) {
    auto master = opt->read_state(p, StateKind::kMaster);
    auto m = opt->read_state(p, StateKind::kExpAvg);
    auto v = opt->read_state(p, StateKind::kExpAvgSq);
    ASSERT_TRUE(master.ok() && m.ok() && v.ok());
    for (uint64_t i = 0; i < kSizes[p]; ++i) {
      ASSERT_NEAR((*master)[i], ref[p].p[i], 1e-6 * std::max(1.0f, std::abs(ref[p].p[i])))
          << "param " << p << " [" << i << "]";
      ASSERT_NEAR((*m)[i], ref[p].m[i], 1e-6 * std::max(1e-3f, std::abs(ref[p].m[i])));
      ASSERT_NEAR((*v)[i], ref[p].v[i], 1e-6 * std::max(1e-6f, std::abs(ref[p].v[i])));
      ASSERT_EQ(model.w[p][i], (*master)[i]) << "fp32: the binding holds the master";
    }
  }
  // The new group values took effect: a run that never changed group 1
  // ends elsewhere.
  EXPECT_NE(state(*opt, model), run(make_config("sync"), 24, 1));
}

TEST_F(OffloadOptimizerTest, OverlapEqualsSyncWithClipping) {
  const std::string clip = "\"gradient_clipping\": 0.5";
  const State sync = run(make_config("sync", 1, clip), 20, 1);
  HostModel model;
  auto opt = make(make_config("overlap", 1, clip), model);
  int rolled_back = 0, speculative = 0;
  for (int i = 0; i < 20; ++i) {
    auto r = step(*opt, model, 1);
    ASSERT_TRUE(r.ok()) << r.status();
    rolled_back += r->rolled_back_buckets;
    speculative += r->speculative_buckets;
  }
  EXPECT_GT(speculative, 0);
  EXPECT_GT(rolled_back, 0) << "the clip should have redone speculative steps";
  EXPECT_EQ(state(*opt, model), sync);
}

// finish_step in halves: with its own statistics as the global ones the run
// is finish_step's bit for bit (overlap, clipping: speculative steps rolled
// back and redone in the second half); a larger global norm clips harder;
// between the halves grad_ready, wait_grads and a second finish_step_local
// are refused, abort_step undoes the step; finish_step_global without a first
// half is refused.
TEST_F(OffloadOptimizerTest, FinishInHalvesIsFinishStep) {
  const config::DsConfig cfg = make_config("overlap", 2, "\"gradient_clipping\": 0.5");
  const State whole = run(cfg, 10, 2);
  HostModel model;
  auto opt = make(cfg, model);
  auto halves = [&](double norm_factor) -> absl::StatusOr<OptimizerStepResult> {
    auto s = opt->begin_step();
    if (!s.ok()) return s.status();
    for (int k = 0; k < 2; ++k) {
      if (k > 0) STRATA_RETURN_IF_ERROR(opt->wait_grads());
      for (int p = 0; p < 3; ++p) model.grads(p, k, static_cast<float>(*s));
      for (int b = 1; b >= 0; --b) STRATA_RETURN_IF_ERROR(opt->grad_ready(b));
    }
    STRATA_ASSIGN_OR_RETURN(StepGradStats local, opt->finish_step_local());
    EXPECT_TRUE(absl::IsFailedPrecondition(opt->grad_ready(0)));
    EXPECT_TRUE(absl::IsFailedPrecondition(opt->wait_grads()));
    EXPECT_TRUE(absl::IsFailedPrecondition(opt->finish_step_local().status()));
    local.sum_squares *= norm_factor * norm_factor;
    return opt->finish_step_global(local);
  };
  EXPECT_TRUE(absl::IsFailedPrecondition(opt->finish_step_global({}).status()));
  for (int i = 0; i < 10; ++i) {
    auto r = halves(1.0);
    ASSERT_TRUE(r.ok()) << r.status();
  }
  EXPECT_EQ(state(*opt, model), whole);
  // Ten times the norm: ten times the clip coefficient of the same step.
  HostModel twin_model;
  auto twin = make(cfg, twin_model);
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(step(*twin, twin_model, 2).ok());
  auto same = step(*twin, twin_model, 2);
  auto harder = halves(10.0);
  ASSERT_TRUE(same.ok() && harder.ok());
  EXPECT_NEAR(harder->grad_norm, 10 * same->grad_norm, 1e-9 * harder->grad_norm);
  EXPECT_GT(harder->clip_coef, same->clip_coef);
  // abort_step between the halves undoes the step.
  const State before = state(*opt, model);
  ASSERT_TRUE(opt->begin_step().ok());
  for (int p = 0; p < 3; ++p) model.grads(p, 0, 1.0f);
  for (int b = 1; b >= 0; --b) ASSERT_TRUE(opt->grad_ready(b).ok());
  ASSERT_TRUE(opt->finish_step_local().ok());
  EXPECT_TRUE(absl::IsAborted(opt->abort_step(absl::AbortedError("test"))));
  EXPECT_EQ(state(*opt, model).master, before.master);
  EXPECT_EQ(opt->steps(), before.steps);
}

TEST_F(OffloadOptimizerTest, AccumulationAndExtraCallsEqualSync) {
  // gas 2 with two calls per bucket, overlap (speculative) vs sync.
  EXPECT_EQ(run(make_config("overlap", 2), 20, 2), run(make_config("sync", 2), 20, 2));
  // Three calls where gas is 2 (a torch loop that accumulates more): the
  // speculative step after call 2 is undone and redone after the decision.
  const State sync3 = run(make_config("sync", 2), 20, 3);
  HostModel model;
  auto opt = make(make_config("overlap", 2), model);
  int early = 0;
  for (int i = 0; i < 20; ++i) {
    auto r = step(*opt, model, 3);
    ASSERT_TRUE(r.ok()) << r.status();
    early += r->rolled_back_buckets;
  }
  EXPECT_GT(early, 0);
  EXPECT_EQ(state(*opt, model), sync3);
  // And fewer calls than gas: stepped after the decision, as in sync.
  EXPECT_EQ(run(make_config("overlap", 3), 10, 2), run(make_config("sync", 3), 10, 2));
}

TEST_F(OffloadOptimizerTest, FusedPassEqualsThreePassesAndMovesFewerBytes) {
  const std::string clip = "\"gradient_clipping\": 0.5";
  const uint64_t numel = kSizes[0] + kSizes[1] + kSizes[2];
  // (gas, calls): the plain cases, an extra call (the fused gradient goes
  // into grad32 at wait_grads) and a missing one.
  for (auto [gas, calls] : {std::pair{1, 1}, {2, 2}, {2, 3}, {3, 2}}) {
    for (const char* mode : {"sync", "overlap"}) {
      SCOPED_TRACE(absl::StrCat(mode, " gas ", gas, " calls ", calls));
      fuse_ = false;
      const State three = run(make_config(mode, gas, clip), 8, calls);
      fuse_ = true;
      EXPECT_EQ(run(make_config(mode, gas, clip), 8, calls), three);
    }
  }
  // Bytes per param of one unclipped fp32 AdamW step: master, m, v read and
  // written (24), the param copy (fp32: read + write, 8), the gradient (4)
  // and at gas > 1 the accumulator (4); the speculative step writes its
  // rollback copy in the same pass (12). Three passes read grad32 instead
  // (4, any gas).
  for (bool fuse : {true, false}) {
    for (int gas : {1, 2}) {
      for (const char* mode : {"sync", "overlap"}) {
        SCOPED_TRACE(absl::StrCat(mode, " gas ", gas, fuse ? " fused" : " three passes"));
        fuse_ = fuse;
        HostModel model;
        auto opt = make(make_config(mode, gas), model);
        auto r = step(*opt, model, gas);
        ASSERT_TRUE(r.ok()) << r.status();
        const uint64_t per =
            36 + (fuse && gas > 1 ? 4 : 0) + (std::string(mode) == "overlap" ? 12 : 0);
        EXPECT_EQ(r->optimizer_bytes, per * numel);
        // The step's gradient, whether or not it went through grad32.
        for (int p = 0; p < 3; ++p) {
          auto g = opt->read_state(p, StateKind::kGradAccum);
          ASSERT_TRUE(g.ok()) << g.status();
          std::vector<float> want(kSizes[p], 0.0f);
          HostModel m2;  // the step's gradients were taken at the initial weights
          for (int k = 0; k < gas; ++k) {
            m2.grads(p, k);
            for (uint64_t i = 0; i < kSizes[p]; ++i) want[i] += m2.g[p][i];
          }
          EXPECT_EQ(*g, want) << "param " << p;
        }
      }
    }
  }
}

TEST_F(OffloadOptimizerTest, ConcurrentGradReadyFromThreads) {
  for (const char* mode : {"sync", "overlap"}) {
    const State serial = run(make_config(mode, 2), 8, 2);
    HostModel model;
    auto opt = make(make_config(mode, 2), model);
    for (int s = 0; s < 8; ++s) {
      ASSERT_TRUE(opt->begin_step().ok());
      for (int k = 0; k < 2; ++k) {
        if (k > 0) {
          ASSERT_TRUE(opt->wait_grads().ok());
        }
        for (int p = 0; p < 3; ++p) model.grads(p, k);
        absl::Status st[2];
        std::thread a([&] { st[0] = opt->grad_ready(0); });
        std::thread b([&] { st[1] = opt->grad_ready(1); });
        a.join();
        b.join();
        ASSERT_TRUE(st[0].ok() && st[1].ok()) << st[0] << st[1];
      }
      ASSERT_TRUE(opt->finish_step().ok());
    }
    EXPECT_EQ(state(*opt, model), serial) << mode;
  }
}

// grad_divisor (TrainingEngine's share of 1/gas): gradients 4x as large
// with grad_divisor 4 clip, report their norm and step (speculatively,
// then redone after the clip) exactly as the plain ones, a power of two
// dividing out exactly; a divisor that is not finite and above 0 is refused.
TEST_F(OffloadOptimizerTest, GradDivisorDividesTheAccumulatedGradient) {
  const config::DsConfig cfg = make_config("overlap", 2, "\"gradient_clipping\": 0.5");
  HostModel plain_model, model;
  auto plain = make(cfg, plain_model);
  auto opt = make(cfg, model, ParamBinding::kHost, nullptr, /*grad_divisor=*/4.0);
  ASSERT_NE(plain, nullptr);
  ASSERT_NE(opt, nullptr);
  int clipped = 0;
  for (int i = 0; i < 8; ++i) {
    auto a = step(*plain, plain_model, 2);
    auto b = step(*opt, model, 2, std::nullopt, 4.0f);
    ASSERT_TRUE(a.ok()) << a.status();
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_EQ(b->grad_norm, a->grad_norm) << "step " << i;
    EXPECT_EQ(b->clip_coef, a->clip_coef) << "step " << i;
    if (a->clip_coef > 1) ++clipped;
  }
  EXPECT_GT(clipped, 0);
  EXPECT_EQ(state(*opt, model), state(*plain, plain_model));
  for (double bad : {0.0, -1.0, std::numeric_limits<double>::infinity()}) {
    OffloadOptimizerOptions o;
    o.grad_divisor = bad;
    EXPECT_EQ(OffloadOptimizer::create(cfg, &device_, std::move(o)).status().code(),
              absl::StatusCode::kInvalidArgument)
        << bad;
  }
}

TEST_F(OffloadOptimizerTest, ExternalLossScaleSkipsOnInf) {
  // A power-of-two scale divides out exactly: as an unscaled run.
  const State plain = run(make_config("overlap"), 6, 1);
  HostModel model;
  auto opt = make(make_config("overlap"), model);
  for (int i = 0; i < 6; ++i) {
    auto r = step(*opt, model, 1, 1024.0);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->loss_scale, 1024.0);
    EXPECT_FALSE(r->skipped);
  }
  EXPECT_EQ(state(*opt, model), plain);

  // An inf gradient: skipped, nothing applied, no error.
  const State before = state(*opt, model);
  ASSERT_TRUE(opt->begin_step(1024.0).ok());
  for (int p = 0; p < 3; ++p) model.grads(p, 0, 1024.0f);
  model.g[2][5] = std::numeric_limits<float>::infinity();
  ASSERT_TRUE(opt->grad_ready(1).ok());
  ASSERT_TRUE(opt->grad_ready(0).ok());
  auto r = opt->finish_step();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->skipped);
  EXPECT_TRUE(r->overflow);
  EXPECT_TRUE(std::isinf(r->grad_norm));
  State after = state(*opt, model);
  EXPECT_EQ(after.steps, before.steps + 1);
  after.steps = before.steps;
  EXPECT_EQ(after, before);

  // Without an external scale (and no fp16 scaler) the same gradient fails
  // the step, which then changes nothing.
  ASSERT_TRUE(opt->begin_step().ok());
  ASSERT_TRUE(opt->grad_ready(1).ok());
  ASSERT_TRUE(opt->grad_ready(0).ok());
  auto failed = opt->finish_step();
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kFailedPrecondition) << failed.status();
  State again = state(*opt, model);
  again.steps = before.steps;
  EXPECT_EQ(again, before);
  EXPECT_TRUE(opt->partly_stepped().ok());
  // A scale that is not finite and positive is refused.
  EXPECT_EQ(opt->begin_step(0.0).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(OffloadOptimizerTest, NvmeOffloadEqualsCpuOffload) {
  const State cpu = run(make_config("overlap", 2), 10, 2);
  const State nvme = run(make_config("overlap", 2, "", /*nvme=*/true), 10, 2);
  EXPECT_EQ(nvme, cpu);
  // The swap file is removed with the optimizer.
  for (const auto& e : std::filesystem::directory_iterator(dir_ / "swap")) {
    ADD_FAILURE() << "left behind: " << e.path();
  }
}

TEST_F(OffloadOptimizerTest, SaveLoadContinuesBitForBit) {
  const config::DsConfig cfg = make_config("overlap", 2);
  const State straight = run(cfg, 12, 2);
  const std::string ckpt = (dir_ / "ckpt").string();
  {
    HostModel model;
    auto opt = make(cfg, model);
    for (int i = 0; i < 5; ++i) ASSERT_TRUE(step(*opt, model, 2).ok());
    ASSERT_TRUE(opt->save_state(ckpt, nlohmann::json{{"who", "test"}}).ok());
  }
  HostModel model;  // fresh values: the load must bring the saved ones
  auto opt = make(cfg, model);
  ASSERT_TRUE(opt->load_state(ckpt, /*weights_only=*/false).ok());
  EXPECT_EQ(opt->steps(), 5);
  EXPECT_EQ(opt->optimizer_steps(), 5);
  EXPECT_EQ(opt->micro_batches(), 10);
  for (int i = 0; i < 7; ++i) ASSERT_TRUE(step(*opt, model, 2).ok());
  EXPECT_EQ(state(*opt, model), straight);
}

TEST_F(OffloadOptimizerTest, CheckpointsAreRefusedMidStep) {
  const std::string ckpt = (dir_ / "mid").string();
  HostModel model;
  auto opt = make(make_config("overlap"), model);
  ASSERT_TRUE(opt->begin_step().ok());
  // Mid-step the counters count a step the tensors do not hold yet.
  const absl::Status saved = opt->save_state(ckpt, nlohmann::json{});
  EXPECT_EQ(saved.code(), absl::StatusCode::kFailedPrecondition) << saved;
  EXPECT_NE(saved.message().find("between steps"), absl::string_view::npos) << saved;
  EXPECT_FALSE(std::filesystem::exists(ckpt));
  EXPECT_EQ(opt->save_state_async(ckpt, nlohmann::json{}).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(opt->load_state(ckpt, false).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(opt->abort_step(absl::CancelledError("test")).code() == absl::StatusCode::kCancelled);
  EXPECT_TRUE(opt->save_state(ckpt, nlohmann::json{}).ok());
}

TEST_F(OffloadOptimizerTest, DeviceBindingOnSimDevice) {
  ASSERT_TRUE(device_.host_addressable());
  const config::DsConfig cfg = make_config("overlap", 2);
  const State host = run(cfg, 10, 2);
  HostModel model;
  std::vector<void*> dev;
  for (int p = 0; p < 3; ++p) {
    for (int k = 0; k < 2; ++k) {
      auto a = device_.allocate(kSizes[p] * sizeof(float));
      ASSERT_TRUE(a.ok());
      dev.push_back(*a);
    }
  }
  const size_t pinned_before = device_.registered_bytes();
  {
    auto opt = make(cfg, model, ParamBinding::kDevice, &dev);
    // The gradients leave the device through one pinned buffer the size of
    // the largest (pageable memory would halve the link rate).
    const size_t largest = *std::max_element(std::begin(kSizes), std::end(kSizes)) * sizeof(float);
    EXPECT_EQ(device_.registered_bytes(), pinned_before + largest);
    auto stream = device_.create_stream();
    auto event = device_.create_event();
    ASSERT_TRUE(stream.ok() && event.ok());
    for (int s = 0; s < 10; ++s) {
      ASSERT_TRUE(opt->begin_step().ok());
      for (int k = 0; k < 2; ++k) {
        if (k > 0) {
          ASSERT_TRUE(opt->wait_grads().ok());
        }
        for (int p = 0; p < 3; ++p) {
          // The framework's backward: the gradient from the device param.
          ASSERT_TRUE(
              device_.copy_to_host(model.w[p].data(), dev[2 * p], kSizes[p] * 4, *stream).ok());
          ASSERT_TRUE(device_.synchronize_stream(*stream).ok());
          model.grads(p, k);
          ASSERT_TRUE(
              device_.copy_to_device(dev[2 * p + 1], model.g[p].data(), kSizes[p] * 4, *stream)
                  .ok());
        }
        ASSERT_TRUE(device_.record_event(*event, *stream).ok());
        for (int b = 1; b >= 0; --b) ASSERT_TRUE(opt->grad_ready(b, *event).ok());
      }
      ASSERT_TRUE(opt->finish_step().ok());
      for (int b = 0; b < 2; ++b) {
        auto ready = opt->params_ready(b);
        ASSERT_TRUE(ready.has_value());
        ASSERT_TRUE(device_.synchronize_event(*ready).ok());
      }
    }
    for (int p = 0; p < 3; ++p) {
      ASSERT_TRUE(device_.copy_to_host(model.w[p].data(), dev[2 * p], kSizes[p] * 4, *stream).ok());
    }
    ASSERT_TRUE(device_.synchronize_stream(*stream).ok());
    EXPECT_EQ(state(*opt, model), host);
    device_.destroy_event(*event);
    device_.destroy_stream(*stream);
  }
  EXPECT_EQ(device_.registered_bytes(), pinned_before);
  for (void* p : dev) device_.free(p);
}

// bf16 compute params in framework host memory (torch's bf16 model): the
// binding is the master rounded, and overlap with clipping and gas 2 equals
// sync bit for bit.
TEST_F(OffloadOptimizerTest, Bf16HostParamsFollowTheMaster) {
  struct Run {
    std::vector<std::vector<uint16_t>> w, g;
    std::vector<std::vector<float>> master;
  };
  auto train = [&](const std::string& mode) {
    Run r;
    auto cfg = make_config(mode, 2, "\"bf16\": {\"enabled\": true}, \"gradient_clipping\": 0.3");
    OffloadOptimizerOptions o;
    o.speculation = SpeculationPolicy::kAlways;
    auto opt = OffloadOptimizer::create(cfg, &device_, std::move(o));
    EXPECT_TRUE(opt.ok()) << opt.status();
    if (!opt.ok()) return r;
    EXPECT_EQ((*opt)->compute_dtype(), DType::kBFloat16);
    (*opt)->add_group((*opt)->default_group());
    HostModel model;  // its fp32 values start the params
    for (int p = 0; p < 3; ++p) {
      r.w.emplace_back(kSizes[p]);
      r.g.emplace_back(kSizes[p]);
    }
    for (int p = 0; p < 3; ++p) {
      EXPECT_TRUE((*opt)
                      ->add_param({.name = "p" + std::to_string(p),
                                   .numel = kSizes[p],
                                   .bucket = kBuckets[p],
                                   .binding = ParamBinding::kHost,
                                   .param = r.w[p].data(),
                                   .grad = r.g[p].data()})
                      .ok());
    }
    EXPECT_TRUE((*opt)->finalize().ok());
    for (int p = 0; p < 3; ++p) EXPECT_TRUE((*opt)->set_value(p, model.w[p].data()).ok());
    for (int s = 0; s < 12; ++s) {
      EXPECT_TRUE((*opt)->begin_step().ok());
      for (int k = 0; k < 2; ++k) {
        if (k > 0) {
          EXPECT_TRUE((*opt)->wait_grads().ok());
        }
        for (int p = 0; p < 3; ++p) {
          convert_bf16_to_fp32(r.w[p].data(), model.w[p].data(), kSizes[p]);
          model.grads(p, k);
          convert_fp32_to_bf16(model.g[p].data(), r.g[p].data(), kSizes[p]);
        }
        for (int b = 0; b < 2; ++b) EXPECT_TRUE((*opt)->grad_ready(b).ok());
      }
      auto res = (*opt)->finish_step();
      EXPECT_TRUE(res.ok()) << res.status();
    }
    for (int p = 0; p < 3; ++p) {
      r.master.push_back(*(*opt)->read_state(p, StateKind::kMaster));
      std::vector<uint16_t> rounded(kSizes[p]);
      convert_fp32_to_bf16(r.master[p].data(), rounded.data(), kSizes[p]);
      EXPECT_EQ(rounded, r.w[p]) << "param " << p << ": the binding is the master rounded";
    }
    return r;
  };
  const Run sync = train("sync");
  const Run overlap = train("overlap");
  EXPECT_EQ(overlap.master, sync.master);
  EXPECT_EQ(overlap.w, sync.w);
}

TEST_F(OffloadOptimizerTest, MisuseIsAnError) {
  auto created = OffloadOptimizer::create(make_config("overlap"), &device_, {});
  ASSERT_TRUE(created.ok()) << created.status();
  OffloadOptimizer& opt = **created;
  std::vector<float> w(8), g(8);
  const int group = opt.add_group(opt.default_group());
  ParamDesc d{.name = "w",
              .numel = 8,
              .bucket = 0,
              .group = group,
              .binding = ParamBinding::kHost,
              .param = w.data(),
              .grad = g.data()};
  ASSERT_TRUE(opt.add_param(d).ok());
  EXPECT_EQ(opt.grad_ready(0).code(), absl::StatusCode::kFailedPrecondition)
      << "before finalize and begin_step";
  ParamDesc bad = d;
  EXPECT_EQ(opt.add_param(bad).status().code(), absl::StatusCode::kInvalidArgument)
      << "duplicate name in a bucket";
  bad.name = "zero";
  bad.numel = 0;
  EXPECT_EQ(opt.add_param(bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad = d;
  bad.name = "b";
  bad.bucket = -1;
  EXPECT_EQ(opt.add_param(bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad.bucket = 0;
  bad.group = 7;
  EXPECT_EQ(opt.add_param(bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad.group = group;
  bad.grad = nullptr;
  EXPECT_EQ(opt.add_param(bad).status().code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(opt.finalize().ok());
  d.name = "late";
  EXPECT_EQ(opt.add_param(d).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(opt.grad_ready(0).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(opt.finish_step().status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(opt.read_state(3, StateKind::kMaster).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(opt.set_group(4, {}).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(opt.begin_step().ok());
  EXPECT_EQ(opt.grad_ready(1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(opt.grad_ready(-1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(opt.begin_step().status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(opt.set_group(0, {}).code(), absl::StatusCode::kFailedPrecondition);
  const absl::Status why = absl::InternalError("backward failed");
  EXPECT_EQ(opt.abort_step(why), why);
  EXPECT_EQ(opt.steps(), 0);
}

TEST_F(OffloadOptimizerTest, DelayedUpdateNeedsStoreParams) {
  auto created = OffloadOptimizer::create(
      strata::testing::parse_test_config(
          "{\"train_micro_batch_size_per_gpu\": 1, \"optimizer\": {\"type\": \"AdamW\"}, "
          "\"zero_optimization\": {\"stage\": 2, \"offload_optimizer\": {\"device\": "
          "\"cpu\"}}, \"strata\": {\"delayed_param_update\": true}}"),
      &device_, {});
  ASSERT_TRUE(created.ok()) << created.status();
  std::vector<float> w(8), g(8);
  (*created)->add_group({});
  auto h = (*created)->add_param({.name = "w",
                                  .numel = 8,
                                  .binding = ParamBinding::kHost,
                                  .param = w.data(),
                                  .grad = g.data()});
  EXPECT_EQ(h.status().code(), absl::StatusCode::kInvalidArgument) << h.status();
}

}  // namespace
}  // namespace strata::engine
