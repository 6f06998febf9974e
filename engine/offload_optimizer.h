// OffloadOptimizer: the seam between a framework that runs forward and
// backward (strata's TrainingEngine, a PyTorch model, a C program) and
// strata, which owns the fp32 master weights, the optimizer states, their
// placement (device, pinned host, NVMe: one TieredStore) and the CPU
// optimizer. Overlap, rollback, loss scaling, clipping and checkpoints have
// this one implementation; TrainingEngine is model layers + this.
//
// Registration (before finalize()): parameters go into buckets, the unit a
// gradient arrives in (the engine: one layer; torch: a few params), and each
// names its hyper-parameter group. A param's compute-dtype value and its
// gradient live where its ParamBinding says:
//   kStore   in the store (param_id / grad_id): the framework acquires them
//            through store() (the engine's layers do);
//   kHost    framework host memory: grad_ready reads the gradient from
//            `grad`, the updated param is written to `param`;
//   kDevice  framework device memory on the optimizer's Device: the
//            gradient is copied out on the optimizer's side stream after
//            `event` (grad_ready), the param copied back on it
//            (params_ready's event says when).
// Every param has the optimizer's compute dtype (fp16, bf16 or fp32, from
// the config's fp16 / bf16 sections).
//
// A step:
//   begin_step(loss_scale)   loss_scale: the framework's (GradScaler), or
//                            nullopt: the config's (fp16 dynamic scaler, 1
//                            otherwise); returns the scale to use.
//   grad_ready(bucket)       once per micro-batch per bucket, any thread, in
//                            any order across buckets (a backward hook). The
//                            gradient leaves the device and is accumulated in
//                            fp32; on the bucket's gradient_accumulation_steps-th
//                            call (overlap mode) it is stepped speculatively.
//                            A bucket reported more often than that is rolled
//                            back and stepped after the decision instead.
//   finish_step()            the norm of the whole gradient (summed in bucket
//                            order, so every mode agrees bit for bit),
//                            overflow, clip coefficient; rolls back, redoes
//                            or steps what remains; writes updated params to
//                            kHost bindings and starts kDevice copies.
//   params_ready(bucket)     the event after which the bucket's kDevice
//                            params hold the update (none for kStore/kHost).
// The grad is divided by loss_scale * clip_coef inside the optimizer pass
// (DeepSpeed's rule); accumulation sums the micro-batches' gradients (the
// framework folds 1/gas into its loss, as DeepSpeed does).
// A failed finish_step (a non-finite gradient with no loss scaler, "loss
// scale already at minimum", I/O) changes nothing: speculative updates are
// restored and the counters (Adam step, schedule, scaler) are what they
// were, except the decided-update I/O case that TrainingEngine documents
// (partly_stepped(): saves and steps refused until load_state).
//
// Threading: registration, begin_step, finish_step, state and save/load from
// one thread; grad_ready from any thread, concurrently with each other.
// Errors: create() rejects configs that cannot run (as TrainingEngine);
// register_* after finalize, unknown ids, a numel of 0 or duplicate names
// are InvalidArgument; grad_ready outside a step is FailedPrecondition.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/config/ds_config.h"
#include "core/dtype.h"
#include "cpu_adam/optimizer.h"
#include "engine/loss_scaler.h"
#include "engine/lr_schedule.h"
#include "engine/speculation.h"
#include "gpu/device.h"
#include "nlohmann/json.hpp"
#include "offload/tiered_store.h"
#include "swap/io_engine.h"

namespace strata::engine {

struct OffloadOptimizerOptions {
  // As EngineOptions (training_engine.h): budgets, the I/O engine, the LR
  // schedule (null: make_lr_schedule(config.scheduler, optimizer.lr); with
  // a schedule every group's lr and, for OneCycle, betas come from it),
  // exec, speculation and the test hook before each decided bucket step.
  uint64_t device_budget_bytes = 0;
  uint64_t host_budget_bytes = 0;
  swap::IoEngine* io = nullptr;
  bool allow_buffered_io = false;
  std::unique_ptr<LrSchedule> lr_schedule;
  bool use_schedule = true;  // false: groups keep their own lr (torch schedulers)
  cpu_adam::ExecOptions exec;
  SpeculationPolicy speculation = SpeculationPolicy::kAuto;
  std::function<absl::Status(int bucket)> before_decided_step;
  // Device bytes the framework's own kStore layers need beside the store
  // (the engine's overflow-check scratch); from plan_placement.
  uint64_t device_scratch_bytes = 0;
};

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
  std::string name;  // unique; checkpoints and errors use it
  uint64_t numel = 0;
  int bucket = 0;  // buckets are numbered from 0 in registration order of first use
  int group = 0;
  ParamBinding binding = ParamBinding::kStore;
  void* param = nullptr;       // kHost / kDevice: numel values of the compute dtype
  const void* grad = nullptr;  // kHost / kDevice: the gradient the framework writes
};

