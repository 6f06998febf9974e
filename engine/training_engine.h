// TrainingEngine: the ZeRO-Offload / ZeRO-Infinity training step (ZeRO
// stage 1-3, one process), in `sync` mode (DeepSpeed's order: all
// gradients, then the norm, then the optimizer) or `overlap` mode (below).
// It is the Model's layers driven over an OffloadOptimizer
// (engine/offload_optimizer.h), which holds everything below but the
// forward / backward loop, the device-side fp16 overflow check and
// evaluate(): one bucket per layer, every param ParamBinding::kStore, and
// grad_ready(layer) after the layer's backward (overlap, delayed update) or
// for every layer after the whole backward (sync). The step calls go
// through engine/step_optimizer.h's StepOptimizer, so the same loop also
// drives an optimizer in stratad ("Through a remote optimizer" below).
//
// Placement (per parameter of every layer, all in one TieredStore):
//   param  compute dtype (fp16 / bf16, fp32 when neither is enabled)
//   grad   compute dtype, written by the layer's backward on the device
//   grad32 fp32 accumulator over gradient_accumulation_steps micro-batches
//   master, exp_avg, exp_avg_sq  fp32
// offload_optimizer.device cpu: master and states homed on the host; param
// and grad homed on the host with a device cache, so the store moves them
// (grad D2H when the host reads it, param H2D when forward acquires it
// after the optimizer rewrote the host copy); grad32 on the host.
// offload_optimizer.device nvme: as cpu, but master and states homed on
// NVMe (a swap file under nvme_path), cached on the host within its budget.
// Stage 3 (offload_param.device cpu or nvme): the compute-dtype params are
// homed on the host (cpu) or NVMe (nvme) and the device only caches the
// layers in flight: its budget defaults to stage3_max_live_parameters
// params plus their grads, so each step fetches every layer's params
// through the store's prefetch. The arithmetic is that of stage 2. Stage 3
// with offload_param none places everything as stage 2 does, with no cap:
// DeepSpeed keeps the partition on the device, and with one process the
// partition is the whole model.
// offload_optimizer.device none: everything homed on the device; the
// optimizer then runs on the device's memory from the host, which only a
// device whose memory the host can address allows (Device::host_addressable:
// SimDevice; there is no device-side Adam yet).
//
// Step: for each micro-batch, forward then backward layer by layer (loss
// scaled by loss_scale / P, below), each layer's gradient accumulated into
// grad32 in fp32 on the optimizer's tier (host when offloaded). Then cpu_adam::grad_stats
// over all grad32 gives the norm and inf/nan; fp16 feeds the loss scaler
// (overflow: the step is skipped, master, states, the Adam step count and
// the LR schedule are untouched). With gradient_clipping > 0,
// coef = max(1, (norm/loss_scale + 1e-6) / gradient_clipping) and every
// layer runs cpu_adam::optimizer_step with
// grad_scale = 1/(loss_scale*coef*gas/P) (times 1/N across N ranks),
// writing the new compute-dtype param into the param's host copy. The LR
// schedule gives each step's lr and, for OneCycle with cycle_momentum, its
// betas (beta1 cycled, beta2 0.99), which the step uses in place of the
// optimizer's, as DeepSpeed sets its optimizer's betas.
//
// Loss scaling and accumulation: DeepSpeed scales the loss by
// loss_scale / gas before backward; the engine divides it by P, the power
// of two gas rounds up to, and folds the rest, gas / P, into the fp32
// divisor above (OffloadOptimizerOptions::grad_divisor). Scaling by a
// power of two commutes with rounding to fp16 / bf16 (above fp16's
// subnormals), so each micro-batch's 16-bit gradient carries the same bits
// whatever gas is, up to a power of two: N ranks at gas G and 1 rank at gas N x G over the
// same micro-batches round every gradient alike and train the same run
// (with 1/gas in the loss, 1 rank at gas 6 rounds S/6 x g where 3 ranks at
// gas 2 round S/2 x g: measured 3e-3 relative loss drift over 30 steps;
// 2e-16 with P, training_engine_dp_test). The fp16 gradients are never
// larger than DeepSpeed's (S/P <= S/gas: the loss scaler overflows no
// earlier) and at most 2x smaller; for a gas that is a power of two (1, 2,
// 4, ...) every value, grad32 included, is DeepSpeed's. grad32 (read_fp32
// kGradAccum) holds loss_scale x gas / P x the mean gradient over the
// micro-batches; the reported norm is that of the mean gradient. Through
// stratad (EngineOptions::remote) the loss is divided by gas itself, as
// DeepSpeed does: the daemon's optimizer takes no divisor.
//
// Deliberate difference from DeepSpeed: with bf16 or fp32 (no loss scaler) a
// non-finite gradient fails the step with an error instead of writing NaN
// into the weights.
//
// fp16 overflow is found on the device: after each layer's backward a
// device-side norm of its gradients; the first overflowing layer is logged
// and reported in StepStats, and no further gradient leaves the device in
// that step (the layers after it cost no D2H and no optimizer work).
//
// `overlap` mode (strata.overlap, the default): as soon as a layer's
// backward has finished, a worker thread copies its gradients to the host
// and accumulates them while the device runs the next layers; on the last
// micro-batch it also steps the layer speculatively (clip coefficient 1,
// the step's loss scale), after copying its master and optimizer states
// (engine/speculation.h; strata.rollback_buffer_bytes of host memory;
// layers beyond it wait for the end of backward). When the whole gradient
// shows an overflow, or a norm above gradient_clipping, the stepped layers
// are restored from the copies and, for a clip, stepped again with the
// right factor. Weights, states and params are then bit-identical to `sync`.
// EngineOptions::speculation (default kAuto) skips the speculative steps for
// a step when the host did not keep up with backward in the step before.
//
// A failed train_step (an error in forward or backward, a non-finite
// gradient without a loss scaler, "Current loss scale already at minimum",
// an optimizer that refuses its arguments) changes nothing, in every mode:
// the layers stepped speculatively are restored from their copies, and the
// masters, states, compute params, the Adam step, the LR schedule, the loss
// scaler and steps() are bit for bit what they were, so a retry runs the
// same micro-batches. grad and grad32 are the step's scratch. An error of
// the store while the decided update is being written (I/O) is the
// exception: the params already written with no copy to undo them (sync
// mode, or past strata.rollback_buffer_bytes) keep their update. The step's
// error says so, and from then on train_step, save_checkpoint and
// save_checkpoint_async return FailedPrecondition naming the failed step
// until load_checkpoint restores a known state: the engine never applies
// that update twice nor saves half-stepped weights.
//
// strata.delayed_param_update (the ZeRO-Offload paper's DPU, off by
// default): gradients move as in overlap mode, but the optimizer step of
// step n runs on the worker while step n+1's forward and backward run, on
// params one step stale; the update writes a param_next tensor (on the
// optimizer's tier, one more compute-dtype copy per param) that replaces
// param once step n+1 is decided (a failed step n+1 lets it finish and
// leaves it pending). Nothing is speculative: the step is decided once the whole
// gradient is known. evaluate() sees the params the next step will use;
// read_fp32, read_param and checkpoint saves and loads first finish the
// pending update (so a run that saves at step k continues as its resumed
// copy does, and differs from one that does not save there in which update
// step k+1 sees). A delayed update that fails (an I/O error, or an
// optimizer that refuses its arguments) fails the call that waits for it
// (train_step n+1, or a read or save) with its error: the params it had
// written go in, each consistent with its master and states, the others
// keep theirs, and nothing stays pending; the Adam step and the schedule
// still count step n.
//
// Data parallel: with options.comm (world N > 1) each rank runs its own
// engine on its share of the batch (the Model picks the rank's data) and
// the optimizer partitions, reduces and gathers as offload_optimizer.h
// ("Data parallel") says. Every rank calls train_step and save_checkpoint
// at the same points (they are collective); load_checkpoint reshards a
// checkpoint of any world size. ZeRO-3 across ranks: each layer's params
// are gathered on the device (OffloadOptimizer::acquire_full_params) for
// its forward and again for its backward, and released after (a release
// starts the next gather the previous step's order predicts, on its own
// stream into reused device buffers); the gathers never meet the
// reductions, gradients are handed over after backward and the previous
// micro-batch's reductions waited for before forward (the overlap of
// reductions with backward is lost in this mode); evaluate and read_param
// are then collective too.
//
// Through a remote optimizer (EngineOptions::remote, a HostBoundOptimizer:
// stratad): the same loop and the same arithmetic (losses bit-identical to
// in-process), with the optimizer's params and gradients in the remote's
// host memory instead of the store. The engine keeps every layer's
// compute-dtype params and gradients on its device (allocated at create:
// no ZeRO-3 param offload and no device budget in this version), copies
// the params in after each change and each bucket's gradients out before
// its grad_ready (waiting for the bucket's backward first). A session that
// already has params (needs_values() false: a client that died or ended
// and runs again) is continued from its last completed step, its data
// picked by the remote's micro-batch count. Across N ranks (options.comm,
// a host-memory communicator: Gloo) each rank's remote holds only the
// rank's slice of every param (zero_partition.h; registered with a one-rank
// config), so a node's sessions together hold one copy of the host state:
// each layer's gradients are widened to fp32 and reduce-scattered once its
// backward has run (every rank, every layer, so the collectives stay in
// step even when one rank overflowed) and the rank's slice of the mean goes
// to the remote (on a device the host addresses, only that slice crosses
// PCIe); finish_step runs in its two halves with the ranks' statistics
// summed between them (every rank clips and skips alike); the updated
// slices are all-gathered into the device params. Every rank's remote must
// be new or every one continued (FailedPrecondition otherwise), continued
// ones at the same step (DataLoss otherwise: a rank died between the
// halves of a finish the others completed); checkpoints
// are the data-parallel format (each remote writes DIR/rank<r>) and load at
// the same world size only (FailedPrecondition naming both: the in-process
// optimizer reshards). Not available there: strata.delayed_param_update
// (InvalidArgument at create), and the in-process accessors store_stats,
// optimizer_tier, loss_scaler, lr_schedule and optimizer() (they
// STRATA_CHECK).
//
// Threading: not thread-safe; one thread calls train_step(). Errors: create()
// rejects configs that parse but cannot run (no optimizer, a world size
// other than options.comm's (1 without one), offload_param without
// offload_optimizer, offload_optimizer none on a device the host cannot
// address, an unwritable nvme_path, budgets too small for one layer) with
// a message naming the key or option to change.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/config/ds_config.h"
#include "core/status.h"
#include "cpu_adam/optimizer.h"
#include "engine/loss_scaler.h"
#include "engine/lr_schedule.h"
#include "engine/model.h"
#include "engine/offload_optimizer.h"
#include "engine/placement.h"
#include "engine/speculation.h"
#include "engine/step_optimizer.h"
#include "engine/zero_partition.h"
#include "gpu/device.h"
#include "nlohmann/json.hpp"
#include "offload/pin.h"
#include "offload/tiered_store.h"
#include "swap/io_engine.h"

