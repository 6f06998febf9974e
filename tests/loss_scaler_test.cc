// DeepSpeed's DynamicLossScaler rules (runtime/fp16/loss_scaler.py), pinned
// case by case.
#include "engine/loss_scaler.h"

#include "gtest/gtest.h"

namespace strata::engine {
namespace {

void clean(LossScaler& s, int n) {
  for (int i = 0; i < n; ++i) ASSERT_TRUE(*s.update(false));
}

TEST(LossScaler, DefaultsAndWindowGrowth) {
  LossScaler s(LossScalerOptions{});
  EXPECT_TRUE(s.dynamic());
  EXPECT_EQ(s.scale(), 65536.0);
  EXPECT_EQ(s.hysteresis(), 2);
  clean(s, 999);
  EXPECT_EQ(s.scale(), 65536.0);
  clean(s, 1);  // (999 - (-1)) % 1000 == 0 on the 1000th clean step
  EXPECT_EQ(s.scale(), 131072.0);
  clean(s, 1000);
  EXPECT_EQ(s.scale(), 262144.0);
}

TEST(LossScaler, HysteresisDelaysTheFirstBackoff) {
  LossScaler s({.loss_scale_window = 4, .hysteresis = 2});
  auto r = s.update(true);
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(*r) << "an overflowing step is skipped";
  EXPECT_EQ(s.scale(), 65536.0) << "first overflow only spends hysteresis";
  EXPECT_EQ(s.hysteresis(), 1);
  EXPECT_FALSE(*s.update(true));
  EXPECT_EQ(s.scale(), 32768.0);
  EXPECT_EQ(s.skipped_steps(), 2);
  // Overflow at iteration 1; doubling when (iter - 1) % 4 == 0: iteration 5.
  clean(s, 3);  // iterations 2, 3, 4
  EXPECT_EQ(s.scale(), 32768.0);
  EXPECT_EQ(s.hysteresis(), 1) << "not refilled before the window";
  clean(s, 1);  // iteration 5
  EXPECT_EQ(s.scale(), 65536.0);
  EXPECT_EQ(s.hysteresis(), 2) << "refilled when the scale grows";
}

TEST(LossScaler, ConsecutiveHysteresisRefillsOnEveryCleanStep) {
  LossScaler with({.loss_scale_window = 1000, .hysteresis = 2, .consecutive_hysteresis = true});
  LossScaler without({.loss_scale_window = 1000, .hysteresis = 2});
  for (LossScaler* s : {&with, &without}) {
    ASSERT_FALSE(*s->update(true));
    ASSERT_TRUE(*s->update(false));
    ASSERT_FALSE(*s->update(true));
  }
  EXPECT_EQ(with.scale(), 65536.0);
  EXPECT_EQ(with.hysteresis(), 1);
  EXPECT_EQ(without.scale(), 32768.0);
}

TEST(LossScaler, MinimumScaleIsAnErrorOnceReached) {
  LossScaler s({.initial_scale_power = 1, .hysteresis = 1, .min_loss_scale = 1});
  EXPECT_EQ(s.scale(), 2.0);
  ASSERT_FALSE(*s.update(true));
  EXPECT_EQ(s.scale(), 1.0);
  const LossScaler::State before = s.state();
  auto r = s.update(true);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("Current loss scale already at minimum"),
            absl::string_view::npos);
  EXPECT_NE(r.status().message().find("bf16"), absl::string_view::npos);
  // The failed update counts nothing: the engine's failed step changes nothing.
  const LossScaler::State after = s.state();
  EXPECT_EQ(after.skipped, before.skipped);
  EXPECT_EQ(after.iteration, before.iteration);
  EXPECT_EQ(after.scale, before.scale);
  EXPECT_EQ(after.hysteresis, before.hysteresis);
  EXPECT_EQ(after.last_overflow_iteration, before.last_overflow_iteration);
}

TEST(LossScaler, BackoffStopsAtTheMinimum) {
  LossScaler s({.initial_scale_power = 2, .hysteresis = 1, .min_loss_scale = 3});
  ASSERT_FALSE(*s.update(true));
  EXPECT_EQ(s.scale(), 3.0) << "max(4 / 2, 3)";
}

TEST(LossScaler, StaticScaleNeverMovesButStillSkips) {
  LossScaler s({.static_scale = 128, .loss_scale_window = 2});
  EXPECT_FALSE(s.dynamic());
  EXPECT_FALSE(*s.update(true));
  clean(s, 10);
  EXPECT_EQ(s.scale(), 128.0);
  EXPECT_EQ(s.skipped_steps(), 1);
}

TEST(LossScaler, StateRoundTrips) {
  LossScaler a({.loss_scale_window = 3});
  ASSERT_FALSE(*a.update(true));
  clean(a, 2);
  LossScaler b({.loss_scale_window = 3});
  b.restore(a.state());
  for (bool overflow : {false, true, true, false, false, false, false}) {
    EXPECT_EQ(*a.update(overflow), *b.update(overflow));
    EXPECT_EQ(a.scale(), b.scale());
    EXPECT_EQ(a.hysteresis(), b.hysteresis());
  }
}

}  // namespace
}  // namespace strata::engine
