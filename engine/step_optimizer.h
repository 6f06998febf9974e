// StepOptimizer: the optimizer step as TrainingEngine drives it, whoever
// runs it. OffloadOptimizer (offload_optimizer.h) is the in-process one;
// HostBoundOptimizer below is one outside this process (stratad's session,
// daemon/engine_client.h), which the engine reaches through an injected
// factory (EngineOptions::remote, training_engine.h) so engine/ never
// depends on daemon/. Every method means what OffloadOptimizer's of the
// same name documents (begin_step ... finish_step, abort_step, state,
// checkpoints); a handle is the index of the param in registration order,
// a bucket is a layer.
//
// Threading and errors: as OffloadOptimizer's; a remote implementation adds
// its transport's errors (a dead daemon is Unavailable naming it).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "core/config/ds_config.h"
#include "core/dtype.h"
#include "engine/offload_types.h"
#include "engine/speculation.h"
#include "nlohmann/json.hpp"

namespace strata::engine {

class StepOptimizer {
 public:
  virtual ~StepOptimizer() = default;

  virtual absl::Status set_value(ParamHandle p, const float* value) = 0;
  virtual absl::StatusOr<double> begin_step(std::optional<double> loss_scale = std::nullopt) = 0;
  virtual absl::Status grad_ready(int bucket) = 0;
  virtual absl::Status wait_grads() = 0;
  virtual void report_overflow() = 0;
  virtual bool overflowed() const = 0;
  virtual void set_backward_seconds(double seconds) = 0;
  virtual absl::StatusOr<OptimizerStepResult> finish_step() = 0;
  virtual absl::Status abort_step(absl::Status why) = 0;

  virtual absl::StatusOr<std::vector<float>> read_state(ParamHandle p, StateKind kind) = 0;
  virtual absl::StatusOr<std::vector<float>> read_param(ParamHandle p) = 0;
  virtual absl::Status save_state(const std::string& dir, const nlohmann::json& user_meta) = 0;
  virtual absl::Status save_state_async(const std::string& dir,
                                        const nlohmann::json& user_meta) = 0;
  virtual absl::Status wait_for_save() = 0;
  virtual absl::Status load_state(const std::string& dir, bool weights_only) = 0;
  virtual const CheckpointLoadStats& last_load_stats() const = 0;

  virtual DType compute_dtype() const = 0;
  virtual int64_t optimizer_steps() const = 0;
  virtual int64_t steps() const = 0;
  virtual int64_t micro_batches() const = 0;
  virtual absl::Status partly_stepped() const = 0;
};

// An optimizer whose params are bound to host memory it provides (kHost
// bindings on its side: stratad's shared arena). The engine keeps each
// layer's params and gradients on its device and copies them: the params
// from param_memory after every change (set_value, a decided step, a load,
// attaching to a session that has them), the gradients into grad_memory
// (compute dtype, numel values) before grad_ready.
class HostBoundOptimizer : public StepOptimizer {
 public:
  // Valid for the optimizer's life; the values change only inside
  // set_value, finish_step and load_state.
  virtual void* param_memory(ParamHandle p) = 0;
  virtual void* grad_memory(ParamHandle p) = 0;
  // A new session (or one whose params never all got a value): the engine
  // gives every param its initial value. False: the params hold the last
  // completed step's values, which the engine continues from.
  virtual bool needs_values() const = 0;
  // The one mapping every param_memory / grad_memory lies in (stratad's
  // arena), which the engine registers with the device for DMA while it
  // lives; {nullptr, 0}: none (the engine copies from pageable memory).
  virtual std::pair<void*, uint64_t> host_region() const { return {nullptr, 0}; }
  // finish_step in two halves (OffloadOptimizer's of the same names): an
  // engine whose ranks each hold their slices in a HostBoundOptimizer sums
  // the local statistics over the ranks between them.
  virtual absl::StatusOr<StepGradStats> finish_step_local() = 0;
  virtual absl::StatusOr<OptimizerStepResult> finish_step_global(StepGradStats global) = 0;
};

// What the engine registers with a HostBoundOptimizer: one group (the
// config's optimizer, group_hyperparams), one bucket per layer, params in
// the model's order (binding and pointers are the optimizer's business).
struct HostBoundRegistration {
  const config::DsConfig* config = nullptr;
  GroupHyperparams group;
  std::vector<ParamDesc> params;
  bool use_schedule = true;
  SpeculationPolicy speculation = SpeculationPolicy::kAuto;
  bool allow_buffered_io = false;
};
using HostBoundFactory = std::function<absl::StatusOr<std::unique_ptr<HostBoundOptimizer>>(
    const HostBoundRegistration& registration)>;

}  // namespace strata::engine
