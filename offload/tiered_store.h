// TieredStore: every tensor of a training run, placed across GPU memory,
// pinned host memory and NVMe, moved ahead of need within fixed budgets.
//
// A tensor has a spec (name, numel, dtype, role) and a home tier, where its
// authoritative copy lives: kDevice (never offloaded), kHost (the host
// arena) or kNvme (an extent of the swap file). Upper tiers hold caches
// of it: a device copy of a host- or NVMe-homed tensor, a host copy of an
// NVMe-homed one. Each copy has a residency: absent, loading, resident,
// dirty, writing.
//
// acquire(id, tier, mode) blocks until the tensor is resident on `tier` and
// pins it there; release(id, tier, dirty) unpins it and, when dirty, marks it
// so. Nothing pinned is ever evicted. The budget of each tier is never
// exceeded: when a tier is full the store evicts, and when everything in it
// is pinned acquire() fails with ResourceExhausted naming the tier, its
// budget and what is pinned.
//
// Write-back and durability. A dirty copy is written to the tier below
// (device -> host -> NVMe) before it is dropped, and the write has completed
// when the copy is dropped. Write-back never overwrites a copy someone holds:
// it waits (up to pinned_wait_ms) until readers of the copy below release
// it. What "reached the tier below" survives:
//   * device -> host: the process (host memory).
//   * host -> NVMe: the process too; the kernel holds the data (O_DIRECT: the
//     drive accepted it) but nothing is fsync'd, so a power loss or kernel
//     crash may lose it. The swap file is scratch, recreated by every run,
//     so nothing needs more; an fsync per eviction would cost NVMe
//     throughput for nothing.
//   * Write-behind (Options::write_behind): when the host tier needs room,
//     dirty host copies of NVMe-homed tensors go to the I/O engine at once,
//     several in flight, each split into aio block_size requests up to
//     queue_depth per drive. The copy is kWriting meanwhile (an acquire of it
//     waits, then reloads) and its host block is freed by the write's
//     completion, never earlier: the acquiring thread waits only until enough
//     of those writes have landed. A failed write leaves the copy dirty, is
//     kept in background_error() (naming the tensor and the swap file) and
//     is returned by the next acquire that needs host room.
//   * flush() is the durability point: every dirty copy reaches its home
//     tier, and the swap file is committed (fsync'd extents, then its header,
//     swap/swap_file.h): reopenable and power-loss safe. Checkpoints do not
//     rely on the swap file; they are written from acquired views.
//
// Schedule: from begin_step() of the first step to begin_step() of the
// next, the order of acquires is recorded per tier (the trace: one cycle,
// including acquires between the steps, as a delayed update makes), leaving
// out acquires of copies homed on that tier (never moved, and often from
// another thread: gradients land in the host tier while the optimizer reads
// states). From then on each acquire prefetches, on the store's mover
// threads, the tensors not yet resident among the next prefetch_window_bytes
// of the cycle (a distance: resident ones count, so read-ahead never reaches
// past the stretch Belady keeps resident and evicts it), a prefetch whose
// acquire came first is dropped, and eviction drops the copy whose next use
// in the cycle is furthest away (Belady's rule, exact because the trace
// repeats).
// Read-ahead (Options::read_ahead): a mover submits a host prefetch from
// NVMe and goes on to the next one, so the reads of several tensors are in
// flight at once (kLoading until their completion; a failed one is kept in
// background_error()); copies below the device tier move on the mover thread
// itself. The cycle may resume at another place than where it stopped (one
// jump is allowed: a step cut short, a delayed update crossing the step
// boundary at another tensor; tensors it has not reached again when the
// recording ends extend the cycle); a second acquire off the trace in one step
// marks the trace changed, and it is recorded again from the
// next step. Without a trace, eviction is least recently used.
//
// Device memory: every device-tier copy (device-homed tensors and device
// caches alike) is a block of one DevicePool that finalize() takes from the
// device, so acquire, eviction and release never call Device::allocate or
// free (on CUDA those synchronise the whole device). The pool holds what the
// device budget can hold with every block rounded up to 256 bytes (or
// device_pool_bytes when set), never more than all tensors together; when a
// copy finds no free range large enough though the budget has room (the pool
// fragmented), the store evicts one more copy and tries again, as the host
// arena does. Pinned copies cannot move, so the pool places large blocks
// from its top and small ones from its bottom (device_pool.h): a copy left
// pinned does not split the span a large one needs. Should pinned copies
// still split it past pinned_wait_ms, the ResourceExhausted says the budget
// had room and names the largest free range.
//
// Stream order (device <-> host moves): a copy between the device and the
// host is enqueued on one of the store's streams and never waited for by
// the thread that starts it. Each copy keeps the device events of the work
// that touches it (loads into it, transfers reading it, the caller's
// kernels reported through release_after); the next user orders itself after
// them: acquire_on() makes the caller's stream wait on the device
// (stream-wait-event), acquire() waits on the host, and only when an event
// has not completed yet (query first, so a finished transfer costs no host
// synchronisation). A freed copy's events pass to the next copy allocated on
// its tier, so a block is not reused by a transfer before the work still
// reading or writing it has finished, and neither release nor eviction
// waits. release_after() of a dirty device copy whose tier below is its home
// starts the copy back (D2H) at once, in stream order after the caller's
// work (the gradients leave the device while backward goes on).
// synchronize(stream) is the one host wait a schedule needs to see all of it.
//
// Threading: all methods are thread-safe; acquire() may be called from
// several threads (the engine's compute, optimizer and I/O threads). The
// store owns the host arena blocks, device memory and swap file it uses;
// views stay valid while pinned. Transfers run outside the store's lock.
// Several readers may hold one copy; the caller that releases a copy dirty
// must have been its only writer. A write acquire (kWrite, kReadWrite)
// returns once no load is copying from the copy, and prefetches do not copy
// from a copy someone holds, so loads never read a copy being written.
//
// Errors: each method below says what it returns and what an error leaves.
// No method throws; misuse that is a programming error (an id never
// registered, passed to residency() or spec()) stops the process.
//
//   TieredStore::Options o{.device = dev, .host_budget_bytes = 8 << 30, ...};
//   auto store = TieredStore::create(o);
//   TensorId w = *(*store)->register_tensor({"h.0.mlp.w", n, DType::kFloat32,
//                                            TensorRole::kMaster32, Tier::kNvme});
//   STRATA_RETURN_IF_ERROR((*store)->finalize());
//   auto view = (*store)->acquire(w, Tier::kHost, Access::kReadWrite);
//   ... update view->data ...
//   STRATA_RETURN_IF_ERROR((*store)->release(w, Tier::kHost, /*dirty=*/true));
#pragma once

