// OffloadOptimizer: the seam between a framework that runs forward and
// backward (strata's TrainingEngine, a PyTorch model, a C program) and
// strata, which owns the fp32 master weights, the optimizer states, their
// placement (device, pinned host, NVMe: one TieredStore) and the CPU
// optimizer. Overlap, rollback, loss scaling, clipping and checkpoints have
// this one implementation; TrainingEngine is model layers + this.
//
// Registration (before finalize()): parameters go into buckets, the unit a
// gradient arrives in (the engine: one layer; torch: a few params), and each
// names its hyper-parameter group. Buckets are numbered 0..num_buckets()-1
// (the largest bucket a param names, plus one; a bucket may be empty). A
// param's compute-dtype value and its gradient live where its ParamBinding
// says:
//   kStore   in the store (param_id / grad_id): the framework acquires them
//            through store() on the device (the engine's layers do);
//   kHost    framework host memory: grad_ready reads the gradient from
//            `grad` (no staging copy), the updated param is written to
//            `param` once the step is decided;
//   kDevice  framework device memory on the optimizer's Device: the
//            gradient is copied out on the optimizer's stream after the
//            event given to grad_ready, the updated param copied back on it
//            once the step is decided (params_ready's event says when).
// kHost / kDevice params keep a compute-dtype copy in the store (on the
// optimizer's tier) beside grad32, master, exp_avg and exp_avg_sq.
// Every param has the optimizer's compute dtype (fp16, bf16 or fp32, from
// the config's fp16 / bf16 sections).
//
// A step:
//   begin_step(loss_scale)   loss_scale: the framework's (GradScaler; only
//                            without the config's fp16 scaler), or nullopt:
//                            the config's (fp16 dynamic scaler, 1
//                            otherwise); returns the scale in use.
//   grad_ready(bucket)       once per micro-batch per bucket, any thread, in
//                            any order across buckets (a backward hook). The
//                            gradient is accumulated in fp32 (the first call
//                            of a step overwrites); on the bucket's
//                            gradient_accumulation_steps-th call (overlap
//                            mode) the bucket is stepped speculatively. A
//                            bucket reported more often than that is rolled
//                            back and stepped after the decision instead; one
//                            reported less often is stepped after the
//                            decision; one never reported in the step is not
//                            stepped (torch skips params without a grad).
//   wait_grads()             every gradient handed over so far has been
//                            read: the framework may overwrite its gradient
//                            buffers (the engine: before each micro-batch's
//                            backward but the first).
//   finish_step()            the norm of the whole gradient (summed in bucket
//                            order, so every mode agrees bit for bit),
//                            overflow, clip coefficient; rolls back, redoes
//                            or steps what remains; writes updated params to
//                            kHost bindings and starts kDevice copies.
//   params_ready(bucket)     the event after which the bucket's kDevice
//                            params hold the update (none for kStore/kHost,
//                            or when the bucket has no kDevice param).
// The grad is divided by loss_scale * clip_coef inside the optimizer pass
// (DeepSpeed's rule); accumulation sums the micro-batches' gradients (the
// framework folds 1/gas into its loss, as DeepSpeed does).
// In sync mode (strata.overlap "sync", no delayed update) grad_ready does its
// work on the calling thread before it returns; otherwise it queues it on
// the optimizer's worker. In every mode a gradient handed to grad_ready must
// stay unchanged until wait_grads() or finish_step() returns: the bucket's
// gradient_accumulation_steps-th gradient (kStore: the store's grad tensor,
// kHost: `grad`) is not copied into grad32 but read where it lies by one
// fused pass (cpu_adam::optimizer_step_with_stats: accumulation, norm/inf
// statistics and, speculating, the step), and read again by finish_step
// (the step in sync mode, a redo after a rollback); wait_grads() first adds
// such a gradient into grad32. kDevice buckets (the gradient is copied out
// through one staging buffer) and the delayed update (it steps while the
// next backward rewrites the gradients) accumulate into grad32 as before.
// Passes over host memory per step (Adam, fp16, B/param): overlap,
// speculating, gas 1: one of 28 + 12 (the rollback copy, written in the
// same pass); sync gas 1: statistics 2 + step 28; gas > 1: accumulation 10
// per earlier micro-batch (6 the first), then as gas 1 with the fp32
// accumulator read (+4 in each pass that reads the gradient). A rollback
// after a clip or overflow restores (30) and a clip redoes the step (28).
// A failed finish_step (a non-finite gradient with no loss scaler and no
// external scale, "loss scale already at minimum", I/O) changes nothing:
// speculative updates are restored and the counters (Adam step, schedule,
// scaler, steps, micro-batches) are what they were, except the
// decided-update I/O case that training_engine.h documents
// (partly_stepped(): steps and saves refused until load_state). With an
// external loss scale a non-finite gradient is an overflow: skipped, not an
// error.
// strata.delayed_param_update (training_engine.h) needs every param kStore.
//
// Data parallel (options.comm with world size N > 1; null or N = 1 is one
// rank, exactly as described above). Every rank builds the same optimizer
// (same config, params, buckets and groups, same set_value values) and
// steps in lockstep; ZeRO partitions as DeepSpeed does, to 1/N per rank
// (stage 0 partitions nothing: plain data parallel, every rank holding
// whole states, all_reducing whole gradients into them and applying the
// same whole update, with no gather and no norm collective; the points
// below are stages 1 to 3):
//   - each param's elements are split into N contiguous slices
//     (engine/zero_partition.h: even split, the first numel % N ranks one
//     element more); rank r owns slice r. grad32, master, exp_avg and
//     exp_avg_sq exist (store, host arena, NVMe swap; placement and budgets
//     sized by the slice) only for the rank's slice, and the optimizer pass
//     runs on it. The kStore grad stays whole; the compute param too,
//     except in ZeRO-3 (below). Where the reduction (and the stage 1/2
//     gather) runs on the device (below), the kStore grads (not at stage 3
//     with offload_param, whose device holds a window) and stage 1/2
//     compute params are homed on the device (Placement::grad_home,
//     compute_home; PlacementOptions::reduce_on_device), where they are
//     read and written: a rank's host tier holds only its slices, ~1/N of
//     one rank's. A device budget below every layer's params and grads
//     keeps them homed on the host instead (the store then moves a window).
//   - gradients: grad_ready records that a bucket's gradient is there and
//     returns; the optimizer's reduction thread (one per optimizer; a
//     ZeRO-3 gather on the step's thread waits until it is blocked on a
//     bucket not yet reported, so the order stays one) takes each
//     micro-batch's buckets in descending bucket order (backward's order,
//     so reductions overlap the rest of backward; grad_ready's order may
//     differ, the collective order is the same on every rank), each once
//     it is reported, or once wait_grads() / finish_step() says the
//     micro-batch is over. A bucket's params' slices are packed rank by
//     rank and summed over ranks in fp32 in one collective: ZeRO stage 1
//     all_reduces the whole gradient (on the host; on the device it
//     reduce_scatters, below), stage 2 and 3 reduce_scatter it into the
//     rank's slices, which are accumulated into grad32. Three floats
//     travel with each bucket so every rank agrees: whether any rank had
//     its gradient (a rank without one adds zeros; a bucket no rank had
//     is not stepped), an overflow (then no rank reduces more this step)
//     and a rank abandoning the step during its micro-batches (abort_step
//     after a failed forward or backward: the others' wait_grads /
//     finish_step then fail with Aborted at once, not at the timeout; a
//     rank whose buckets were all reduced before it failed says so in the
//     one-value agreement that starts every later micro-batch's round and
//     finish_step). The
//     framework keeps each gradient unchanged until wait_grads() returns
//     (which waits for the micro-batch's reductions) and calls it between
//     micro-batches (the engine does); a bucket reported twice in one
//     micro-batch is FailedPrecondition. The sum over ranks is averaged
//     (DeepSpeed's rule; the framework's loss is the per-rank mean): 1/N
//     is folded into the gradient divisor with the loss scale. Where
//     the reduction runs: stage 1 to 3 with the optimizer offloaded, a
//     bucket whose params are all kStore, on a device whose memory the
//     communicator can use (Gloo on a device whose memory is host memory,
//     Device::host_backed_memory: SimDevice, moving data or only timing
//     it): on the device. The device widens the gradients into one fp32
//     buffer in the rank-major layout, the reduce_scatter runs on it
//     (stage 1 too: a rank keeps only its slice), and only this rank's
//     part (~1/N of the bucket) is copied D2H: in fp32 (exact; with 16-bit
//     gradients that is twice their bytes, 2/N of one rank's), or with
//     ds_config communication_data_type "fp16" / "bf16" rounded to it once
//     on the device (as DeepSpeed's reduction in that dtype, its default,
//     rounds; the gradients then cross in the bytes one rank's do, 1/N);
//     the store's device copies of the
//     gradients are then marked clean (TieredStore::abandon_changes),
//     never written back. The flags are written and read by the host in
//     the device's memory (no transfer a device that moves no data would
//     lose). Those copies are counted in the step's device-tier bytes
//     (OptimizerStepResult::bytes_in / bytes_out) beside the store's.
//     Otherwise (stage 0, a bucket with kHost / kDevice params, Gloo
//     beside a CUDA device) the gradient is read on the host (the store's
//     D2H copy, a kDevice binding's copy-out) and reduced there in fp32
//     (stage 1 all_reduces it whole, 2 and 3 reduce_scatter): the whole
//     gradient crosses PCIe on every rank. Every rank must take the same
//     path (the same kind of device). A communicator on device memory
//     (NCCL) is refused at create() (Unimplemented) in this version.
//   - norm and overflow: the slices' statistics are summed with one
//     all_reduce_host per step, so clipping, skipping and the loss scaler
//     agree on every rank bit for bit.
//   - after the decided update each bucket's params are all_gathered (one
//     collective per bucket) into the whole compute params (kStore: the
//     store's param tensor; kHost: the binding; kDevice: the store's copy, then
//     copied to the binding), in bucket order, so every rank's next
//     forward sees the same params. Where the gradients were reduced on
//     the device (stage 1/2): on the device, as DeepSpeed's ZeRO-Offload
//     does on NCCL. The optimizer writes the rank's updated slices into a
//     pinned host buffer, they go H2D (~1/N of the bucket), the all_gather
//     runs on the device's memory, and each param's device copy is
//     rewritten from it: normally its home (above), so no param crosses
//     PCIe whole in a step and the host holds none; homed on the host (a
//     small device budget), the copy is left dirty and the host copy keeps
//     the other ranks' old slices until the store writes it back (evicted,
//     or read on the host: read_param, a checkpoint).
//   - no speculative step and no fused pass (the gradient is complete only
//     after the reduction): in overlap mode the reductions overlap
//     backward, the optimizer steps after the decision as in sync mode;
//     strata.delayed_param_update is refused.
//   - ZeRO stage 3 also partitions the compute params of kStore bindings:
//     each rank's home copy (host / NVMe, placement counted at the slice)
//     is its slice; acquire_full_params gathers a bucket's whole params on
//     the device before use (below). The post-step all_gather is skipped
//     for them. read_param of such a param is collective (it gathers).
//     The gathered params are device memory outside the store's budget:
//     buffers of the largest bucket's params, one per bucket held and one
//     for the prefetched next bucket, kept for reuse until the optimizer
//     goes (see acquire_full_params). kHost / kDevice bindings keep
//     whole compute params as in stage 2.
//   - read_state / write_state address the rank's slice (param_slice(p)
//     values); read_param the whole compute param (gathered across ranks
//     in ZeRO-3: then collective).
//   - checkpoints: save_state is collective (every rank, same step):
//     DIR/rank<r> is rank r's shard, a checkpoint in checkpoint_format.h's
//     format whose tables hold the rank's slice of master, exp_avg,
//     exp_avg_sq and the compute param; rank 0 writes DIR/zero.json (world
//     size, partition rule, shard names) after every shard is in (and
//     removes it first, so a failed save leaves no checkpoint mixing two
//     steps). DIR must be missing, empty or such a checkpoint.
//     save_state_async saves synchronously across ranks. load_state (not
//     collective) at any world size, with or without a communicator, reads
//     the parts of the saved slices its own slice covers (resharding) and
//     the whole compute params (ZeRO-3: the rank's slice of them); a
//     one-rank checkpoint loads across ranks the same way. The shards are
//     read through checkpoint_format.h's open_checkpoint_shards, as
//     `strata ckpt` and `strata sample` read them (a one-rank checkpoint of
//     a sharded one: resume it on one rank and save).
// A rank whose step fails later (in finish_step) or that stops calling
// makes the others' collectives fail within the communicator's timeout,
// naming it.
//
//   STRATA_ASSIGN_OR_RETURN(dist::RankInfo me, dist::rank_info_from_env());
//   STRATA_ASSIGN_OR_RETURN(auto comm, dist::connect(me, {}));  // Gloo
//   // parse_ds_config(..., world_size = me.world_size)
//   OffloadOptimizerOptions o;
//   o.comm = comm.get();  // outlives the optimizer
//   STRATA_ASSIGN_OR_RETURN(auto opt, OffloadOptimizer::create(config, device, std::move(o)));
//
// Threading: registration, begin_step, finish_step, abort_step, state and
// save/load from one thread; grad_ready (and report_overflow) from any
// thread, concurrently with each other, between begin_step and finish_step.
// With a communicator the optimizer runs one thread of its own (the
// reduction thread above) and uses the communicator from it during a step
// and from the calling thread between steps and in finish_step.
// Errors: create() / finalize() reject configs that cannot run (as
// TrainingEngine); add_param after finalize, a numel of 0, a name used twice
// in one bucket, a negative bucket, an unknown group, or (kHost/kDevice) a
// null pointer are InvalidArgument; unknown handles / buckets are
// InvalidArgument; grad_ready outside a step, or before finalize, is
// FailedPrecondition.
#pragma once

