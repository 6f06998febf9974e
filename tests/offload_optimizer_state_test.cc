// OffloadOptimizer state restored one tensor at a time (the path torch's
// state_dict / load_state_dict take through the Python package): the
// master, exp_avg and exp_avg_sq written with write_state plus the Adam step
// count set with set_optimizer_steps continue bit for bit like the
// optimizer they were read from; set_optimizer_steps' misuse errors.
#include <cmath>
#include <memory>
#include <vector>

#include "engine/offload_optimizer.h"
#include "gpu/sim_device.h"
#include "gtest/gtest.h"
#include "tests/test_ds_config.h"

namespace strata::engine {
namespace {

constexpr uint64_t kN = 3000;

struct Host {
  std::vector<float> w = std::vector<float>(kN), g = std::vector<float>(kN);
  Host() {
    for (uint64_t i = 0; i < kN; ++i) w[i] = std::sin(0.3f * static_cast<float>(i));
  }
  // The gradient of 0.5 * (w - 0.1)^2.
  void grads() {
    for (uint64_t i = 0; i < kN; ++i) g[i] = w[i] - 0.1f;
  }
};

class OffloadOptimizerStateTest : public ::testing::Test {
 protected:
  std::unique_ptr<OffloadOptimizer> make(Host& h) {
    const config::DsConfig cfg = strata::testing::parse_test_config(
        R"({"train_micro_batch_size_per_gpu": 1,
            "optimizer": {"type": "AdamW", "params": {"lr": 0.01, "weight_decay": 0.1}},
            "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}})");
    OffloadOptimizerOptions o;
    o.use_schedule = false;
    auto opt = OffloadOptimizer::create(cfg, &device_, std::move(o));
    EXPECT_TRUE(opt.ok()) << opt.status();
    (*opt)->add_group({.lr = 0.01, .weight_decay = 0.1});
    auto p = (*opt)->add_param({.name = "w",
                                .numel = kN,
                                .binding = ParamBinding::kHost,
                                .param = h.w.data(),
                                .grad = h.g.data()});
    EXPECT_TRUE(p.ok()) << p.status();
    EXPECT_TRUE((*opt)->finalize().ok());
    EXPECT_TRUE((*opt)->set_value(0, h.w.data()).ok());
    return std::move(*opt);
  }

  static void steps(OffloadOptimizer& opt, Host& h, int n) {
    for (int i = 0; i < n; ++i) {
      ASSERT_TRUE(opt.begin_step(1.0).ok());
      h.grads();
      ASSERT_TRUE(opt.grad_ready(0).ok());
      auto r = opt.finish_step();
      ASSERT_TRUE(r.ok()) << r.status();
    }
  }

  gpu::SimDevice device_;
};

TEST_F(OffloadOptimizerStateTest, WrittenStatesAndStepCountContinueBitForBit) {
  Host a_host;
  auto a = make(a_host);
  steps(*a, a_host, 4);
  ASSERT_EQ(a->optimizer_steps(), 4);

  // A fresh optimizer over other values gets a's state tensor by tensor.
  Host b_host;
  for (float& x : b_host.w) x = -x;
  auto b = make(b_host);
  for (StateKind k : {StateKind::kMaster, StateKind::kExpAvg, StateKind::kExpAvgSq}) {
    auto v = a->read_state(0, k);
    ASSERT_TRUE(v.ok()) << v.status();
    ASSERT_TRUE(b->write_state(0, k, v->data()).ok());
  }
  ASSERT_TRUE(b->set_optimizer_steps(4).ok());
  EXPECT_EQ(b->optimizer_steps(), 4);
  b_host.w = a_host.w;  // the framework loads its weights itself

  steps(*a, a_host, 3);
  steps(*b, b_host, 3);
  EXPECT_EQ(b->optimizer_steps(), 7);
  EXPECT_EQ(b_host.w, a_host.w);
  for (StateKind k : {StateKind::kMaster, StateKind::kExpAvg, StateKind::kExpAvgSq}) {
    EXPECT_EQ(*b->read_state(0, k), *a->read_state(0, k));
  }
}

TEST_F(OffloadOptimizerStateTest, SetOptimizerStepsMisuse) {
  Host h;
  auto opt = make(h);
  EXPECT_EQ(opt->set_optimizer_steps(-1).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(opt->begin_step(1.0).ok());
  const absl::Status in_step = opt->set_optimizer_steps(3);
  EXPECT_EQ(in_step.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(in_step.message().find("between steps"), std::string::npos) << in_step;
  ASSERT_TRUE(opt->abort_step(absl::AbortedError("test")).code() == absl::StatusCode::kAborted);
  EXPECT_TRUE(opt->set_optimizer_steps(3).ok());
  EXPECT_EQ(opt->optimizer_steps(), 3);
}

}  // namespace
}  // namespace strata::engine