#include <array>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "core/dtype.h"
#include "core/trace.h"
#include "gpu/device.h"
#include "offload/device_pool.h"
#include "offload/host_arena.h"
#include "swap/io_engine.h"
#include "swap/swap_file.h"

namespace strata::offload {

enum class Tier : uint8_t { kDevice = 0, kHost = 1, kNvme = 2 };
inline constexpr int kTierCount = 3;
const char* tier_name(Tier t);  // "device", "host", "nvme"

enum class Residency : uint8_t { kAbsent, kLoading, kResident, kDirty, kWriting };
const char* residency_name(Residency r);

enum class TensorRole : uint8_t { kParam16, kMaster32, kExpAvg, kExpAvgSq, kGrad };

// kWrite: the caller overwrites the whole tensor, so nothing is loaded.
enum class Access : uint8_t { kRead, kWrite, kReadWrite };

using TensorId = uint32_t;

struct TensorSpec {
  std::string name;
  uint64_t numel = 0;
  DType dtype = DType::kFloat32;
  TensorRole role = TensorRole::kMaster32;
  Tier home = Tier::kHost;
  // A host-homed tensor a run may never touch (the fp32 gradient accumulator
  // at gradient_accumulation_steps 1): its home copy is allocated by its
  // first acquire (zero-filled, as finalize() fills the others) instead of
  // by finalize(), and stays from then on. Until then its bytes of the host
  // budget cache NVMe-homed tensors (they are evicted to make room for it).
  // The budget still counts it at finalize(), so it always fits.
  // InvalidArgument at register_tensor for another home tier.
  bool allocate_on_use = false;
};

struct TensorView {
  void* data = nullptr;  // device memory for kDevice, host memory otherwise
  uint64_t bytes = 0;
};

struct TierStats {
  uint64_t budget_bytes = 0;
  uint64_t used_bytes = 0;
  uint64_t peak_bytes = 0;
  uint64_t hits = 0;      // acquires that found the copy resident
  uint64_t misses = 0;    // acquires that had to wait for it
  uint64_t stall_ns = 0;  // time acquires spent waiting
  // Device and host: bytes loaded into this tier from the one below, and
  // written back from it. NVMe: bytes written to disk, and read from it.
  uint64_t bytes_in = 0;
  uint64_t bytes_out = 0;
  uint64_t evictions = 0;
  uint64_t prefetches = 0;  // loads started ahead of an acquire
};

struct StoreStats {
  std::array<TierStats, kTierCount> tiers;
  uint64_t trace_length = 0;   // acquires per step of non-home copies, all tiers
  uint64_t trace_changes = 0;  // times a recorded trace was found stale
  uint64_t steps = 0;
};

class TieredStore {
 public:
  struct Options {
    gpu::Device* device = nullptr;  // required when any tensor uses the device tier
    uint64_t device_budget_bytes = 0;
    // The device pool's size; 0: derived from device_budget_bytes (above).
    // Set it from a plan that knows the tier's working set.
    uint64_t device_pool_bytes = 0;
    uint64_t host_budget_bytes = 0;
    gpu::Device* pin_device = nullptr;  // pin the host arena for DMA with this device
    // NVMe tier: the engine and the swap file's stripe paths (one file per path).
    swap::IoEngine* io = nullptr;
    std::vector<std::string> swap_paths;
    bool verify_checksums = true;
    uint64_t prefetch_window_bytes = uint64_t{256} << 20;
    int mover_threads = 2;
    // The NVMe pipeline (see above). Off: each NVMe transfer runs to its end
    // on the thread that needs it (what a comparison benchmark measures).
    bool write_behind = true;
    bool read_ahead = true;
    // How long an acquire waits for pinned copies to be released before it
    // reports the tier as full.
    int64_t pinned_wait_ms = 5000;
    TraceRecorder* trace = nullptr;  // optional: every move becomes an event
  };