namespace strata::engine {

// The engine's options are its optimizer's (offload_optimizer.h; a bucket
// is a layer). use_schedule must stay true: the engine's one group follows
// the LR schedule, which its checkpoints record.
struct EngineOptions : OffloadOptimizerOptions {
  // Set: the optimizer runs outside this process (stratad's session through
  // daemon/engine_client.h), built by this factory from the engine's
  // registration; the options above then only say what the registration
  // carries (use_schedule, speculation, allow_buffered_io). See "Through a
  // remote optimizer" above. Unset: an in-process OffloadOptimizer.
  HostBoundFactory remote;
};

struct StepStats {
  int64_t step = 0;         // 1-based count of successful train_step() calls
  double loss = 0;          // mean unscaled loss over the micro-batches
  double loss_scale = 1;    // the scale this step's backward used
  bool skipped = false;     // overflow: nothing applied
  double grad_norm = 0;     // global L2 norm, unscaled, before clipping (inf on overflow)
  double clip_coef = 1;     // the gradient was divided by this
  double lr = 0;            // the rate applied (or that would have been)
  double step_seconds = 0;  // wall time of train_step()
  // fp16 overflow: the first layer (in backward order) whose gradient
  // overflowed on the device, and its first non-finite param; -1 / "" if none.
  int overflow_layer = -1;
  std::string overflow_param;
  // overlap mode: layers stepped before the backward had finished, and how
  // many of them were restored (overflow) or restored and redone (clip).
  int speculative_layers = 0;
  int rolled_back_layers = 0;
  // Host time spent on the gradients (copy-out wait, fp32 accumulation,
  // norm) and in the optimizer (steps, rollbacks), whichever thread ran it.
  double grad_seconds = 0;
  double optimizer_seconds = 0;
  // Bytes the optimizer's passes moved through host memory (steps and
  // rollback copies: OptimizerStepResult::optimizer_bytes) and the
  // effective bandwidth optimizer_bytes / optimizer_seconds (0 without a step).
  uint64_t optimizer_bytes = 0;
  double optimizer_gb_per_s = 0;
  // Per tier (device, host, nvme), moved during this step; see TierStats.
  std::array<uint64_t, offload::kTierCount> bytes_in{};
  std::array<uint64_t, offload::kTierCount> bytes_out{};
  // The device's synchronisations during this step (Device::sync_counters()
  // around train_step): the host waiting on a stream or event, and calls that
  // synchronise the whole device (cudaMalloc / cudaFree-like). Steady-state
  // steps make no device-wide ones: the store's memory comes from its pool.
  int64_t host_syncs = 0;
  int64_t device_syncs = 0;
  int64_t device_allocations = 0;  // Device::allocate calls during the step
};

class TrainingEngine {
 public:
  // `model` and `device` (and options.io) must outlive the engine.
  static absl::StatusOr<std::unique_ptr<TrainingEngine>> create(const config::DsConfig& config,
                                                                Model* model, gpu::Device* device,
                                                                EngineOptions options = {});
  ~TrainingEngine();
  TrainingEngine(const TrainingEngine&) = delete;
  TrainingEngine& operator=(const TrainingEngine&) = delete;

