// The plain types of the optimizer seam (offload_optimizer.h documents
// them): shared by OffloadOptimizer and the StepOptimizer interface
// (step_optimizer.h) that remote implementations also provide.
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "offload/tiered_store.h"

namespace strata::engine {

// One hyper-parameter group (torch's param_groups): the optimizer kind is
// the config's; the rest may differ per group and change between steps.
struct GroupHyperparams {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  bool bias_correction = true;
};

enum class ParamBinding { kStore, kHost, kDevice };

struct ParamDesc {
  // Unique within its bucket; the store names its tensors
  // "layer<bucket>.<name>.<kind>" and checkpoints record (bucket, index in
  // bucket, name).
  std::string name;
  uint64_t numel = 0;
  int bucket = 0;
  int group = 0;
  ParamBinding binding = ParamBinding::kStore;
  void* param = nullptr;       // kHost / kDevice: numel values of the compute dtype
  const void* grad = nullptr;  // kHost / kDevice: the gradient the framework writes
};

using ParamHandle = int;  // 0, 1, ... in add_param order

// Which fp32 tensor of a parameter read_state / write_state address.
// kGradAccum: the last step's accumulated gradient (its last micro-batch
// added from the framework's gradient, which must still hold it).
enum class StateKind { kMaster, kExpAvg, kExpAvgSq, kGradAccum };

struct OptimizerStepResult {
  int64_t step = 0;       // 1-based count of finished steps (a skipped one counts)
  double loss_scale = 1;  // the scale the step's gradients carried
  bool skipped = false;   // overflow: nothing applied
  bool overflow = false;  // some gradient was inf or NaN
  double grad_norm = 0;   // global L2, unscaled, before clipping (inf on overflow)
  double clip_coef = 1;   // gradients were divided by this
  double lr = 0;          // group 0's rate applied (or that would have been)
  int speculative_buckets = 0;
  int rolled_back_buckets = 0;   // restored after a speculative step
  double grad_seconds = 0;       // host time on gradients (copy-out, accumulate, norm)
  double optimizer_seconds = 0;  // host time in the optimizer (steps, rollbacks)
  // Bytes those optimizer passes moved through host memory (cpu_adam::
  // step_bytes of each step, plus rollback copies): optimizer_bytes /
  // optimizer_seconds is the optimizer's effective bandwidth.
  uint64_t optimizer_bytes = 0;
  // Per tier, moved by the store between begin_step and finish_step.
  std::array<uint64_t, offload::kTierCount> bytes_in{};
  std::array<uint64_t, offload::kTierCount> bytes_out{};
};

// A step's gradient statistics, as finish_step decides on them: the sum of
// squares of the (scaled) gradient and whether any of it was inf or NaN.
struct StepGradStats {
  double sum_squares = 0;
  bool nonfinite = false;
};

struct CheckpointLoadStats {
  uint64_t peak_buffer_bytes = 0;  // the largest host buffer the load held
  uint64_t largest_tensor_bytes = 0;
  uint64_t tensor_file_bytes = 0;
};

}  // namespace strata::engine