#include <array>
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
#include "dist/communicator.h"
#include "engine/loss_scaler.h"
#include "engine/lr_schedule.h"
#include "engine/offload_types.h"
#include "engine/placement.h"
#include "engine/speculation.h"
#include "engine/step_optimizer.h"
#include "engine/zero_partition.h"
#include "gpu/device.h"
#include "nlohmann/json.hpp"
#include "offload/tiered_store.h"
#include "swap/io_engine.h"

namespace strata::engine {

struct OffloadOptimizerOptions {
  // Device bytes the store may use; 0: what the device has free at creation
  // (ZeRO-3 with offload_param: at most stage3_max_live_parameters params
  // and their grads, and never less than the largest bucket's).
  uint64_t device_budget_bytes = 0;
  // Host bytes for the host tier; 0: what the placement needs (every
  // host-homed tensor plus a cache for NVMe-homed ones).
  uint64_t host_budget_bytes = 0;
  // NVMe I/O engine; null: the optimizer builds one from ds_config "aio".
  swap::IoEngine* io = nullptr;
  // For the optimizer's own IoEngine: accept filesystems without O_DIRECT.
  bool allow_buffered_io = false;
  // The LR schedule; null: make_lr_schedule(config.scheduler, optimizer.lr).
  std::unique_ptr<LrSchedule> lr_schedule;
  // true: every group's lr (and, for OneCycle, betas) come from the
  // schedule. false: each group's own lr and betas (torch schedulers write
  // them through set_group); the schedule still counts steps.
  bool use_schedule = true;
  cpu_adam::ExecOptions exec;
  // overlap mode: kAuto steps speculatively only while the host kept up
  // with backward in the previous step (when it did not, the rollback
  // copies' memory traffic only slows a CPU-bound step); kAlways / kNever
  // force it (tests, benchmarks). See engine/speculation.h.
  using Speculation = SpeculationPolicy;
  Speculation speculation = Speculation::kAuto;
  // Tests: called before each bucket's decided optimizer step (every bucket
  // in sync mode; in overlap mode those stepped after the decision); an
  // error fails the step there, as an I/O error in the optimizer pass would.
  std::function<absl::Status(int bucket)> before_decided_step;
  // false: the three passes the fused one replaced (accumulate into grad32,
  // statistics, step reading grad32); same bits, for tests and A/B benchmarks.
  bool fuse_gradient_pass = true;
  // Data-parallel ZeRO across ranks (see "Data parallel" above); borrowed,
  // must outlive the optimizer and be used by nothing else while a step or
  // a checkpoint is in flight. Its world size must equal the config's
  // (train_batch_size = micro x accumulation x world). null: one rank.
  dist::Communicator* comm = nullptr;
  // The accumulated gradient is divided by loss_scale x clip coefficient x
  // world size x grad_divisor in the fp32 optimizer pass (and the reported
  // norm by loss_scale x world x grad_divisor). A framework that folds 1/gas
  // into its loss, as DeepSpeed does, leaves 1. TrainingEngine sets it
  // itself (training_engine.h, "Loss scaling and accumulation"): it divides
  // its loss by a power of two instead of gas and leaves the rest here.
  // Finite and above 0 (create() says InvalidArgument otherwise).
  double grad_divisor = 1.0;
};

// The config's optimizer section as a group (what default_group() and the
// engine's one group use).
GroupHyperparams group_hyperparams(const config::DsConfig& config);

class OffloadOptimizer final : public StepOptimizer {
 public:
  // `device` (and options.io) must outlive the optimizer. Rejects a config
  // that cannot run (no optimizer, a world size other than the communicator's, ...).
  static absl::StatusOr<std::unique_ptr<OffloadOptimizer>> create(const config::DsConfig& config,
                                                                  gpu::Device* device,
                                                                  OffloadOptimizerOptions options);
  ~OffloadOptimizer() override;
  OffloadOptimizer(const OffloadOptimizer&) = delete;
  OffloadOptimizer& operator=(const OffloadOptimizer&) = delete;