  // One optimizer step over gradient_accumulation_steps micro-batches. An
  // error leaves the engine as it was (see "A failed train_step" above).
  absl::StatusOr<StepStats> train_step();

  // Mean loss over validation batches 0..batches-1: forward only, every
  // layer with LayerContext::training = false and micro_batch = the
  // validation batch index. Params are acquired read-only and released
  // clean; no step, micro-batch or optimizer count changes (the store may
  // move data, and its acquire trace may be recorded again on the next
  // step). InvalidArgument when batches < 1.
  absl::StatusOr<double> evaluate(int64_t batches);

  // A copy of an fp32 tensor (for tests and checkpoints). grad32 holds the
  // last step's accumulated, still scaled gradient (after a failed step,
  // whatever that step had accumulated).
  absl::StatusOr<std::vector<float>> read_fp32(int layer, int param, StateKind kind);
  // The compute-dtype param as fp32 (read back from its home).
  absl::StatusOr<std::vector<float>> read_param(int layer, int param);

  // Checkpoints (engine/checkpoint.cc; the format in checkpoint_format.h).
  // save_checkpoint writes DIR/meta.json (format version, step counters,
  // loss-scaler state, LR-schedule iteration, compute dtype, optimizer, ZeRO
  // stage, the parameter table with each tensor's offset and XXH3-64
  // checksum) and DIR/tensors.bin (per parameter: fp32 master, exp_avg,
  // exp_avg_sq, then the compute-dtype param). It writes into DIR.tmp-<pid>
  // (flock-owned), fsyncs, moves an existing DIR to DIR.old, renames the new
  // one to DIR and removes DIR.old, so a save interrupted at any point leaves
  // a loadable checkpoint (DIR, or DIR.old, which load falls back to when DIR
  // is missing). It replaces only a checkpoint strata wrote: anything else at
  // DIR or DIR.old is refused (check_checkpoint_destination,
  // checkpoint_dir.h), and dead saves' DIR.tmp-* are removed.
  // load_checkpoint validates everything before it writes anything into the
  // engine: every meta.json value (type, range, against tensors.bin's size),
  // the format version, the compute dtype, for kResume the optimizer, ZeRO
  // stage and loss-scaler presence (saved vs now is named), the parameter
  // table against this model (the first mismatch is named) and every
  // checksum, in a streaming pass; then it streams the tensors in one at a
  // time (no more memory than the largest tensor; see last_checkpoint_load).
  // After a kResume load, train_step() continues bit for bit as the saved run
  // did (data is chosen by micro-batch index, which is restored). kWeights
  // (sampling, evaluation) loads into an engine with another optimizer or
  // stage. Call between steps, from the thread that calls train_step().
  enum class CheckpointUse { kResume, kWeights };
  using CheckpointLoadStats = engine::CheckpointLoadStats;
  absl::Status save_checkpoint(const std::string& dir);
  absl::Status load_checkpoint(const std::string& dir, CheckpointUse use = CheckpointUse::kResume);
  const CheckpointLoadStats& last_checkpoint_load() const { return step_->last_load_stats(); }
  // The same checkpoint, written in the background: the engine's tensors are
  // copied into a host snapshot (about 12 + compute-dtype bytes per param)
  // before it returns, and the files are written from the snapshot while
  // training goes on. wait_for_checkpoint() returns the save's outcome (OK
  // when none is pending); a later save, a load and the destructor wait for
  // it first. An error of the background write leaves the previous
  // checkpoint in place, as a failed save_checkpoint does.
  absl::Status save_checkpoint_async(const std::string& dir);
  absl::Status wait_for_checkpoint();
  // A JSON object saved in meta.json under "user" by later saves (the
  // caller's description of the run: model shape, tokenizer, data);
  // save_checkpoint stores it verbatim, load_checkpoint ignores it.
  void set_checkpoint_user_metadata(nlohmann::json user) { user_meta_ = std::move(user); }
  // The "user" object of the checkpoint in `dir` (or DIR.old, as
  // load_checkpoint picks), null when it has none; NotFound / DataLoss
  // naming the file when meta.json is missing or not a strata checkpoint.
  static absl::StatusOr<nlohmann::json> read_checkpoint_user_metadata(const std::string& dir);
  // Successful train_step() calls (a failed one counts nothing), restored by a load.
  int64_t steps() const { return step_->steps(); }