using ParamHandle = int;

// Which fp32 tensor of a parameter read_state / write_state address.
enum class StateKind { kMaster, kExpAvg, kExpAvgSq, kGradAccum };

struct OptimizerStepResult {
  int64_t step = 0;        // 1-based count of finished steps (a skipped one counts)
  double loss_scale = 1;   // the scale the step's gradients carried
  bool skipped = false;    // overflow: nothing applied
  bool overflow = false;   // some gradient was inf or NaN
  double grad_norm = 0;    // global L2, unscaled, before clipping (inf on overflow)
  double clip_coef = 1;    // gradients were divided by this
  double lr = 0;           // group 0's rate applied (or that would have been)
  int speculative_buckets = 0;
  int rolled_back_buckets = 0;
  double grad_seconds = 0;       // host time on gradients (copy-out, accumulate, norm)
  double optimizer_seconds = 0;  // host time in the optimizer (steps, rollbacks)
};

class OffloadOptimizer {
 public:
  // `device` (and options.io) must outlive the optimizer.
  static absl::StatusOr<std::unique_ptr<OffloadOptimizer>> create(const config::DsConfig& config,
                                                                  gpu::Device* device,
                                                                  OffloadOptimizerOptions options);
  ~OffloadOptimizer();
  OffloadOptimizer(const OffloadOptimizer&) = delete;
  OffloadOptimizer& operator=(const OffloadOptimizer&) = delete;

  // Registration. add_group returns the group's index (0, 1, ...).
  int add_group(const GroupHyperparams& hp);
  absl::StatusOr<ParamHandle> add_param(const ParamDesc& desc);
  // Places every tensor (plan_placement over the buckets) and creates the
  // store, its swap files and the step state.
  absl::Status finalize();

  // The fp32 starting value of a param: master = value, states zero, the
  // compute param = value rounded (and written to a kHost / kDevice binding).
  absl::Status set_value(ParamHandle p, const float* value);

  absl::StatusOr<double> begin_step(std::optional<double> loss_scale = std::nullopt);
  absl::Status grad_ready(int bucket, std::optional<gpu::EventId> grad_written = std::nullopt);
  // fp16 overflow seen by the framework on the device (the engine's check):
  // no further gradient is taken this step and finish_step skips it.
  void report_overflow();
  absl::StatusOr<OptimizerStepResult> finish_step();
  // The step in flight is abandoned (the framework's forward or backward
  // failed): speculative updates are restored, counters put back.
  absl::Status abort_step(absl::Status why);
  std::optional<gpu::EventId> params_ready(int bucket) const;

  // Between steps: hyper-parameters (torch re-reads param_groups each step).
  absl::Status set_group(int group, const GroupHyperparams& hp);
  const GroupHyperparams& group(int g) const;

  // State, one param at a time (streamed: NVMe-homed states pass through one
  // host buffer of the tensor's size).
  absl::StatusOr<std::vector<float>> read_state(ParamHandle p, StateKind kind);
  absl::Status write_state(ParamHandle p, StateKind kind, const float* values);
  // The compute-dtype param as fp32, from its home.
  absl::StatusOr<std::vector<float>> read_param(ParamHandle p);

  // Checkpoints in strata's format (checkpoint_format.h); see TrainingEngine.
  absl::Status save_state(const std::string& dir, const nlohmann::json& user_meta);
  absl::Status load_state(const std::string& dir, bool weights_only);

  // What the framework's kStore layers use.
  offload::TieredStore* store();
  offload::TensorId param_id(ParamHandle p) const;
  offload::TensorId grad_id(ParamHandle p) const;
  gpu::StreamId stream() const;

  int num_params() const;
  int num_buckets() const;
  const ParamDesc& param(ParamHandle p) const;
  DType compute_dtype() const;
  int64_t optimizer_steps() const;  // applied steps (the Adam step count)
  int64_t steps() const;            // finished steps, skipped ones included
  const LossScaler* loss_scaler() const;
  const LrSchedule* lr_schedule() const;
  offload::Tier optimizer_tier() const;
  absl::Status partly_stepped() const;

 private:
  OffloadOptimizer() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace strata::engine
