// A failed TrainingEngine::train_step changes nothing: with faults injected
// (forward or backward returning an error, an inf or NaN gradient with no
// loss scaler, an overflow at the minimum loss scale, an optimizer that
// refuses the step), in sync, overlap (every layer stepped speculatively)
// and delayed-update mode, the bytes of every master, exp_avg, exp_avg_sq
// and compute param, the Adam step, the schedule, the loss scaler and the
// step counters are what they were; a retry then gives what a run without
// the fault gives, bit for bit. grad and grad32 are the step's scratch and
// are not compared. A delayed update that fails is settled: nothing it did
// not write is swapped in, and nothing stays pending.
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "engine/training_engine.h"
#include "gtest/gtest.h"
#include "tests/engine_test_fixture.h"

namespace strata::engine {
namespace {

// A learning rate that changes every iteration (so a schedule that moved is
// seen), NaN at iteration *nan_at: cpu_adam refuses the step.
class FaultyLr final : public LrSchedule {
 public:
  explicit FaultyLr(const int64_t* nan_at) : nan_at_(nan_at) {}
  double lr() const override {
    if (iteration_ == *nan_at_) return std::numeric_limits<double>::quiet_NaN();
    return 0.01 / (1.0 + 0.25 * static_cast<double>(iteration_ + 1));
  }
  void advance() override { ++iteration_; }
  int64_t iteration() const override { return iteration_; }
  void set_iteration(int64_t iteration) override { iteration_ = iteration; }

 private:
  const int64_t* nan_at_;
  int64_t iteration_ = -1;
};

struct Snapshot {
  std::vector<uint8_t> bytes;  // every master, exp_avg, exp_avg_sq and param, concatenated
  int64_t steps = 0;
  int64_t optimizer_steps = 0;
  int64_t schedule_iteration = 0;
  std::vector<double> scaler;  // scale, hysteresis, iteration, last overflow, skipped
};

void append(std::vector<uint8_t>* out, const std::vector<float>& v) {
  const size_t at = out->size();
  out->resize(at + v.size() * sizeof(float));
  std::memcpy(out->data() + at, v.data(), v.size() * sizeof(float));
}

Snapshot snapshot(TrainingEngine& e) {
  Snapshot s;
  for (int l = 0; l < 3; ++l) {
    for (int p = 0; p < 2; ++p) {
      for (StateKind k : {StateKind::kMaster, StateKind::kExpAvg, StateKind::kExpAvgSq}) {
        auto v = e.read_fp32(l, p, k);
        EXPECT_TRUE(v.ok()) << v.status();
        if (v.ok()) append(&s.bytes, *v);
      }
      // fp16 / bf16 -> fp32 is exact and one to one, so the bytes compare.
      auto v = e.read_param(l, p);
      EXPECT_TRUE(v.ok()) << v.status();
      if (v.ok()) append(&s.bytes, *v);
    }
  }
  s.steps = e.steps();
  s.optimizer_steps = e.optimizer_steps();
  s.schedule_iteration = e.lr_schedule().iteration();
  if (const LossScaler* ls = e.loss_scaler()) {
    const LossScaler::State st = ls->state();
    s.scaler = {st.scale, double(st.hysteresis), double(st.iteration),
                double(st.last_overflow_iteration), double(st.skipped)};
  }
  return s;
}

void expect_same(const Snapshot& a, const Snapshot& b) {
  EXPECT_TRUE(a.bytes == b.bytes) << "tensor bytes differ";
  EXPECT_EQ(a.steps, b.steps);
  EXPECT_EQ(a.optimizer_steps, b.optimizer_steps);
  EXPECT_EQ(a.schedule_iteration, b.schedule_iteration);
  EXPECT_EQ(a.scaler, b.scaler);
}

enum class Fault { kForward, kBackward, kNonFinite, kMinLossScale, kOptimizerRefuses };

struct FaultCase {
  const char* name;
  Fault fault;
  std::string precision;  // ds_config members
};

class EngineFailedStepTest : public TrainingEngineTest {
 protected:
  enum class Mode { kSync, kOverlap, kDelayed };

  config::DsConfig config_for(Mode mode, const std::string& precision) {
    config::DsConfig cfg = make_config(std::string(kCpuZero) + precision);
    cfg.strata.overlap =
        mode == Mode::kSync ? config::OverlapMode::kSync : config::OverlapMode::kOverlap;
    cfg.strata.delayed_param_update = mode == Mode::kDelayed;
    return cfg;
  }