  DType compute_dtype() const { return step_->compute_dtype(); }
  int64_t optimizer_steps() const { return step_->optimizer_steps(); }  // applied steps
  // Whether the optimizer runs outside this process (EngineOptions::remote).
  bool remote() const { return remote_ != nullptr; }
  // In-process only (STRATA_CHECK otherwise):
  const LossScaler* loss_scaler() const { return local().loss_scaler(); }
  const LrSchedule& lr_schedule() const { return local().lr_schedule(); }
  offload::StoreStats store_stats() const { return local().store()->stats(); }
  // Where the optimizer works: kHost when offloaded, kDevice otherwise.
  offload::Tier optimizer_tier() const { return local().optimizer_tier(); }
  // The seam the engine steps through: one bucket per layer, every param
  // ParamBinding::kStore (layer l's param i is handle layer_params(l)[i]).
  OffloadOptimizer& optimizer() { return local(); }
  // InvalidArgument for a layer the model does not have.
  absl::StatusOr<std::vector<ParamHandle>> layer_params(int layer) const;
  // The layers of each gradient bucket, in backward order: a bucket's
  // gradients leave the device together, at most
  // zero_optimization.reduce_bucket_size elements (and a quarter of the
  // device budget) each; a larger layer is a bucket of its own.
  const std::vector<std::vector<int>>& reduce_buckets() const { return reduce_buckets_; }