  // InvalidArgument: mover_threads < 1. The host arena's errors
  // (ResourceExhausted when host_budget_bytes cannot be mapped or pinned).
  // On error nothing is left behind.
  static absl::StatusOr<std::unique_ptr<TieredStore>> create(const Options& options);
  // Stops the movers and waits for the NVMe reads and writes in flight;
  // does not flush (call flush() first).
  ~TieredStore();
  TieredStore(const TieredStore&) = delete;
  TieredStore& operator=(const TieredStore&) = delete;

  // Registration happens before finalize(); names are unique.
  // FailedPrecondition: after finalize(). InvalidArgument: numel 0, or the
  // tensor is larger than its home tier's budget (NVMe-homed ones: the host
  // budget they are staged through). AlreadyExists: the name is taken.
  // On error nothing is registered.
  absl::StatusOr<TensorId> register_tensor(const TensorSpec& spec);
  // Allocates home storage: the device pool and the device-homed copies in
  // it, host blocks, the swap file
  // (preallocated: a full disk fails here, before training starts).
  // FailedPrecondition: called twice. InvalidArgument: a device-homed tensor
  // without a device, NVMe-homed tensors without io / swap_paths.
  // ResourceExhausted: the tensors homed on a tier exceed its budget, the
  // device cannot hold the device pool (the message names its size), or an
  // allocation fails. The swap file's errors (a full disk names the path and
  // the bytes). On error nothing stays allocated and finalize() may be
  // called again (a swap file already created on disk stays there, empty).
  absl::Status finalize();