  absl::StatusOr<std::unique_ptr<TrainingEngine>> engine(const config::DsConfig& cfg,
                                                         MlpTestModel* model,
                                                         const int64_t* nan_at) {
    EngineOptions o;
    o.speculation = EngineOptions::Speculation::kAlways;
    o.lr_schedule = std::make_unique<FaultyLr>(nan_at);
    return make_engine(cfg, model, std::move(o), /*constant_lr=*/false);
  }
};

// Two clean steps, a third with the fault (the last micro-batch, where
// overlap mode steps layers 2 and 1 while layer 0's backward is held back),
// then the third again without it.
TEST_F(EngineFailedStepTest, FailedStepChangesNothingInEveryMode) {
  const std::string fp16_at_min =
      ", \"fp16\": {\"enabled\": true, \"initial_scale_power\": 4, \"min_loss_scale\": 16, "
      "\"hysteresis\": 1}";
  const std::vector<FaultCase> cases = {
      {"forward error", Fault::kForward, std::string(", ") + kFp16},
      {"backward error", Fault::kBackward, std::string(", ") + kFp16},
      {"bf16 NaN gradient", Fault::kNonFinite, ", \"bf16\": {\"enabled\": true}"},
      {"fp32 inf gradient", Fault::kNonFinite, ""},
      {"loss scale already at minimum", Fault::kMinLossScale, fp16_at_min},
      {"optimizer refuses (NaN lr)", Fault::kOptimizerRefuses, ", \"bf16\": {\"enabled\": true}"},
  };
  for (const Mode mode : {Mode::kSync, Mode::kOverlap, Mode::kDelayed}) {
    for (const FaultCase& c : cases) {
      // A delayed update runs in the next step; that failure is tested below.
      if (mode == Mode::kDelayed && c.fault == Fault::kOptimizerRefuses) continue;
      SCOPED_TRACE(std::string(c.name) + (mode == Mode::kSync      ? ", sync"
                                          : mode == Mode::kOverlap ? ", overlap"
                                                                   : ", delayed update"));
      const config::DsConfig cfg = config_for(mode, c.precision);
      int64_t nan_at = -100;
      MlpTestModel model;
      auto created = engine(cfg, &model, &nan_at);
      ASSERT_TRUE(created.ok()) << created.status();
      TrainingEngine& e = **created;
      for (int s = 0; s < 2; ++s) ASSERT_TRUE(e.train_step().ok());
      const Snapshot before = snapshot(e);

      const int64_t last = 2 * 2 + 1;  // step 3, second micro-batch
      model.delay_backward(last, 0, 150);
      switch (c.fault) {
        case Fault::kForward:
          model.fail_forward(last, 1);
          break;
        case Fault::kBackward:
          model.fail_backward(last, 0);
          break;
        case Fault::kNonFinite:
          model.poison(last, 0, std::numeric_limits<float>::quiet_NaN());
          break;
        case Fault::kMinLossScale:
          model.poison(last, 0);
          break;
        case Fault::kOptimizerRefuses:
          nan_at = 1;  // the third step's lr
          break;
      }
      auto failed = e.train_step();
      ASSERT_FALSE(failed.ok());
      if (c.fault == Fault::kMinLossScale) {
        EXPECT_NE(failed.status().message().find("already at minimum"), std::string::npos)
            << failed.status();
      }
      expect_same(snapshot(e), before);

      model.clear_faults();
      nan_at = -100;
      auto retried = e.train_step();
      ASSERT_TRUE(retried.ok()) << retried.status();
      const Snapshot after = snapshot(e);

      // The same run without the fault (reading at the same points, which
      // finishes a delayed update there too).
      MlpTestModel clean_model;
      auto clean = engine(cfg, &clean_model, &nan_at);
      ASSERT_TRUE(clean.ok()) << clean.status();
      for (int s = 0; s < 2; ++s) ASSERT_TRUE((*clean)->train_step().ok());
      expect_same(snapshot(**clean), before);
      auto st = (*clean)->train_step();
      ASSERT_TRUE(st.ok()) << st.status();
      EXPECT_EQ(st->loss, retried->loss);
      expect_same(snapshot(**clean), after);
    }
  }
}

// The decided optimizer pass fails at layer 1 (as an I/O error there would).
// In sync mode layer 0 is already stepped with no copy to undo it: the step
// says so, and the engine refuses to step or save until a checkpoint is
// loaded; after the load it continues as a clean run. In overlap mode with
// clipping on every step, every redone layer has its copies: the failure
// changes nothing and the retry equals the clean run.
TEST_F(EngineFailedStepTest, FailureInTheDecidedPassIsUndoneOrRefusesToGoOn) {
  for (const Mode mode : {Mode::kSync, Mode::kOverlap}) {
    SCOPED_TRACE(mode == Mode::kSync ? "sync" : "overlap");
    config::DsConfig cfg = config_for(mode, std::string(", ") + kFp16);
    cfg.gradient_clipping = 1e-6;  // every step clips: overlap redoes every layer
    bool fail = false;
    auto engine_with_fault = [&](MlpTestModel* model) {
      EngineOptions o;
      o.speculation = EngineOptions::Speculation::kAlways;
      o.before_decided_step = [&fail](int layer) {
        return fail && layer == 1 ? absl::DataLossError("injected read error") : absl::OkStatus();
      };
      return make_engine(cfg, model, std::move(o));
    };
    MlpTestModel model;
    auto created = engine_with_fault(&model);
    ASSERT_TRUE(created.ok()) << created.status();
    TrainingEngine& e = **created;
    for (int s = 0; s < 2; ++s) ASSERT_TRUE(e.train_step().ok());
    const std::string ckpt = (dir_ / ("ckpt_" + std::to_string(int(mode)))).string();
    ASSERT_TRUE(e.save_checkpoint(ckpt).ok());
    const Snapshot before = snapshot(e);

    fail = true;
    auto failed = e.train_step();
    ASSERT_FALSE(failed.ok());
    EXPECT_NE(failed.status().message().find("injected read error"), std::string::npos);
    fail = false;
    if (mode == Mode::kSync) {
      // One sentence: the failure first, then what it left behind (never
      // "...: and 1 param(s) ..." when there is no clause before it).
      // Layer 0 (its two params) was stepped before layer 1 failed.
      EXPECT_EQ(failed.status().message(),
                "step 3: injected read error; 2 param(s) were already updated with no copy to "
                "undo them: load the last checkpoint to continue");
      auto refused = e.train_step();
      ASSERT_FALSE(refused.ok());
      EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
      EXPECT_NE(refused.status().message().find("load the last checkpoint"), std::string::npos)
          << refused.status();
      EXPECT_EQ(e.save_checkpoint(dir_ / "half").code(), absl::StatusCode::kFailedPrecondition);
      EXPECT_FALSE(std::filesystem::exists(dir_ / "half"));
      ASSERT_TRUE(e.load_checkpoint(ckpt).ok());
    }
    expect_same(snapshot(e), before);
    auto retried = e.train_step();
    ASSERT_TRUE(retried.ok()) << retried.status();

    MlpTestModel clean_model;
    auto clean = engine_with_fault(&clean_model);
    ASSERT_TRUE(clean.ok()) << clean.status();
    for (int s = 0; s < 3; ++s) ASSERT_TRUE((*clean)->train_step().ok());
    expect_same(snapshot(**clean), snapshot(e));
  }
}

// A step that fails while the previous step's delayed update is pending
// (queued, running beside its forward) lets that update finish and keeps it
// pending: reading afterwards shows exactly what a clean run shows after
// step 2, and the retry computes what the clean run's step 3 does.
TEST_F(EngineFailedStepTest, FailedStepKeepsThePendingDelayedUpdate) {
  const config::DsConfig cfg = config_for(Mode::kDelayed, std::string(", ") + kFp16);
  int64_t nan_at = -100;
  MlpTestModel model, clean_model;
  auto faulty = engine(cfg, &model, &nan_at);
  auto clean = engine(cfg, &clean_model, &nan_at);
  ASSERT_TRUE(faulty.ok() && clean.ok());
  for (int s = 0; s < 2; ++s) {
    ASSERT_TRUE((*faulty)->train_step().ok());
    ASSERT_TRUE((*clean)->train_step().ok());
  }
  model.fail_backward(2 * 2 + 1, 1);  // no read before: step 2's update is pending
  ASSERT_FALSE((*faulty)->train_step().ok());
  expect_same(snapshot(**faulty), snapshot(**clean));
  model.clear_faults();
  auto a = (*faulty)->train_step();
  auto b = (*clean)->train_step();
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->loss, b->loss);
  expect_same(snapshot(**faulty), snapshot(**clean));
}

// The delayed update of step 1 fails (the optimizer refuses its NaN lr)
// while step 2 runs: step 2 fails naming it; param_next, never written, is
// not swapped in, so every param keeps its initial value, and nothing stays
// pending. Training then goes on.
TEST_F(EngineFailedStepTest, FailedDelayedUpdateSwapsInNothingItDidNotWrite) {
  int64_t nan_at = -1;  // step 1's lr
  MlpTestModel model;
  auto created = engine(config_for(Mode::kDelayed, std::string(", ") + kFp16), &model, &nan_at);
  ASSERT_TRUE(created.ok()) << created.status();
  TrainingEngine& e = **created;
  const Snapshot initial = snapshot(e);
  ASSERT_TRUE(e.train_step().ok());  // queues the update; it fails beside step 2
  nan_at = -100;
  auto failed = e.train_step();
  ASSERT_FALSE(failed.ok());
  EXPECT_NE(failed.status().message().find("the delayed update of step 1"), std::string::npos)
      << failed.status();
  EXPECT_NE(failed.status().message().find("lr must be finite"), std::string::npos)
      << failed.status();
  const Snapshot now = snapshot(e);
  EXPECT_TRUE(now.bytes == initial.bytes) << "a param_next the update never wrote went in";
  EXPECT_EQ(now.steps, 1);
  expect_same(snapshot(e), now);  // nothing was left pending to go in later

  auto st = e.train_step();
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->step, 2);
  const Snapshot trained = snapshot(e);
  EXPECT_FALSE(trained.bytes == initial.bytes);
}

}  // namespace
}  // namespace strata::engine
