// OffloadOptimizer's state, shared by offload_optimizer.cc (registration,
// the step, state access) and checkpoint.cc (save / load). Private to
// engine/: the contract is offload_optimizer.h.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <future>
#include <mutex>
#include <optional>
#include <thread>

#include "core/scratch_lock.h"
#include "core/status.h"
#include "engine/checkpoint_format.h"
#include "engine/offload_optimizer.h"
#include "engine/ordered_worker.h"

namespace strata::engine {

// The compute param is always the master rounded to nearest even (the
// optimizer writes it so, and so do initialisation, rollback and loads).
inline void round_master(const float* master, void* out, DType dtype, uint64_t n) {
  if (dtype == DType::kFloat32) std::memcpy(out, master, n * sizeof(float));
  if (dtype == DType::kFloat16) convert_fp32_to_fp16(master, static_cast<uint16_t*>(out), n);
  if (dtype == DType::kBFloat16) convert_fp32_to_bf16(master, static_cast<uint16_t*>(out), n);
}

struct OffloadOptimizer::Impl {
  struct ParamRec {
    ParamDesc desc;
    int index = 0;                // in its bucket
    offload::TensorId param = 0;  // kStore: the compute param; kHost / kDevice: the store's copy
    offload::TensorId grad = 0;   // kStore only
    offload::TensorId grad32 = 0, master = 0, exp_avg = 0, exp_avg_sq = 0;
    offload::TensorId param_next = 0;  // delayed_param_update only
    // Data parallel: the rank's slice, which grad32 and the states hold
    // (the whole param with one rank); an empty slice registers one element.
    ParamSlice slice;
    uint64_t state_numel() const { return std::max<uint64_t>(1, slice.numel); }
    // ZeRO-3 across ranks, kStore: the store's compute param holds only the
    // rank's slice (gathered whole on the device for forward and backward).
    bool param_sliced = false;
    uint64_t param_lo() const { return param_sliced ? slice.offset : 0; }  // its first element
    uint64_t param_numel() const { return param_sliced ? state_numel() : desc.numel; }
  };
  // What a failed step puts back, besides the tensors.
  struct Counters {
    int64_t steps = 0;
    int64_t micro_batches = 0;
    int64_t adam_step = 0;
    int64_t schedule_iteration = -1;
    LossScaler::State scaler{};
  };
  // One step's optimizer arguments per group (copied into the delayed
  // update's jobs, which run while the next step begins).
  struct StepArgs {
    std::vector<cpu_adam::Hyperparams> hp;  // per group
    std::vector<double> lr;                 // per group
    double grad_scale = 1;
    int64_t step = 0;
  };
  enum class StepTarget { kParam, kSpeculative, kParamNext };

  ~Impl();

  // create() and finalize(), step by step.
  absl::Status configure(const config::DsConfig& config, gpu::Device* device,
                         OffloadOptimizerOptions options);
  struct StoreBudgets {
    uint64_t device = 0;
    uint64_t host = 0;
  };
  absl::StatusOr<StoreBudgets> store_budgets() const;
  absl::Status create_store(const StoreBudgets& budgets);
  absl::Status add_swap_files(offload::TieredStore::Options& so);
  absl::Status register_tensors();
  absl::Status prepare_step_state();
  absl::Status prepare_device_reduction();
  // reduce_bucket's device half (dp_bucket_device): packs, reduces and
  // copies this rank's part into dp_part.
  absl::Status reduce_bucket_on_device(int bucket, bool have, const float* flags);
  // gather_bucket's device half (dp_gather_device): this rank's updated
  // slices (dp_param_part) H2D, all_gathered on the device into the params'
  // device copies.
  absl::Status gather_bucket_on_device(int bucket);
  // The communicator can work on the device's memory: Gloo on a device
  // whose memory is host memory (SimDevice). NCCL is refused at create().
  bool dp_comm_on_device() const { return !comm->device_memory() && device->host_backed_memory(); }