 private:
  TrainingEngine() = default;
  absl::Status build(const config::DsConfig& config, Model* model, gpu::Device* device,
                     EngineOptions options);
  absl::Status initialize_params();
  absl::Status run_micro_batch(int64_t micro, double loss_grad_scale, bool first, bool last,
                               double* loss, StepStats* st);
  // Puts layer's params on the device into ctx->params: gathered whole
  // (ZeRO-3 across ranks, released by release_full_params) or acquired on
  // the stream through `pins`.
  absl::Status layer_params(int layer, bool gathered, offload::StreamPins* pins, LayerContext* ctx);
  // Enqueues layer's forward, or its backward when `grads` is given (the
  // bucket's gradient pins, released by the caller once the bucket is done).
  absl::Status run_layer(int layer, offload::StreamPins* grads, int64_t micro,
                         double loss_grad_scale);
  // Groups layers into reduce buckets (backward order) and allgather buckets
  // (forward order) of at most that many elements each.
  // reduce_elements 0: the config did not set reduce_bucket_size (automatic).
  void plan_buckets(int64_t reduce_elements, int64_t allgather_elements);
  // Enqueues the device-side overflow check of a layer's gradients (fp16):
  // its flags land in flag_nonfinite_ once the stream has run.
  absl::Status check_overflow(int layer, const LayerContext& ctx);
  // Reports the first non-finite flag of layer l (the flags have landed).
  void read_overflow_flags(int l, int64_t micro, StepStats* st);
  // overlap / delayed: waits for bucket b's backward (fp16: for its flags),
  // then hands its layers' gradients to the optimizer unless the step overflowed.
  absl::Status finish_bucket(int b, int64_t micro, StepStats* st);
  absl::StatusOr<ParamHandle> handle(int layer, int param) const;
  OffloadOptimizer& local() const {
    STRATA_CHECK_MSG(opt_ != nullptr,
                     "an in-process accessor of an engine with a remote optimizer");
    return *opt_;
  }
  // Registers the layers' params, in-process or with options.remote.
  absl::Status register_params(const config::DsConfig& config, EngineOptions options);
  // Remote: copies every param's value from the remote's memory to the
  // device (on stream_) when it changed since the last copy.
  absl::Status upload_params();
  // Remote: enqueues the copies of layer l's gradients into the remote's memory.
  absl::Status download_grads(int layer);

