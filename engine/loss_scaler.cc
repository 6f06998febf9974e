#include "engine/loss_scaler.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace strata::engine {

LossScaler::LossScaler(const LossScalerOptions& options)
    : options_(options),
      dynamic_(options.static_scale <= 0),
      scale_(dynamic_ ? std::ldexp(1.0, options.initial_scale_power) : options.static_scale),
      hysteresis_(options.hysteresis) {}

absl::StatusOr<bool> LossScaler::update(bool overflow) {
  if (overflow) {
    if (dynamic_) {
      if (options_.hysteresis == 1 || hysteresis_ == 1) {
        if (scale_ == options_.min_loss_scale) {
          return absl::FailedPreconditionError(absl::StrCat(
              "Current loss scale already at minimum (", scale_,
              ") and gradients still overflow; the model diverged in fp16. Lower the learning "
              "rate, check the data, or train in bf16 (\"bf16\": {\"enabled\": true})"));
        }
        scale_ = std::max(scale_ / 2, options_.min_loss_scale);
      } else {
        --hysteresis_;
      }
      last_overflow_iteration_ = iteration_;
    }
    ++skipped_;
    ++iteration_;
    return false;
  }
  if (dynamic_) {
    if (options_.consecutive_hysteresis) hysteresis_ = options_.hysteresis;
    if ((iteration_ - last_overflow_iteration_) % options_.loss_scale_window == 0) {
      if (!options_.consecutive_hysteresis) hysteresis_ = options_.hysteresis;
      scale_ *= 2;
    }
  }
  ++iteration_;
  return true;
}

LossScaler::State LossScaler::state() const {
  return State{scale_, hysteresis_, iteration_, last_overflow_iteration_, skipped_};
}

void LossScaler::restore(const State& s) {
  scale_ = s.scale;
  hysteresis_ = s.hysteresis;
  iteration_ = s.iteration;
  last_overflow_iteration_ = s.last_overflow_iteration;
  skipped_ = s.skipped;
}

}  // namespace strata::engine