  // The step's pieces; bucket work runs on the calling thread (sync) or the
  // worker.
  absl::Status bucket_done(int bucket, int call, std::optional<gpu::EventId> event);
  absl::Status accumulate_bucket(int bucket, bool first, std::optional<gpu::EventId> event);
  absl::Status stats_bucket(int bucket, int call);
  // stats (optional): the bucket's GradStats, computed in the step's pass.
  absl::Status step_bucket(int bucket, const StepArgs& args, StepTarget target,
                           cpu_adam::GradStats* stats = nullptr);
  // The fused pass reads a bucket's last micro-batch where the framework
  // left it: only where it stays readable until finish_step (kStore, kHost)
  // and is not needed after it (no delayed update).
  bool can_fuse(int bucket) const;
  // Calls body with the param's gradient as the optimizer reads it: grad32,
  // or (the bucket's pending_call set) the last micro-batch's compute-dtype
  // gradient plus grad32 as the accumulator when that call was not the first.
  absl::Status with_grad(const ParamRec& p, int pending,
                         const std::function<absl::Status(const cpu_adam::Buffers&)>& body);
  // Adds a pending last micro-batch into grad32 (wait_grads: the framework
  // is about to overwrite it).
  absl::Status materialize_bucket(int bucket);
  absl::Status restore_bucket(int bucket);
  // Data parallel (offload_optimizer_step.cc): the gradients reported since
  // the last flush, reduced over ranks into grad32's slices, in bucket
  // order; the updated slices gathered into the whole compute params.
  bool dp() const { return world > 1; }
  // What the accumulated gradient is divided by besides the loss scale and
  // the clip coefficient: the world (the mean over ranks) and
  // options.grad_divisor (the engine's share of 1/gas).
  double grad_divisor() const { return world * options.grad_divisor; }
  // Across ranks with the fp32 state split (ZeRO stage >= 1): gradients
  // reduced into slices, updated slices gathered. Stage 0 all_reduces
  // whole gradients and gathers nothing.
  bool partitioned() const { return dp() && zero_partitions_state(config.zero.stage); }
  // The reduction thread: each round (micro-batch) it walks the buckets in
  // descending order, waiting for each to be reported or the round closed.
  void dp_loop();
  // One bucket of a round: agree with the other ranks (gradient here?
  // overflow? a rank abandoning the step?), then reduce.
  absl::Status dp_bucket(int bucket, bool have, bool local_overflow, bool aborting);
  // Every round after the first and finish_step begin with it: one value,
  // whether a rank abandons the step. A rank whose every bucket was reduced
  // before its forward or backward failed tells the others here, whether
  // they are at their next micro-batch or at finish_step.
  absl::Status dp_agree(bool aborting);
  // A collective of the step's thread (a ZeRO-3 gather) waits for its
  // turn: the reduction thread blocked on a bucket not yet reported, or
  // between rounds, which is the same point of the collective order on
  // every rank; the reduction thread starts nothing while it is held.
  class DpCommTurn {
   public:
    explicit DpCommTurn(Impl* m);
    ~DpCommTurn();
    DpCommTurn(const DpCommTurn&) = delete;
    DpCommTurn& operator=(const DpCommTurn&) = delete;

   private:
    Impl* m_;
  };
  bool dp_thread_blocked() const;  // under grad_mu
  static absl::Status dp_abandoned() {
    return absl::AbortedError(
        "a data-parallel rank abandoned the step (its own error says why); this rank stops too");
  }
  // Closes the open round, waits for the thread to finish it and, with
  // open_next, opens the next one (wait_grads); returns the thread's error.
  absl::Status dp_close_round(bool open_next);
  // Under grad_mu (held by `lock`): closes the open round and waits until
  // the reduction thread has finished it.
  void dp_end_round(std::unique_lock<std::mutex>& lock);
  void dp_stop_thread();
  struct BucketLayout {
    std::vector<uint64_t> counts;  // per rank: elements of its part
    std::vector<uint64_t> pos;     // [param index * world + rank]: start of that slice
    std::vector<uint64_t> extra;   // per rank: its part's `extra` elements after the slices
    uint64_t total = 0;
  };
  BucketLayout bucket_layout(int bucket, int extra) const;
  // The agreement reduced with each bucket: ranks with the gradient, with
  // an overflow, abandoning the step.
  static constexpr int kDpFlags = 3;
  // have: this rank has a new gradient (else it adds zeros); first: the
  // step's first reduction of the bucket (overwrites grad32). flags: this
  // rank's kDpFlags in, their sums over ranks out; the slices are added to
  // grad32 only when some rank had the gradient and none flagged more.
  absl::Status reduce_bucket(int bucket, bool have, bool first, float* flags);
  absl::Status accumulate_reduced(int bucket, const float* mine, bool first, float* flags);
  absl::Status gather_bucket(int bucket);
  absl::Status publish_bucket(int bucket);
  absl::Status swap_in_update();
  bool update_complete() const;
  absl::Status drain_worker();
  absl::Status finish_pending_update();
  Counters counters() const;
  // finish_step in two halves (finish_step_local / finish_step_global):
  // `finishing` holds the result between them.
  absl::Status run_finish_local(StepGradStats* local);
  absl::Status run_finish_global(StepGradStats global);
  OptimizerStepResult finishing;
  std::atomic<bool> finish_half{false};  // run_finish_local succeeded; global comes next
  absl::Status apply_step(bool apply, OptimizerStepResult* r);
  absl::Status undo_step(absl::Status status);
  StepArgs step_args(double grad_scale, int64_t step) const;