  // Registration. add_group returns the group's index (0, 1, ...); a param
  // naming a group must come after it. The config's optimizer params are
  // what the engine passes as group 0 (default_group()).
  int add_group(const GroupHyperparams& hp);
  GroupHyperparams default_group() const;
  absl::StatusOr<ParamHandle> add_param(const ParamDesc& desc);
  // Places every tensor (plan_placement over the buckets) and creates the
  // store, its swap files and the step state. Give every param its value
  // with set_value before the first step.
  absl::Status finalize();

  // The fp32 starting value of a param: master = value, states zero, the
  // compute param = value rounded (and written to a kHost / kDevice binding).
  absl::Status set_value(ParamHandle p, const float* value) override;

  absl::StatusOr<double> begin_step(std::optional<double> loss_scale = std::nullopt) override;
  // grad_ready(bucket): no event (kStore / kHost, or a kDevice gradient
  // already written when the call is made).
  absl::Status grad_ready(int bucket) override { return grad_ready(bucket, std::nullopt); }
  absl::Status grad_ready(int bucket, std::optional<gpu::EventId> grad_written);
  absl::Status wait_grads() override;
  // fp16 overflow seen by the framework on the device (the engine's check):
  // no further gradient is taken this step and finish_step skips it.
  void report_overflow() override;
  // An overflow is known this step (reported, or seen in a bucket's gradient).
  bool overflowed() const override;
  // The framework's backward time of the step's last micro-batch; kAuto
  // speculation compares the host's gradient and optimizer time with it
  // (not reported: the time from begin_step to the last grad_ready).
  void set_backward_seconds(double seconds) override;
  absl::StatusOr<OptimizerStepResult> finish_step() override;
  // finish_step in two halves, for a caller that sums the gradient
  // statistics over several optimizers itself (stratad's sessions of one
  // data-parallel job, each holding its rank's slices, no communicator):
  // finish_step_local() does all of finish_step up to the decision and
  // returns this optimizer's statistics; finish_step_global(sums) decides
  // with the sums over every rank and finishes. finish_step() is the two,
  // with the communicator's sum between them. Between the halves only
  // abort_step may be called; a failed half undoes the step as finish_step.
  absl::StatusOr<StepGradStats> finish_step_local();
  absl::StatusOr<OptimizerStepResult> finish_step_global(StepGradStats global);
  // The step in flight is abandoned (the framework's forward or backward
  // failed): speculative updates are restored, counters put back; returns
  // `why` with what the undo added.
  absl::Status abort_step(absl::Status why) override;
  std::optional<gpu::EventId> params_ready(int bucket) const;