  // Data parallel through remote optimizers (training_engine_remote_dp.cc):
  // rank r's remote holds its slice (zero_partition.h) of every param.
  // Sets up rdp_ and the slices' registration.
  absl::Status plan_remote_slices(dist::Communicator* comm, HostBoundRegistration* reg);
  absl::Status setup_remote_dp();
  // Sums layer l's gradients over the ranks and writes the rank's slice of
  // their mean into the remote's memory (every rank, every layer, overflow
  // or not: the collectives stay in step).
  absl::Status reduce_grads_to_remote(int layer);
  // Every rank's updated slices, gathered into the device params.
  absl::Status gather_params_from_remote();
  // finish_step: the ranks' gradient statistics summed between the halves.
  absl::StatusOr<OptimizerStepResult> finish_remote_dp();
  // A whole fp32 tensor from every rank's slice of it.
  absl::StatusOr<std::vector<float>> gather_remote_fp32(ParamHandle h,
                                                        const std::vector<float>& slice);
  // Checkpoints across ranks: each session saves its shard of DIR (the
  // data-parallel format) and loads its own back (the same world size).
  absl::Status save_remote_shards(const std::string& dir);
  absl::Status load_remote_shards(const std::string& dir, bool weights_only);
  // Hands layer l's gradients to the optimizer (after its reduction across
  // ranks) unless the step overflowed.
  absl::Status hand_on_grads(int layer);