  // Store access between steps.
  offload::Tier param_tier(const ParamRec& p) const;
  static offload::TensorId state_id(const ParamRec& p, StateKind kind);
  absl::Status copy_in(offload::TensorView view, offload::Tier tier, const void* src,
                       uint64_t bytes);
  absl::Status copy_out(offload::TensorView view, offload::Tier tier, void* dst, uint64_t bytes);
  absl::Status read_raw(offload::TensorId id, offload::Tier tier, void* dst, uint64_t bytes);
  absl::Status write_raw(offload::TensorId id, offload::Tier tier, const void* src, uint64_t bytes);
  // The framework's copy of a kHost / kDevice param from the store's.
  absl::Status write_binding(const ParamRec& p, const void* src);
  absl::Status check_handle(ParamHandle p) const;
  // A handle the caller got from add_param (a programming error otherwise).
  const ParamRec& rec(ParamHandle p) const {
    STRATA_CHECK(p >= 0 && p < static_cast<int>(params.size()));
    return params[p];
  }

  // checkpoint.cc
  absl::StatusOr<nlohmann::json> checkpoint_meta(
      const std::function<absl::StatusOr<nlohmann::json>(const void*, uint64_t)>& sink,
      const nlohmann::json& user_meta);
  absl::Status save(const std::string& dir, const nlohmann::json& user_meta);
  absl::Status save_async(const std::string& dir, const nlohmann::json& user_meta);
  absl::Status wait_for_save();
  absl::Status load(const std::string& dir, bool weights_only);
  // Data parallel (checkpoint.cc): one shard per rank, resharded on load.
  absl::Status save_shards(const std::string& dir, const nlohmann::json& user_meta);
  absl::Status load_shards(const std::string& dir, bool weights_only);
  absl::Status restore_counters_and_bindings(const Checkpoint& ck, bool weights_only,
                                             std::string_view ctx);

  config::DsConfig config;
  gpu::Device* device = nullptr;
  OffloadOptimizerOptions options;
  bool finalized = false;
  gpu::StreamId stream = 0;
  bool have_stream = false;
  DType dtype = DType::kFloat32;
  offload::Tier opt_tier = offload::Tier::kHost;
  cpu_adam::OptimizerKind kind = cpu_adam::OptimizerKind::kAdamW;
  std::vector<GroupHyperparams> groups;
  std::vector<ParamRec> params;
  std::vector<std::vector<ParamHandle>> buckets;
  bool has_device_bindings = false;
  Placement plan;
  std::unique_ptr<swap::IoEngine> own_io;
  std::vector<std::string> swap_files;
  std::vector<ScratchLock> swap_locks;  // own swap_files (engine/swap_scratch.h)
  std::unique_ptr<offload::TieredStore> store;
  std::unique_ptr<LossScaler> scaler;  // fp16 only
  std::unique_ptr<LrSchedule> schedule;
  int64_t gas = 1;
  int64_t micro_batches = 0;
  int64_t steps = 0;
  int64_t adam_step = 0;
  std::future<absl::Status> pending_save;
  CheckpointLoadStats last_load;