  // Between steps: hyper-parameters (torch re-reads param_groups each step).
  absl::Status set_group(int group, const GroupHyperparams& hp);
  const GroupHyperparams& group(int g) const;
  int num_groups() const;
  // Between steps: the Adam step count (bias correction) that goes with
  // states restored through write_state (torch's state_dict layout);
  // load_state restores it by itself. InvalidArgument below 0,
  // FailedPrecondition while a step is in flight.
  absl::Status set_optimizer_steps(int64_t steps);

  // State, one param at a time (streamed: NVMe-homed states pass through one
  // host buffer of the tensor's size). Finishes a pending delayed update
  // first. write_state of kMaster does not change the compute param.
  absl::StatusOr<std::vector<float>> read_state(ParamHandle p, StateKind kind) override;
  absl::Status write_state(ParamHandle p, StateKind kind, const float* values);
  // The compute-dtype param as fp32, from its home.
  absl::StatusOr<std::vector<float>> read_param(ParamHandle p) override;

  // Checkpoints in strata's format (checkpoint_format.h; the contract in
  // training_engine.h, save_checkpoint / load_checkpoint): user_meta is
  // stored under "user". load_state with weights_only loads masters and
  // params into a run with another optimizer or stage. Between steps.
  absl::Status save_state(const std::string& dir, const nlohmann::json& user_meta) override;
  absl::Status save_state_async(const std::string& dir, const nlohmann::json& user_meta) override;
  absl::Status wait_for_save() override;
  absl::Status load_state(const std::string& dir, bool weights_only) override;
  const CheckpointLoadStats& last_load_stats() const override;

