// TrainingEngine over a HostBoundOptimizer (EngineOptions::remote), without
// a daemon: LocalHostBound below is what stratad's session is, an
// OffloadOptimizer whose params are kHost bindings into memory it owns, on a
// host-mode SimDevice of its own. The engine keeps the layers on its device
// and copies params in and gradients out; every step's stats and every
// fp32 tensor are bit-identical to the in-process engine's (fp16 overlap
// with an overflowing micro-batch, fp32 sync with accumulation), and what
// the remote path cannot do is refused at create.
#include <memory>
#include <string>
#include <vector>

#include "engine/step_optimizer.h"
#include "gtest/gtest.h"
#include "tests/engine_test_fixture.h"

namespace strata::engine {
namespace {

class LocalHostBound final : public HostBoundOptimizer {
 public:
  static absl::StatusOr<std::unique_ptr<LocalHostBound>> create(const HostBoundRegistration& reg) {
    auto r = std::unique_ptr<LocalHostBound>(new LocalHostBound);
    r->device_ = std::make_unique<gpu::SimDevice>(gpu::host_mode_options());
    OffloadOptimizerOptions o;
    o.use_schedule = reg.use_schedule;
    o.speculation = reg.speculation;
    o.allow_buffered_io = reg.allow_buffered_io;
    o.lr_schedule = std::make_unique<ConstantLr>(reg.config->optimizer.lr);
    STRATA_ASSIGN_OR_RETURN(r->opt_,
                            OffloadOptimizer::create(*reg.config, r->device_.get(), std::move(o)));
    r->opt_->add_group(reg.group);
    // One block, as stratad's arena: params and grads fp32-sized (room for
    // any compute dtype).
    uint64_t total = 0;
    for (const ParamDesc& d : reg.params) total += 2 * d.numel;
    r->region_.resize(total);
    float* at = r->region_.data();
    for (ParamDesc d : reg.params) {
      EXPECT_EQ(d.binding, ParamBinding::kHost);
      r->params_.push_back(at);
      r->grads_.push_back(at + d.numel);
      at += 2 * d.numel;
      d.param = r->params_.back();
      d.grad = r->grads_.back();
      STRATA_RETURN_IF_ERROR(r->opt_->add_param(d).status());
    }
    STRATA_RETURN_IF_ERROR(r->opt_->finalize());
    return r;
  }

  void* param_memory(ParamHandle p) override { return params_[p]; }
  void* grad_memory(ParamHandle p) override { return grads_[p]; }
  bool needs_values() const override { return true; }
  std::pair<void*, uint64_t> host_region() const override {
    return {const_cast<float*>(region_.data()), region_.size() * sizeof(float)};
  }
  absl::Status set_value(ParamHandle p, const float* v) override { return opt_->set_value(p, v); }
  absl::StatusOr<double> begin_step(std::optional<double> scale) override {
    return opt_->begin_step(scale);
  }
  absl::Status grad_ready(int bucket) override {
    ++grad_readies;
    return opt_->grad_ready(bucket);
  }
  absl::Status wait_grads() override { return opt_->wait_grads(); }
  void report_overflow() override {
    ++overflow_reports;
    opt_->report_overflow();
  }
  bool overflowed() const override { return opt_->overflowed(); }
  void set_backward_seconds(double s) override { opt_->set_backward_seconds(s); }
  absl::StatusOr<OptimizerStepResult> finish_step() override { return opt_->finish_step(); }
  absl::Status abort_step(absl::Status why) override { return opt_->abort_step(why); }
  absl::StatusOr<std::vector<float>> read_state(ParamHandle p, StateKind kind) override {
    return opt_->read_state(p, kind);
  }
  absl::StatusOr<std::vector<float>> read_param(ParamHandle p) override {
    return opt_->read_param(p);
  }
  absl::Status save_state(const std::string& dir, const nlohmann::json& meta) override {
    return opt_->save_state(dir, meta);
  }
  absl::Status save_state_async(const std::string& dir, const nlohmann::json& meta) override {
    return opt_->save_state_async(dir, meta);
  }
  absl::Status wait_for_save() override { return opt_->wait_for_save(); }
  absl::Status load_state(const std::string& dir, bool weights_only) override {
    return opt_->load_state(dir, weights_only);
  }
  const CheckpointLoadStats& last_load_stats() const override { return opt_->last_load_stats(); }
  DType compute_dtype() const override { return opt_->compute_dtype(); }
  int64_t optimizer_steps() const override { return opt_->optimizer_steps(); }
  int64_t steps() const override { return opt_->steps(); }
  int64_t micro_batches() const override { return opt_->micro_batches(); }
  absl::Status partly_stepped() const override { return opt_->partly_stepped(); }

  int grad_readies = 0;
  int overflow_reports = 0;

