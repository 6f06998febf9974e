// TrainingEngine over a HostBoundOptimizer (EngineOptions::remote), without
// a daemon: LocalHostBound below is what stratad's session is, an
// OffloadOptimizer whose params are kHost bindings into memory it owns, on a
// host-mode SimDevice of its own. The engine keeps the layers on its device
// and copies params in and gradients out; every step's stats and every
// fp32 tensor are bit-identical to the in-process engine's (fp16 overlap
// with an overflowing micro-batch, fp32 sync with accumulation), and what
// the remote path cannot do is refused at create.
#include <cmath>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/checkpoint_format.h"
#include "engine/step_optimizer.h"
#include "gtest/gtest.h"
#include "tests/dp_test_util.h"
#include "tests/engine_test_fixture.h"

namespace strata::engine {
namespace {

class LocalHostBound final : public HostBoundOptimizer {
 public:
  // `continue_dir` set: a session that continues (as stratad's does after
  // its client left), its state loaded from that one-rank checkpoint.
  static absl::StatusOr<std::unique_ptr<LocalHostBound>> create(
      const HostBoundRegistration& reg, const std::string& continue_dir = "") {
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
      r->registered_numel += d.numel;
      STRATA_RETURN_IF_ERROR(r->opt_->add_param(d).status());
    }
    STRATA_RETURN_IF_ERROR(r->opt_->finalize());
    if (!continue_dir.empty()) {
      STRATA_RETURN_IF_ERROR(r->opt_->load_state(continue_dir, /*weights_only=*/false));
      r->continued_ = true;
    }
    return r;
  }

  void* param_memory(ParamHandle p) override { return params_[p]; }
  void* grad_memory(ParamHandle p) override { return grads_[p]; }
  bool needs_values() const override { return !continued_; }
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
  absl::StatusOr<StepGradStats> finish_step_local() override { return opt_->finish_step_local(); }
  absl::StatusOr<OptimizerStepResult> finish_step_global(StepGradStats global) override {
    return opt_->finish_step_global(global);
  }
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
  uint64_t registered_numel = 0;  // every param's registered elements

 private:
  LocalHostBound() = default;
  std::unique_ptr<gpu::SimDevice> device_;
  std::unique_ptr<OffloadOptimizer> opt_;
  std::vector<float> region_;
  std::vector<float*> params_, grads_;  // into region_
  bool continued_ = false;
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

// Data parallel through remote optimizers (stratad's sessions of one job,
// a node's ranks sharing the daemon): each rank's remote holds only its
// slice of every param.
class TrainingEngineRemoteDpTest : public TrainingEngineTest {
 protected:
  struct Case {
    int world = 2;
    bool fp16 = false;
    const char* overlap = "sync";
    double tolerance = 1e-5;
    bool discrete = false;  // a device the communicator cannot reach (a GPU beside Gloo)
  };
  struct Result {
    std::vector<double> loss;
    std::vector<bool> skipped;
    std::vector<float> params;
    uint64_t registered = 0, total = 0;  // elements in the remote, in the model
  };
  static constexpr int kMicro = 6;

  // One rank of c's job run on `ranks` ranks (the same global batch), with
  // remotes (LocalHostBound) or in-process; `before` runs after create.
  // `continue_dir` (remote): rank r's session continues from that one-rank
  // checkpoint of its slices.
  absl::Status train_rank(const Case& c, int ranks, dist::Communicator* comm, int r, bool remote,
                          int steps, Result* out,
                          const std::function<absl::Status(TrainingEngine&)>& before = {},
                          const std::string& continue_dir = "") {
    const std::string json =
        absl::StrCat("{\"train_micro_batch_size_per_gpu\": ", kMicro * c.world / ranks,
                     ", \"gradient_accumulation_steps\": 2, \"gradient_clipping\": 1.0, ",
                     "\"optimizer\": {\"type\": \"AdamW\", \"params\": {\"lr\": 0.01}}, ",
                     "\"strata\": {\"overlap\": \"", c.overlap, "\"}, ",
                     "\"zero_optimization\": {\"stage\": 2, \"offload_optimizer\": {\"device\": "
                     "\"cpu\"}}",
                     c.fp16 ? absl::StrCat(", ", kFp16) : "", "}");
    const config::DsConfig cfg = strata::testing::parse_config_at(json, ranks);
    gpu::SimDevice device({.discrete = c.discrete});
    MlpTestModel model({16, 64, 64, 4}, kMicro * c.world / ranks, r, ranks);
    if (c.fp16 && r == 0) model.poison(4, 1);  // step 3 overflows (rank 0 alone)
    LocalHostBound* lb = nullptr;
    EngineOptions o;
    o.comm = comm;
    o.lr_schedule = std::make_unique<ConstantLr>(cfg.optimizer.lr);
    if (remote) {
      o.remote = [&lb, &continue_dir](const HostBoundRegistration& reg)
          -> absl::StatusOr<std::unique_ptr<HostBoundOptimizer>> {
        STRATA_ASSIGN_OR_RETURN(std::unique_ptr<LocalHostBound> made,
                                LocalHostBound::create(reg, continue_dir));
        lb = made.get();
        return made;
      };
    }
    STRATA_ASSIGN_OR_RETURN(auto e, TrainingEngine::create(cfg, &model, &device, std::move(o)));
    if (before) STRATA_RETURN_IF_ERROR(before(*e));
    for (int s = 0; s < steps; ++s) {
      STRATA_ASSIGN_OR_RETURN(StepStats st, e->train_step(), absl::StrCat("step ", s));
      out->loss.push_back(st.loss);
      out->skipped.push_back(st.skipped);
    }
    for (int l = 0; l < 3; ++l) {
      for (int p = 0; p < 2; ++p) {
        STRATA_ASSIGN_OR_RETURN(std::vector<float> v, e->read_param(l, p));
        out->params.insert(out->params.end(), v.begin(), v.end());
        out->total += v.size();
      }
    }
    if (lb != nullptr) out->registered = lb->registered_numel;
    return absl::OkStatus();
  }