  // FailedPrecondition: before finalize(); the store has no device; a
  // modified copy of the tensor on a tier above is still held (release it
  // first); a modified copy above must be written back into a copy below
  // that stays held past pinned_wait_ms. InvalidArgument: unknown id, tier
  // kNvme, or a tier above the tensor's home. ResourceExhausted: the tier
  // cannot make room because what it holds stays pinned past
  // pinned_wait_ms. The swap file's and the device's errors (DataLoss for a
  // torn extent). On error nothing is pinned and no data is lost: a copy
  // whose load failed is absent, copies written back on the way stay
  // written back (clean, valid), and a write-back that failed leaves its
  // copy dirty. The acquire still counts in the step's trace.
  absl::StatusOr<TensorView> acquire(TensorId id, Tier tier, Access access);
  // As acquire(), for work the caller submits to `stream`: instead of
  // waiting on the host for device work still moving or using the copy,
  // the stream waits for it on the device. The view may be used by work on
  // `stream` only; release it with release_after() on the same stream.
  absl::StatusOr<TensorView> acquire_on(TensorId id, Tier tier, Access access,
                                        gpu::StreamId stream);
  // InvalidArgument: unknown id or tier. FailedPrecondition: the copy is not
  // acquired, or `dirty` while the tensor's copy on a tier above is held or
  // modified (one tier is written at a time). Everything is checked before
  // anything changes: on error the copy stays acquired and every residency
  // is as it was. On success with `dirty`, copies above are dropped (they
  // hold old data) and a non-home copy becomes dirty.
  absl::Status release(TensorId id, Tier tier, bool dirty);
  // The tensor's modified copy on `tier` is no longer needed (a gradient
  // already consumed where it lies): it is marked clean, so it is never
  // written back (a transfer for nothing), and stays resident, so a caller
  // that overwrites it next (Access::kWrite) finds it there instead of a
  // prefetch reloading the copy below. Until overwritten its contents are
  // unspecified (the copy below keeps what it held). No copy or a clean
  // one: nothing to do. InvalidArgument: unknown id or tier, or `tier` is
  // the tensor's home. FailedPrecondition: the copy is held or being
  // moved. On error nothing changes.
  absl::Status abandon_changes(TensorId id, Tier tier);
  // Exchanges the contents of two tensors of one size and home tier (host
  // or device) by swapping their home copies, so neither is copied: `a`
  // reads as `b` did and `b` as `a` did. Their copies on other tiers hold
  // what the other name held and are dropped. Device work still using a
  // home copy moves with it (whoever acquires the copy next waits for it).
  // Moves in flight of either (a prefetch) are waited for. InvalidArgument:
  // an unknown id, a == b, sizes or home tiers that differ, or an NVMe
  // home. FailedPrecondition: a copy of either is held, or modified on a
  // tier other than home (release or flush it first). On error nothing
  // changes.
  absl::Status exchange(TensorId a, TensorId b);
  // Releases several copies (as release()) once the work submitted to
  // `stream` so far has finished, without waiting for it: the copies keep
  // an event of that work, and whoever reuses them orders itself after it.
  // With `dirty`, device copies whose home is the host tier are copied back
  // at once (D2H on a store stream after that work) unless the host copy is
  // held. Errors as release() (checked per copy: the copies before a failed
  // one are released), and the device's when the copy back cannot be
  // enqueued (the copy stays dirty; nothing is lost). `copy_back` false
  // keeps dirty copies on the device without that copy (a gradient reduced
  // where it lies and then abandon_changes()d: copying it would move it
  // over PCIe for nothing); it is written back only if evicted.
  absl::Status release_after(const std::vector<TensorId>& ids, Tier tier, bool dirty,
                             gpu::StreamId stream, bool copy_back = true);
  // The host waits, once, until the work submitted so far to `stream` and
  // every transfer the store has enqueued have finished (the store's
  // streams join one on the device first). The device's errors.
  absl::Status synchronize(gpu::StreamId stream);
  // Starts loading onto `tier` without waiting or pinning; never evicts a
  // copy needed sooner than this one. Best effort: a full tier or a bad id
  // skips it; a failed load is kept in background_error().
  void prefetch(TensorId id, Tier tier);
  // Writes every dirty copy down to its home tier and commits the swap file
  // (the durability point above). FailedPrecondition: a dirty copy is still
  // held, or the copy it is written into stays held past pinned_wait_ms.
  // The swap file's and the device's errors. On error the copies written
  // back so far are clean, the others stay dirty, the swap file stays
  // uncommitted, and flush() may be called again.
  absl::Status flush();