 private:
  LocalHostBound() = default;
  std::unique_ptr<gpu::SimDevice> device_;
  std::unique_ptr<OffloadOptimizer> opt_;
  std::vector<float> region_;
  std::vector<float*> params_, grads_;  // into region_
};

class TrainingEngineRemoteTest : public TrainingEngineTest {
 protected:
  // An engine whose optimizer is a LocalHostBound (kept in *remote).
  absl::StatusOr<std::unique_ptr<TrainingEngine>> make_remote(const config::DsConfig& cfg,
                                                              MlpTestModel* model,
                                                              LocalHostBound** remote) {
    EngineOptions o;
    o.remote = [remote](const HostBoundRegistration& reg)
        -> absl::StatusOr<std::unique_ptr<HostBoundOptimizer>> {
      STRATA_ASSIGN_OR_RETURN(std::unique_ptr<LocalHostBound> r, LocalHostBound::create(reg));
      *remote = r.get();
      return r;
    };
    return make_engine(cfg, model, std::move(o), /*constant_lr=*/false);
  }
};

TEST_F(TrainingEngineRemoteTest, StepsBitForBitAsInProcess) {
  struct Case {
    bool fp16;
    config::OverlapMode mode;
    int gas;
  };
  for (const Case c :
       {Case{true, config::OverlapMode::kOverlap, 1}, Case{true, config::OverlapMode::kSync, 2},
        Case{false, config::OverlapMode::kSync, 2}}) {
    SCOPED_TRACE(::testing::Message() << "fp16 " << c.fp16 << ", gas " << c.gas);
    config::DsConfig cfg =
        make_config(std::string(kCpuZero) + (c.fp16 ? std::string(", ") + kFp16 : ""), c.gas);
    cfg.strata.overlap = c.mode;
    MlpTestModel model_a, model_b;
    if (c.fp16) {  // micro-batch 2 overflows: that step is skipped
      model_a.poison(2);
      model_b.poison(2);
    }
    auto local = make_engine(cfg, &model_a);
    ASSERT_TRUE(local.ok()) << local.status();
    LocalHostBound* remote = nullptr;
    auto engine = make_remote(cfg, &model_b, &remote);
    ASSERT_TRUE(engine.ok()) << engine.status();
    ASSERT_NE(remote, nullptr);
    EXPECT_TRUE((*engine)->remote());
    // The remote's memory is pinned for the device's copies while the engine lives.
    const auto [base, bytes] = remote->host_region();
    EXPECT_TRUE(device_.registered(base, bytes));
    const bool fp16 = c.fp16;
    for (int s = 0; s < 5; ++s) {
      SCOPED_TRACE(s);
      auto a = (*local)->train_step();
      auto b = (*engine)->train_step();
      ASSERT_EQ(a.ok(), b.ok()) << a.status() << " / " << b.status();
      if (!a.ok()) {
        EXPECT_EQ(a.status().code(), b.status().code());
        continue;
      }
      EXPECT_EQ(a->loss, b->loss);
      EXPECT_EQ(a->loss_scale, b->loss_scale);
      EXPECT_EQ(a->skipped, b->skipped);
      EXPECT_EQ(a->grad_norm, b->grad_norm);
      EXPECT_EQ(a->clip_coef, b->clip_coef);
      EXPECT_EQ(a->lr, b->lr);
      EXPECT_EQ(a->overflow_layer, b->overflow_layer);
    }
    if (fp16) {
      EXPECT_EQ(remote->overflow_reports, 1);
    }
    EXPECT_GT(remote->grad_readies, 0);
    EXPECT_EQ((*engine)->steps(), (*local)->steps());
    EXPECT_EQ((*engine)->optimizer_steps(), (*local)->optimizer_steps());
    for (StateKind kind : {StateKind::kMaster, StateKind::kExpAvg, StateKind::kExpAvgSq}) {
      EXPECT_EQ(all(**engine, kind), all(**local, kind));
    }
    auto ea = (*local)->evaluate(2);
    auto eb = (*engine)->evaluate(2);
    ASSERT_TRUE(ea.ok() && eb.ok());
    EXPECT_EQ(*ea, *eb);
    for (int l = 0; l < 3; ++l)
      EXPECT_EQ(*(*engine)->read_param(l, 0), *(*local)->read_param(l, 0));
    engine->reset();
    EXPECT_FALSE(device_.registered(base, 1));
  }
}

TEST_F(TrainingEngineRemoteTest, RefusesWhatOnlyTheInProcessOptimizerCanDo) {
  MlpTestModel model;
  LocalHostBound* remote = nullptr;
  config::DsConfig cfg = make_config(kCpuZero);
  cfg.strata.overlap = config::OverlapMode::kOverlap;
  cfg.strata.delayed_param_update = true;
  auto delayed = make_remote(cfg, &model, &remote);
  ASSERT_FALSE(delayed.ok());
  EXPECT_EQ(delayed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(delayed.status().message().find("delayed_param_update"), std::string_view::npos)
      << delayed.status();
  EXPECT_EQ(remote, nullptr);  // refused before the remote was built
}

}  // namespace
}  // namespace strata::engine
