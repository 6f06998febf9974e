// LossScaler: fp16 loss scaling with DeepSpeed's exact rules.
//
// Static (loss_scale > 0 in ds_config): the scale never changes and an
// overflow still skips the step. Dynamic (loss_scale == 0): start at
// 2^initial_scale_power; on an overflowing step, if hysteresis is down to 1
// the scale halves (never below min_loss_scale; already at the minimum is an
// error, "Current loss scale already at minimum"), otherwise hysteresis
// drops by one; the step is skipped either way. After every
// loss_scale_window clean iterations since the last overflow the scale
// doubles (and hysteresis refills); with consecutive_hysteresis it refills
// on every clean step instead.
//
// Where strata differs from DeepSpeed: DeepSpeed silently uses 2^32 and
// hysteresis 1 when the fp16 block names none of the scaling keys; strata
// always applies the documented defaults (2^16, window 1000, hysteresis 2).
//
// Not thread-safe: the engine calls it once per optimizer step.
//
//   LossScaler scaler(LossScalerOptions{});
//   float g = 1.0f / scaler.scale();              // unscale factor for the optimizer
//   STRATA_ASSIGN_OR_RETURN(bool apply, scaler.update(found_inf));
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"

namespace strata::engine {

struct LossScalerOptions {
  double static_scale = 0;  // ds_config fp16.loss_scale; 0 selects dynamic scaling
  int initial_scale_power = 16;
  int64_t loss_scale_window = 1000;
  int hysteresis = 2;
  bool consecutive_hysteresis = false;
  double min_loss_scale = 1;
};

class LossScaler {
 public:
  explicit LossScaler(const LossScalerOptions& options);

  double scale() const { return scale_; }
  bool dynamic() const { return dynamic_; }
  int hysteresis() const { return hysteresis_; }
  int64_t iteration() const { return iteration_; }
  int64_t skipped_steps() const { return skipped_; }

  // Records one optimizer step's outcome. Returns true when the step should
  // be applied, false when it must be skipped (overflow). FailedPrecondition
  // when a dynamic scale is already at its minimum and overflows again; the
  // state is then unchanged.
  absl::StatusOr<bool> update(bool overflow);

  // For checkpoints: the whole state, restorable bit for bit.
  struct State {
    double scale;
    int hysteresis;
    int64_t iteration;
    int64_t last_overflow_iteration;
    int64_t skipped;
  };
  State state() const;
  void restore(const State& s);

 private:
  const LossScalerOptions options_;
  const bool dynamic_;
  double scale_;
  int hysteresis_;
  int64_t iteration_ = 0;
  int64_t last_overflow_iteration_ = -1;
  int64_t skipped_ = 0;
};

}  // namespace strata::engine