  // Never fail.
  void begin_step();
  void end_step();

  // `id` must be registered (checked: stops the process otherwise).
  Residency residency(TensorId id, Tier tier) const;
  const TensorSpec& spec(TensorId id) const;
  StoreStats stats() const;
  // The first error a background move hit (prefetches report nothing else).
  absl::Status background_error() const;

 private:
  // A device event the store recorded, shared by every copy its work
  // touched; it returns to the store's pool when the last holder drops it.
  using EventRef = std::shared_ptr<const gpu::EventId>;
  struct Copy {
    Residency state = Residency::kAbsent;
    // Device work on this copy (or, after allocation, on the block's previous
    // owner) that may not have finished; pruned when found complete.
    std::vector<EventRef> pending;
    void* data = nullptr;
    HostBlock block;            // host copies
    int pins = 0;               // acquires and transfers reading it
    int transfers_reading = 0;  // loads copying from it now (counted in pins too)
    uint64_t last_use = 0;
    bool queued = false;  // a prefetch job for it is waiting
  };
  struct Tensor {
    TensorSpec spec;
    uint64_t bytes = 0;
    uint64_t padded = 0;  // 4 KiB multiple: what host blocks and extents hold
    std::array<Copy, kTierCount> copies;
    bool nvme_written = false;  // the extent holds data (else it reads as zeros)
    std::array<std::vector<uint64_t>, kTierCount> uses;  // positions in the trace, per tier
  };
  struct Job {
    TensorId id;
    Tier tier;
    // A trace prefetch is due when the tier's trace has matched this many
    // acquires; a job that runs after that (its acquire came first and
    // loaded the copy, and it may be evicted since) loads nothing: reading
    // it again would evict a copy needed sooner. 0: prefetch(), never stale.
    uint64_t due = 0;
  };

  explicit TieredStore(const Options& options);
  absl::Status check_tier(const Tensor& t, Tier tier) const;
  // Makes the copy resident; called with the lock held, may drop it during
  // transfers. `prefetch` forbids evicting anything needed sooner.
  // `nested`: a load of the tier below for a load above, which waits for it
  // (never read ahead asynchronously: a failure must reach the caller).
  absl::Status load_locked(std::unique_lock<std::mutex>& lock, TensorId id, Tier tier,
                           bool need_data, bool prefetch, bool nested = false);
  // Evicts until `bytes` more fit the tier's budget; with evict_one, evicts
  // at least one copy even when they already fit (a fragmented host arena).
  absl::Status make_room_locked(std::unique_lock<std::mutex>& lock, Tier tier, uint64_t bytes,
                                uint64_t protect_before, bool evict_one = false);
  absl::Status write_back_locked(std::unique_lock<std::mutex>& lock, TensorId id, Tier tier);
  // The NVMe pipeline: submit with the lock held (dropped around the
  // submission); the finish_* callbacks run on an engine thread.
  absl::Status start_write_behind_locked(std::unique_lock<std::mutex>& lock, TensorId id);
  void finish_write_behind(TensorId id, int64_t start_ns, const absl::Status& status);
  absl::Status start_read_ahead_locked(std::unique_lock<std::mutex>& lock, TensorId id);
  void finish_read_ahead(TensorId id, int64_t start_ns, const absl::Status& status);
  void trace_io(const char* name, int64_t start_ns, uint64_t bytes) const;
  absl::Status allocate_copy_locked(Tensor& t, Tier tier);
  // The device pool's size by the rule in the header comment (0: no pool).
  uint64_t device_pool_bytes_locked() const;
  void free_copy_locked(Tensor& t, Tier tier);
  // Device <-> host moves are enqueued after the events in `after` and
  // return the event of the copy (`*done`); NVMe moves run to their end.
  absl::Status transfer(Tensor& t, Tier from, Tier to, const std::vector<EventRef>& after,
                        EventRef* done);
  absl::StatusOr<TensorView> acquire_impl(TensorId id, Tier tier, Access access,
                                          std::optional<gpu::StreamId> stream);
  absl::Status release_locked(std::unique_lock<std::mutex>& lock, TensorId id, Tier tier,
                              bool dirty);
  // Copies back (D2H) the dirty device copies of `ids` whose host copy is
  // their home and free, after `after`; one event for all of them.
  absl::Status write_back_async_locked(std::unique_lock<std::mutex>& lock,
                                       const std::vector<TensorId>& ids, const EventRef& after);
  // The store's event pool; record_event on `stream`.
  absl::StatusOr<EventRef> record_on(gpu::StreamId stream);
  // Drops the events that have completed.
  void prune(std::vector<EventRef>& events) const;
  // The host waits for the copy's pending events; with `lock`, drops it
  // while waiting (the caller keeps the copy pinned), else waits holding it.
  absl::Status settle_locked(std::unique_lock<std::mutex>* lock, Copy& c);
  uint64_t next_use_locked(TensorId id, Tier tier) const;
  void record_acquire_locked(TensorId id, Tier tier);
  void mover_loop();
  void queue_prefetches_locked(Tier tier);
  absl::StatusOr<gpu::StreamId> take_stream();
  void return_stream(gpu::StreamId s);