  Model* model_ = nullptr;
  gpu::Device* device_ = nullptr;
  std::unique_ptr<OffloadOptimizer> opt_;       // in-process; null with a remote
  std::unique_ptr<HostBoundOptimizer> remote_;  // EngineOptions::remote
  StepOptimizer* step_ = nullptr;               // whichever of the two
  gpu::StreamId stream_ = 0;                    // opt_'s, or the engine's own (remote)
  std::vector<ParamDesc> params_;               // per handle: name, numel, bucket
  int num_buckets_ = 0;
  std::vector<std::vector<ParamHandle>> layers_;  // per layer: its params' handles
  // Remote: per handle, the device copies of the param and its gradient,
  // and whether the device params are the remote's current values.
  std::vector<void*> device_params_, device_grads_;
  bool params_uploaded_ = false;
  void* pinned_region_ = nullptr;  // the remote's host_region, registered with the device
  struct RemoteDp {
    dist::Communicator* comm = nullptr;
    config::DsConfig config;  // the remotes': one rank, the batch of this rank
    // Per param (the remote's handle is the param's: every param has a
    // slice on every rank): the rank's slice.
    std::vector<ParamSlice> slice;
    // Per layer: its params' slices packed for one collective, rank by rank
    // (rank q's segment: its slice of each param in turn).
    struct Layout {
      std::vector<uint64_t> counts;  // per rank: elements in its segment
      std::vector<uint64_t> pos;     // per rank: where its segment starts
      uint64_t total = 0;
    };
    std::vector<Layout> layout;
    // Scratch for the largest layer, in memory the communicator reaches:
    // the device's when it is host memory (wide: the packed gradients in
    // fp32; part / part16: the rank's segment of the sum, fp32 and compute
    // dtype; packed16: the gathered params), else host memory (staging: the
    // layer's gradients or gathered params in the compute dtype).
    bool on_device = false;
    gpu::StreamId stream = 0;  // the reduction's, once has_stream
    bool has_stream = false;
    void* wide = nullptr;
    void* part = nullptr;
    void* part16 = nullptr;
    void* packed16 = nullptr;
    std::vector<float> host_wide, host_part;
    std::vector<uint8_t> staging, host_mine16;
  };
  std::unique_ptr<RemoteDp> rdp_;
  DType dtype_ = DType::kFloat32;
  int64_t gas_ = 1;
  // The power of two the loss is divided by (gas rounded up to one); the
  // optimizer's grad_divisor is gas / loss_divisor_.
  double loss_divisor_ = 1;
  // Gradients go to the optimizer's worker layer by layer during backward
  // (overlap mode, delayed update), or all after backward (sync).
  bool grads_during_backward_ = false;
  bool has_scaler_ = false;
  nlohmann::json user_meta_;
  // Device scratch for the overflow check: per param of every layer a float
  // sum and an int32 flag (layer l's start at flag_offset_[l]).
  void* flags_device_ = nullptr;
  std::vector<float> flag_sums_;
  std::vector<int32_t> flag_nonfinite_;
  std::vector<size_t> flag_offset_;
  // Layers per gradient bucket (zero_optimization.reduce_bucket_size
  // elements, in backward order) and per param bucket (allgather_bucket_size,
  // forward order); a layer larger than the bucket is a bucket of its own.
  std::vector<std::vector<int>> reduce_buckets_;
  std::vector<std::vector<int>> allgather_buckets_;
  std::vector<gpu::EventId> bucket_events_;  // end of each reduce bucket's backward
};

}  // namespace strata::engine