  // c.world ranks (threads, Gloo over loopback); each rank's status.
  std::vector<absl::Status> train_ranks(
      const Case& c, int ranks, bool remote, int steps, std::vector<Result>* out,
      const std::function<absl::Status(TrainingEngine&)>& before = {},
      const std::vector<std::string>& continue_dirs = {}) {
    out->assign(ranks, {});
    return strata::testing::run_ranks(ranks, [&](int r, dist::Communicator* comm) {
      return train_rank(c, ranks, comm, r, remote, steps, &(*out)[r], before,
                        continue_dirs.empty() ? "" : continue_dirs[r]);
    });
  }
};

// 2 and 3 ranks train as one rank does on the same global batch, on the
// simulated device (reduced there) and on one modelled discrete (reduced in
// host memory, as beside a GPU). fp32:
// losses and params within 1e-5 relative over 30 steps (2e-7 measured);
// fp16: within the rounding of each rank's gradient to 16 bits and of the
// ranks' mean to 16 bits again in the remote's memory (one rank rounds the
// whole batch's once), 3.6e-3 measured at 2 ranks and 8.5e-3 at 3; a step
// overflowing on one rank only is skipped on every rank.
TEST_F(TrainingEngineRemoteDpTest, RanksHoldTheirSlicesAndTrainAsOneRank) {
  constexpr int kSteps = 30;
  for (const Case c : {Case{2, false, "sync", 1e-5}, Case{3, false, "overlap", 1e-5},
                       Case{2, true, "overlap", 5e-3}, Case{2, false, "sync", 1e-5, true},
                       Case{3, true, "sync", 1e-2, true}}) {
    SCOPED_TRACE(::testing::Message() << c.world << " ranks, fp16 " << c.fp16 << ", " << c.overlap
                                      << (c.discrete ? ", discrete device" : ""));
    Result one;
    absl::Status s1 = train_rank(c, 1, nullptr, 0, /*remote=*/true, kSteps, &one);
    ASSERT_TRUE(s1.ok()) << s1;
    std::vector<Result> many;
    const std::vector<absl::Status> st = train_ranks(c, c.world, /*remote=*/true, kSteps, &many);
    for (int r = 0; r < c.world; ++r) ASSERT_TRUE(st[r].ok()) << "rank " << r << ": " << st[r];
    uint64_t slices = 0;
    for (int r = 0; r < c.world; ++r) {
      // Each rank's remote holds its slice: together, one copy.
      EXPECT_LE(many[r].registered, many[r].total / c.world + 6) << "rank " << r;
      slices += many[r].registered;
      // Every rank holds the same gathered params and skipped the same steps.
      EXPECT_EQ(many[r].params, many[0].params) << "rank " << r;
      EXPECT_EQ(many[r].skipped, many[0].skipped) << "rank " << r;
    }
    EXPECT_EQ(slices, one.total);
    EXPECT_EQ(one.registered, one.total);
    double worst = 0;
    for (int s = 0; s < kSteps; ++s) {
      double mean = 0;
      for (int r = 0; r < c.world; ++r) mean += many[r].loss[s] / c.world;
      worst = std::max(worst, std::fabs(mean - one.loss[s]) / one.loss[s]);
      EXPECT_EQ(many[0].skipped[s], one.skipped[s]) << "step " << s;
    }
    const double params = strata::testing::norm_rel(many[0].params, one.params);
    std::printf("%d ranks, fp16 %d, %s%s: losses %.2g, params %.2g relative\n", c.world, c.fp16,
                c.overlap, c.discrete ? ", discrete" : "", worst, params);
    EXPECT_LE(worst, c.tolerance);
    EXPECT_LE(params, c.tolerance);
    if (c.fp16) EXPECT_TRUE(one.skipped[2]);
    EXPECT_LT(one.loss.back(), one.loss.front());
  }
}

// The ranks' sessions save the data-parallel checkpoint format: 2 ranks
// through remotes resume it (and continue as an uninterrupted run), one
// rank in-process reshards it; 3 ranks through remotes refuse it, saying
// what to do.
TEST_F(TrainingEngineRemoteDpTest, CheckpointOfRanksIsTheShardedFormat) {
  const Case c{.world = 2};
  const std::string ckpt = (dir_ / "ckpt").string();
  std::vector<Result> straight, saved, resumed;
  auto st = train_ranks(c, 2, true, 5, &straight);
  for (const absl::Status& s : st) ASSERT_TRUE(s.ok()) << s;
  st = train_ranks(c, 2, true, 3, &saved);
  for (const absl::Status& s : st) ASSERT_TRUE(s.ok()) << s;
  // The save after 3 steps (then 3 more, unused).
  std::vector<Result> unused;
  st = train_ranks(c, 2, true, 3, &unused, [&](TrainingEngine& e) {
    for (int s = 0; s < 3; ++s) STRATA_RETURN_IF_ERROR(e.train_step().status());
    return e.save_checkpoint(ckpt);
  });
  for (const absl::Status& s : st) ASSERT_TRUE(s.ok()) << s;
  EXPECT_TRUE(is_sharded_checkpoint(ckpt));
  st = train_ranks(c, 2, true, 2, &resumed,
                   [&](TrainingEngine& e) { return e.load_checkpoint(ckpt); });
  for (const absl::Status& s : st) ASSERT_TRUE(s.ok()) << s;
  for (int s = 0; s < 2; ++s) EXPECT_EQ(resumed[0].loss[s], straight[0].loss[3 + s]) << s;
  EXPECT_EQ(resumed[0].params, straight[0].params);
  Result one;
  const absl::Status s1 = train_rank(c, 1, nullptr, 0, /*remote=*/false, 0, &one,
                                     [&](TrainingEngine& e) { return e.load_checkpoint(ckpt); });
  ASSERT_TRUE(s1.ok()) << s1;
  EXPECT_EQ(one.params, saved[0].params);
  std::vector<Result> three;
  st = train_ranks(c, 3, true, 0, &three,
                   [&](TrainingEngine& e) { return e.load_checkpoint(ckpt); });
  for (const absl::Status& s : st) {
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
    EXPECT_NE(s.message().find("saved by 2 ranks"), std::string_view::npos) << s;
  }
}

// Sessions that continue (stratad's after the clients left) go on from
// their step as one run; sessions stopped at different steps (a rank died
// between the halves of a finish) are refused, naming the steps, before
// anything trains.
TEST_F(TrainingEngineRemoteDpTest, ContinuedSessionsGoOnAndMismatchedOnesAreRefused) {
  const Case c{.world = 2};
  const std::string at2 = (dir_ / "at2").string(), at3 = (dir_ / "at3").string();
  std::vector<Result> straight, unused, continued, mixed;
  auto st = train_ranks(c, 2, true, 5, &straight);
  for (const absl::Status& s : st) ASSERT_TRUE(s.ok()) << s;
  st = train_ranks(c, 2, true, 0, &unused, [&](TrainingEngine& e) {
    for (int s = 0; s < 3; ++s) {
      STRATA_RETURN_IF_ERROR(e.train_step().status());
      if (s == 1) STRATA_RETURN_IF_ERROR(e.save_checkpoint(at2));
    }
    return e.save_checkpoint(at3);
  });
  for (const absl::Status& s : st) ASSERT_TRUE(s.ok()) << s;
  st = train_ranks(c, 2, true, 2, &continued, {},
                   {checkpoint_shard_dir(at3, 0), checkpoint_shard_dir(at3, 1)});
  for (const absl::Status& s : st) ASSERT_TRUE(s.ok()) << s;
  for (int s = 0; s < 2; ++s) EXPECT_EQ(continued[0].loss[s], straight[0].loss[3 + s]) << s;
  EXPECT_EQ(continued[1].params, straight[1].params);
  st = train_ranks(c, 2, true, 1, &mixed, {},
                   {checkpoint_shard_dir(at3, 0), checkpoint_shard_dir(at2, 1)});
  for (const absl::Status& s : st) {
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
    EXPECT_NE(s.message().find("different steps (2 to 3"), std::string_view::npos) << s;
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