  const Options options_;
  std::unique_ptr<HostArena> arena_;
  std::unique_ptr<DevicePool> pool_;  // the device tier's memory, from finalize()
  std::unique_ptr<swap::SwapFile> swap_;
  std::mutex streams_mu_;
  std::vector<gpu::StreamId> free_streams_;  // one per concurrent transfer
  std::vector<gpu::StreamId> all_streams_;
  std::vector<gpu::EventId> free_events_;  // the event pool (under streams_mu_)
  std::vector<gpu::EventId> all_events_;
  gpu::StreamId join_stream_ = 0;  // synchronize(): the streams meet here
  bool has_join_stream_ = false;

  mutable std::mutex mu_;
  std::condition_variable changed_;  // any residency change
  std::vector<Tensor> tensors_;
  bool finalized_ = false;
  std::array<uint64_t, kTierCount> budget_{};
  std::array<uint64_t, kTierCount> used_{};
  StoreStats stats_;
  absl::Status background_error_;
  // Bytes of copies being written behind (freed when their writes land).
  std::array<uint64_t, kTierCount> freeing_{};
  std::array<uint64_t, kTierCount> frees_{};  // copies freed so far, per tier
  // Events of freed copies' device work, inherited by the next allocation.
  std::array<std::vector<EventRef>, kTierCount> freed_pending_;
  int64_t async_io_ = 0;             // pipeline reads and writes in flight
  absl::Status write_behind_error_;  // a failed write-behind not yet reported
  uint64_t clock_ = 0;               // acquire counter, for LRU

  // One trace per tier: the device is acquired by the compute thread and the
  // host by the optimizer threads, each in a repeatable order of its own,
  // while the interleaving between them is not.
  struct TierTrace {
    std::vector<TensorId> order;  // acquires of tensors not homed on the tier
    bool recording = false;
    bool valid = false;
    uint64_t next_pos = 0;  // the position the next acquire should match (cyclic)
    uint64_t matched = 0;   // acquires that followed the trace so far (Job::due)
    bool jumped = false;    // an acquire of this step missed next_pos and jumped
    bool open_end = false;  // recorded, not yet come round: may still grow at its end
  };
  std::array<TierTrace, kTierCount> traces_;
  bool in_step_ = false;

  std::deque<Job> jobs_;
  bool stopping_ = false;
  std::vector<std::thread> movers_;
};

}  // namespace strata::offload