  // What the framework's kStore layers use: the store, each param's tensors
  // (kStore only), the optimizer's stream (store copies and kDevice copies
  // run on it) and the placement (device scratch for the engine's check).
  offload::TieredStore* store();
  // ZeRO-3 across ranks (params_sliced(): stage 3, world > 1, kStore
  // params): the store's param_id tensor holds only this rank's slice, and
  // a framework gets the whole params of a bucket in device memory from
  // acquire_full_params (each rank's slice goes H2D through the store, the
  // all_gather fills the rest on the device; one pointer per param of the
  // bucket, in bucket order, valid until release_full_params(bucket), which
  // waits for the work enqueued on stream() and takes their buffer back).
  // Collective: every rank acquires the same buckets in the
  // same order, from the step's thread, never while the reduction thread
  // may use the communicator (before the micro-batch's first grad_ready
  // and after wait_grads; the engine reports gradients after backward and
  // waits before forward in this mode). Errors: FailedPrecondition when
  // not sliced or the bucket is held already; the store's, the device's
  // and the communicator's.
  bool params_sliced() const;
  // Stage 2/3 across ranks where the communicator can use device memory:
  // the bucket's gradients are reduced where they lie on the device and
  // only this rank's part crosses PCIe, so a framework releases their
  // device copies dirty without copying them back (StreamPins::release
  // with copy_back false). False before finalize and for an unknown bucket.
  bool grads_reduced_on_device(int bucket) const;
  // Prefetch: within a step (begin_step to finish_step) the order the last
  // finished step acquired buckets in is expected again, and
  // release_full_params gathers the next bucket of it before it waits for
  // the released bucket's work (so the gather runs while the device
  // computes); acquire_full_params then hands it out. A step that leaves
  // the order gathers synchronously from there and is recorded as the new
  // order. Every rank makes the same calls, so the same prefetches.
  absl::StatusOr<std::vector<void*>> acquire_full_params(int bucket);
  absl::Status release_full_params(int bucket);
  // acquire_full_params calls served by a prefetched gather, since creation.
  int64_t prefetched_gathers() const;
  offload::TensorId param_id(ParamHandle p) const;
  offload::TensorId grad_id(ParamHandle p) const;
  gpu::StreamId stream() const;
  const Placement& placement() const;

  int num_params() const;
  // Data parallel: this rank, the world size (1 without a communicator) and
  // the slice of param p this rank owns (the whole param with one rank).
  int rank() const;
  int world_size() const;
  ParamSlice param_slice(ParamHandle p) const;
  int num_buckets() const;
  const ParamDesc& param(ParamHandle p) const;
  const std::vector<ParamHandle>& bucket_params(int bucket) const;
  DType compute_dtype() const override;
  int64_t optimizer_steps() const override;  // applied steps (the Adam step count)
  int64_t steps() const override;            // finished steps, skipped ones included
  // gradient_accumulation_steps per finished step (restored by a load): the
  // engine picks its data by it.
  int64_t micro_batches() const override;
  const LossScaler* loss_scaler() const;
  const LrSchedule& lr_schedule() const;
  offload::Tier optimizer_tier() const;
  absl::Status partly_stepped() const override;

 private:
  OffloadOptimizer() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace strata::engine
