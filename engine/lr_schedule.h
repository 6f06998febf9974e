// LrSchedule: the learning rate of each optimizer step, with DeepSpeed's
// schedulers (runtime/lr_schedules.py) and parameter names.
//
// The engine asks lr() before an optimizer step and calls advance() after a
// step that was applied; a step skipped for fp16 overflow does not advance
// the schedule (as in DeepSpeed). DeepSpeed's iteration counter starts at -1
// (the constructor sets the warm-up start lr) and step() is called after
// each applied optimizer step; iteration() mirrors that counter so that
// lr() equals what DeepSpeed's optimizer would use for the same step.
//
// Parameters are DeepSpeed's (same names, defaults and formulas; pinned
// against DeepSpeed 0.19.8 by tests/golden/lr_schedule). Deliberate
// differences: a key the scheduler does not take is an error (DeepSpeed
// raises TypeError too), an unknown warmup_type is an error (DeepSpeed warns
// and uses "log"), per-param-group lists are not accepted (strata has one
// group), last_batch_iteration is not a parameter (use set_iteration), and
// negative lrs, rates and step counts are rejected up front.
// WarmupLR without warmup_max_lr warms up to the optimizer's lr, as
// DeepSpeed does; WarmupDecayLR's default is 0.001. WarmupCosineLR's lr is
// ratio * optimizer lr, and its first step runs at lr 0 (DeepSpeed's ratio
// before the first step() is 0, whatever warmup_min_ratio says).
//
// OneCycle with cycle_momentum (the default) also cycles Adam's beta1 and, as
// DeepSpeed does, sets beta2 to 0.99: betas() returns them for the next step
// (optimizers without betas ignore it). Every other schedule leaves the
// optimizer's betas alone (nullopt).
//
// Not thread-safe; owned by the engine. Usage:
//   STRATA_ASSIGN_OR_RETURN(auto schedule, make_lr_schedule(cfg.scheduler, cfg.optimizer.lr));
//   for each step: run the optimizer at schedule->lr() (and betas() when
//   set); if the step was applied (no fp16 overflow), schedule->advance().
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>

#include "absl/status/statusor.h"
#include "core/config/ds_config.h"

namespace strata::engine {

class LrSchedule {
 public:
  virtual ~LrSchedule() = default;
  virtual double lr() const = 0;                      // for the next optimizer step
  virtual void advance() = 0;                         // after an applied optimizer step
  virtual int64_t iteration() const = 0;              // -1 before the first advance()
  virtual void set_iteration(int64_t iteration) = 0;  // resume from a checkpoint; >= -1
  // Adam (beta1, beta2) for the next step when the schedule sets them.
  virtual std::optional<std::array<double, 2>> betas() const { return std::nullopt; }
};

// The schedule for ds_config's "scheduler" section (kNone: constant
// `optimizer_lr`). InvalidArgument naming "scheduler.params.KEY" for a
// missing, mistyped or out-of-range parameter.
absl::StatusOr<std::unique_ptr<LrSchedule>> make_lr_schedule(const config::SchedulerConfig& config,
                                                             double optimizer_lr);

}  // namespace strata::engine