  // The step in flight (bucket state written under grad_mu or by the
  // worker, read by the step's thread once the worker is drained).
  bool overlap = false;
  bool dpu = false;
  bool update_pending = false;
  std::atomic<bool> in_step{false};  // read by grad_ready on any thread
  Counters before;                   // at begin_step
  offload::StoreStats stats_before;
  int64_t unsaved_writes = 0;
  absl::Status partly_stepped_status;
  std::unique_ptr<OrderedWorker> worker;
  std::mutex grad_mu;  // grad_ready from several threads
  std::atomic<bool> overflow{false};
  std::optional<double> external_scale;
  double loss_scale = 1;
  StepArgs spec_args;            // the speculative steps': clip coefficient 1
  std::vector<int> calls;        // per bucket: grad_ready calls this step
  std::vector<int> stats_calls;  // per bucket: the call its grad_stats are of
  std::atomic<int> early_rollbacks{0};
  std::chrono::steady_clock::time_point step_start, last_grad;
  bool backward_reported = false;
  double last_backward_seconds = 0;
  double last_host_seconds = 0;
  std::unique_ptr<Speculation> spec;            // overlap mode only
  std::vector<cpu_adam::GradStats> grad_stats;  // per bucket, summed in bucket order
  // Per bucket: the call whose gradient is still in its source, not in
  // grad32 (the fused pass reads it there); 0: grad32 holds it all.
  std::vector<int> pending_call;
  std::vector<int> next_done;  // per bucket: params the delayed update wrote into param_next
  std::atomic<int64_t> grad_ns{0};
  std::atomic<int64_t> optimizer_ns{0};
  int64_t grad_ns_reported = 0;
  int64_t optimizer_ns_reported = 0;
  // Bytes the optimizer's passes (steps, rollback copies) moved through
  // memory: what optimizer_ns was spent on.
  std::atomic<uint64_t> optimizer_bytes{0};
  uint64_t optimizer_bytes_reported = 0;
  // kDevice gradient copy-out, one param at a time: sized at start to the
  // largest and pinned, so the D2H runs at the pinned rate (registered
  // unless the device refused; then pageable).
  std::vector<uint8_t> staging;
  bool staging_registered = false;
  std::vector<gpu::EventId> bucket_events;  // per bucket with kDevice params
  std::vector<char> bucket_has_device;

  // Data parallel (options.comm with world > 1).
  dist::Communicator* comm = nullptr;
  int world = 1;
  int rank = 0;
  std::vector<int> reported_round;  // per bucket: the round it was last reported in
  std::vector<int> reductions;      // per bucket: reductions this step (equal on every rank)
  // Rounds are the step's micro-batches; under grad_mu with dp_cv.
  std::thread dp_thread;
  std::condition_variable dp_cv;
  int dp_open = -1, dp_closed = -1, dp_done = -1;
  bool dp_stop = false;
  bool dp_aborting = false;
  bool dp_abort_told = false;  // a collective carried dp_aborting
  // What the reduction thread waits for: a bucket's report, the next round
  // (kDpIdle), or nothing (kDpBusy: reducing, or not started).
  static constexpr int kDpIdle = -1, kDpBusy = -2;
  int dp_wait_bucket = kDpBusy;
  bool dp_comm_held = false;  // a DpCommTurn is using the communicator
  absl::Status dp_error;
  std::atomic<bool> dp_overflow_agreed{false};
  std::vector<std::optional<gpu::EventId>> grad_events;  // per bucket: kDevice gradient written
  std::vector<float> dp_whole, dp_part;  // a bucket's fp32 gradient, this rank's part of it
  std::vector<uint8_t> dp_bytes;         // a bucket's compute params, gathered
  // Reduction on the device (dp_bucket_device[b]: stage 1 to 3, the
  // optimizer offloaded, every param of bucket b kStore, and the
  // communicator can work on the device's memory): the gradients are packed
  // into dp_dev_whole by the device, reduced there, and only this rank's
  // part crosses to the host; the device copies of the gradients are then
  // dropped unwritten. Stage 1/2 such buckets with host-homed params are
  // also gathered there (dp_gather_device[b]).
  bool dp_device = false;
  // Any param_sliced (ZeRO-3 across ranks) and the whole params
  // acquire_full_params handed out, per bucket (device memory, freed on release).
  bool params_sliced = false;
  std::vector<std::vector<void*>> full_params;
  // Gathers the bucket's whole params into `out` (empty on error), on
  // gather_stream: its host waits do not wait for the framework's work on
  // `stream`, which may still be using another bucket's.
  absl::Status gather_full_params(int bucket, std::vector<void*>* out);
  // ZeRO-3 prefetch by the recorded order: gather_trace holds the buckets
  // acquire_full_params took in the last step that finished (recorded in
  // gather_recording from begin_step); while a step follows it
  // (gather_on_trace, at gather_pos), release_full_params gathers the next
  // bucket of the trace into `prefetched` before it waits for the released
  // bucket's work, so the host's gather (H2D of the slices, the collective)
  // runs while the device computes. Every rank records the same order, so
  // the ranks prefetch the same buckets at the same point of their
  // collective order (the gather waits its DpCommTurn as a synchronous one
  // does). A failed prefetch is returned by the acquire it was for.
  std::vector<int> gather_trace, gather_recording;
  size_t gather_pos = 0;
  bool gather_on_trace = false;
  int prefetched_bucket = -1;
  std::vector<void*> prefetched;
  absl::Status prefetch_error;
  int64_t prefetched_gathers = 0;  // acquires served by a prefetch
  gpu::StreamId gather_stream = 0;
  bool have_gather_stream = false;
  // The whole params of a bucket live in a slot: one device buffer the
  // size of the largest bucket's params (each param 256-byte aligned),
  // taken from gather_slots_free (allocated only when none is free: the
  // first step), and given back on release, so a steady step allocates and
  // frees no device memory for its gathers (on CUDA both synchronise the
  // whole device, which would also wait for the prefetch's overlap). The
  // collective's packed layout has one buffer (gather_packed), used only
  // during a gather. A bucket's slot is its first param's pointer.
  std::vector<void*> gather_slots_free, gather_slots_all;
  uint64_t gather_slot_bytes = 0, gather_packed_bytes = 0;
  void* gather_packed = nullptr;
  absl::StatusOr<void*> take_gather_slot();
  // Back to the free list (the caller waited for the work using it).
  void give_back_slot(std::vector<void*>* whole_params);
  // Frees a prefetch not taken (the trace was left, the step ended).
  void drop_prefetched();
  // The next bucket of the trace, or -1 off the trace or at its end.
  int next_on_trace() const;
  absl::Status pack_and_gather_slices(int bucket, const BucketLayout& l, uint8_t* packed);
  std::vector<char> dp_bucket_device;  // per bucket
  // Per bucket: step_bucket writes the rank's updated slices into
  // dp_param_part (rank-major, as the bucket's part of the gather layout)
  // instead of the params; gather_bucket sends them H2D and all_gathers
  // them into dp_dev_gather, whence each param's device copy is rewritten:
  // its home (Placement::compute_home), or left dirty over a host home
  // (the store writes it back only if it is evicted or read on the host).
  std::vector<char> dp_gather_device;
  std::vector<uint8_t> dp_param_part;  // the largest part, registered with the device
  bool dp_param_part_registered = false;
  void* dp_dev_gather = nullptr;  // compute dtype, the largest bucket's layout
  void* dp_dev_whole = nullptr;   // fp32, the largest bucket's layout (with flags)
  void* dp_dev_part = nullptr;    // fp32, this rank's largest part
  // The dtype that part crosses PCIe in (ds_config communication_data_type).
  DType dp_wire = DType::kFloat32;
  void* dp_dev_part16 = nullptr;    // it rounded to dp_wire when 16-bit (else null)
  std::vector<uint16_t> dp_part16;  // that, on the host
  gpu::StreamId dp_stream = 0;      // the reduction thread's copies and casts
  bool have_dp_stream = false;
  // Bytes the optimizer itself moved over PCIe (the reduction's slices),
  // added to the step's device-tier bytes beside the store's.
  std::atomic<uint64_t> dp_d2h_bytes{0}, dp_h2d_bytes{0};
  uint64_t dp_d2h_reported = 0, dp_h2d_reported = 0;
};

}  // namespace strata::engine
