#include "offload/tiered_store.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/log.h"
#include "core/status.h"

namespace strata::offload {
namespace {

constexpr uint64_t kNever = std::numeric_limits<uint64_t>::max();
// How often a wait past pinned_wait_ms looks again at moves in flight (a
// safety net: every move notifies when it ends).
constexpr std::chrono::milliseconds kInFlightRecheck{100};

int idx(Tier t) { return static_cast<int>(t); }
Tier below(Tier t) { return static_cast<Tier>(idx(t) + 1); }
// Bytes a copy occupies in its tier: host copies are padded to 4 KiB (what
// host blocks and swap extents hold), device copies are exact.
uint64_t footprint(uint64_t bytes, uint64_t padded, Tier tier) {
  return tier == Tier::kHost ? padded : bytes;
}

bool holds_data(Residency r) { return r == Residency::kResident || r == Residency::kDirty; }

}  // namespace

const char* tier_name(Tier t) {
  switch (t) {
    case Tier::kDevice:
      return "device";
    case Tier::kHost:
      return "host";
    case Tier::kNvme:
      return "nvme";
  }
  return "?";
}

const char* residency_name(Residency r) {
  switch (r) {
    case Residency::kAbsent:
      return "absent";
    case Residency::kLoading:
      return "loading";
    case Residency::kResident:
      return "resident";
    case Residency::kDirty:
      return "dirty";
    case Residency::kWriting:
      return "writing";
  }
  return "?";
}

TieredStore::TieredStore(const Options& options) : options_(options) {
  budget_[idx(Tier::kDevice)] = options.device_budget_bytes;
  budget_[idx(Tier::kHost)] = options.host_budget_bytes;
  budget_[idx(Tier::kNvme)] = kNever;
  for (int t = 0; t < kTierCount; ++t) stats_.tiers[t].budget_bytes = budget_[t];
}

absl::StatusOr<std::unique_ptr<TieredStore>> TieredStore::create(const Options& options) {
  if (options.mover_threads < 1) return absl::InvalidArgumentError("mover_threads must be >= 1");
  std::unique_ptr<TieredStore> store(new TieredStore(options));
  if (options.host_budget_bytes > 0) {
    STRATA_ASSIGN_OR_RETURN(store->arena_,
                            HostArena::create({.capacity_bytes = options.host_budget_bytes,
                                               .pin_device = options.pin_device}),
                            "creating the host tier");
  }
  for (int i = 0; i < options.mover_threads; ++i) {
    store->movers_.emplace_back([s = store.get()] { s->mover_loop(); });
  }
  return store;
}

TieredStore::~TieredStore() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    jobs_.clear();
  }
  changed_.notify_all();
  for (std::thread& t : movers_) t.join();
  std::unique_lock lock(mu_);
  // Pipeline reads and writes land in host blocks and call back into the
  // store: both must be done before anything is freed.
  changed_.wait(lock, [&] { return async_io_ == 0; });
  if (swap_ != nullptr) {
    lock.unlock();
    // The callbacks have run; this waits for the engine's own bookkeeping of
    // those requests so the swap file closes with nothing in flight.
    (void)options_.io->drain();
    lock.lock();
  }
  for (Tensor& t : tensors_) {
    for (Tier tier : {Tier::kDevice, Tier::kHost}) {
      // Nothing may still copy into or out of a block that goes back.
      (void)settle_locked(nullptr, t.copies[idx(tier)]);
      if (t.copies[idx(tier)].state != Residency::kAbsent) free_copy_locked(t, tier);
    }
  }
  for (std::vector<EventRef>& freed : freed_pending_) {
    for (const EventRef& e : freed) (void)options_.device->synchronize_event(*e);
    freed.clear();
  }
  for (Tensor& t : tensors_) {
    for (Copy& c : t.copies) c.pending.clear();
  }
  if (options_.device != nullptr) {
    std::lock_guard streams(streams_mu_);
    for (gpu::EventId e : all_events_) options_.device->destroy_event(e);
    for (gpu::StreamId s : all_streams_) options_.device->destroy_stream(s);
    if (has_join_stream_) options_.device->destroy_stream(join_stream_);
  }
}

absl::StatusOr<TensorId> TieredStore::register_tensor(const TensorSpec& spec) {
  std::lock_guard lock(mu_);
  if (finalized_) return absl::FailedPreconditionError("register_tensor after finalize()");
  if (spec.numel == 0) return absl::InvalidArgumentError("tensor \"" + spec.name + "\" is empty");
  for (const Tensor& t : tensors_) {
    if (t.spec.name == spec.name) {
      return absl::AlreadyExistsError("tensor \"" + spec.name + "\" registered twice");
    }
  }
  if (spec.allocate_on_use && spec.home != Tier::kHost) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor \"", spec.name, "\": allocate_on_use needs a host-homed tensor (home is ",
        tier_name(spec.home), ")"));
  }
  Tensor t;
  t.spec = spec;
  t.bytes = spec.numel * dtype_size(spec.dtype);
  t.padded = (t.bytes + 4095) & ~uint64_t{4095};
  // A tensor must fit its home tier, and one homed on NVMe must fit the host
  // tier it is staged through; anything else could never be acquired.
  const Tier must_fit = spec.home == Tier::kNvme ? Tier::kHost : spec.home;
  const uint64_t need = footprint(t.bytes, t.padded, must_fit);
  if (need > budget_[idx(must_fit)]) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor \"", spec.name, "\" (", need, " bytes) is larger than the whole ",
                     tier_name(must_fit), " budget of ", budget_[idx(must_fit)],
                     " bytes; raise the budget or split the tensor"));
  }
  tensors_.push_back(std::move(t));
  return static_cast<TensorId>(tensors_.size() - 1);
}

absl::Status TieredStore::finalize() {
  std::unique_lock lock(mu_);
  if (finalized_) return absl::FailedPreconditionError("finalize() called twice");
  // Everything that can be checked is checked before anything is allocated.
  std::vector<swap::TensorSpec> on_nvme;
  std::array<uint64_t, kTierCount> need{};
  for (const Tensor& t : tensors_) {
    const Tier home = t.spec.home;
    if (home == Tier::kNvme) {
      on_nvme.push_back({t.spec.name, t.spec.dtype, t.spec.numel});
      continue;
    }
    if (home == Tier::kDevice && options_.device == nullptr) {
      return absl::InvalidArgumentError("tensor \"" + t.spec.name +
                                        "\" lives on the device but the store has no device");
    }
    need[idx(home)] += footprint(t.bytes, t.padded, home);
    if (need[idx(home)] > budget_[idx(home)]) {
      return absl::ResourceExhaustedError(
          absl::StrCat("tensors homed on the ", tier_name(home), " need more than its budget of ",
                       budget_[idx(home)], " bytes (at \"", t.spec.name,
                       "\"); raise the budget or offload more to the tier below"));
    }
  }
  if (!on_nvme.empty() && (options_.io == nullptr || options_.swap_paths.empty())) {
    return absl::InvalidArgumentError(
        "tensors are placed on NVMe but no swap path is configured; set "
        "offload_optimizer.nvme_path");
  }
  std::unique_ptr<swap::SwapFile> swap;
  if (!on_nvme.empty()) {
    STRATA_ASSIGN_OR_RETURN(swap,
                            swap::SwapFile::create(*options_.io, options_.swap_paths, on_nvme,
                                                   {.checksums = options_.verify_checksums}),
                            "creating the swap file");
  }
  if (const uint64_t pool_bytes = device_pool_bytes_locked(); pool_bytes > 0) {
    STRATA_ASSIGN_OR_RETURN(pool_, DevicePool::create(options_.device, pool_bytes),
                            absl::StrCat("the device tier (budget ", budget_[idx(Tier::kDevice)],
                                         " bytes); lower the device budget or free device memory"));
  }
  // Home copies on the device and host are allocated now and never evicted;
  // a failure frees the ones already allocated, so finalize() may be retried.
  for (TensorId i = 0; i < tensors_.size(); ++i) {
    Tensor& t = tensors_[i];
    const Tier home = t.spec.home;
    if (home == Tier::kNvme || t.spec.allocate_on_use) continue;
    if (absl::Status s = allocate_copy_locked(t, home); !s.ok()) {
      for (TensorId k = 0; k < i; ++k) {
        if (tensors_[k].spec.home != Tier::kNvme && !tensors_[k].spec.allocate_on_use)
          free_copy_locked(tensors_[k], tensors_[k].spec.home);
      }
      pool_.reset();
      return annotate(
          s, absl::StrCat("allocating the ", tier_name(home), " copy of \"", t.spec.name, "\""));
    }
    if (home == Tier::kHost) std::memset(t.copies[idx(home)].data, 0, t.padded);
    t.copies[idx(home)].state = Residency::kResident;
  }
  for (Tensor& t : tensors_) {
    if (t.spec.home != Tier::kNvme) continue;
    t.copies[idx(Tier::kNvme)].state = Residency::kResident;
    used_[idx(Tier::kNvme)] += t.padded;
  }
  swap_ = std::move(swap);
  finalized_ = true;
  return absl::OkStatus();
}

absl::Status TieredStore::check_tier(const Tensor& t, Tier tier) const {
  if (tier == Tier::kNvme) {
    return absl::InvalidArgumentError("tensors are acquired on the device or host, not on NVMe");
  }
  if (idx(tier) > idx(t.spec.home)) {
    return absl::InvalidArgumentError(absl::StrCat("tensor \"", t.spec.name, "\" lives on the ",
                                                   tier_name(t.spec.home), "; it has no ",
                                                   tier_name(tier), " copy"));
  }
  if (tier == Tier::kDevice && options_.device == nullptr) {
    return absl::FailedPreconditionError("the store has no device");
  }
  return absl::OkStatus();
}

absl::StatusOr<TensorView> TieredStore::acquire(TensorId id, Tier tier, Access access) {
  return acquire_impl(id, tier, access, std::nullopt);
}

absl::StatusOr<TensorView> TieredStore::acquire_on(TensorId id, Tier tier, Access access,
                                                   gpu::StreamId stream) {
  return acquire_impl(id, tier, access, stream);
}

absl::StatusOr<TensorView> TieredStore::acquire_impl(TensorId id, Tier tier, Access access,
                                                     std::optional<gpu::StreamId> stream) {
  std::unique_lock lock(mu_);
  if (!finalized_) return absl::FailedPreconditionError("acquire before finalize()");
  if (id >= tensors_.size()) return absl::InvalidArgumentError(absl::StrCat("no tensor ", id));
  Tensor& t = tensors_[id];
  STRATA_RETURN_IF_ERROR(check_tier(t, tier));
  record_acquire_locked(id, tier);
  // Coherence: a newer copy above this tier comes down first.
  for (int up = idx(tier) - 1; up >= 0; --up) {
    Copy& above = t.copies[up];
    while (above.state == Residency::kWriting) changed_.wait(lock);
    if (above.state != Residency::kDirty) continue;
    if (above.pins > 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "\"", t.spec.name, "\" is acquired on the ", tier_name(tier), " while its modified ",
          tier_name(static_cast<Tier>(up)), " copy is still held; release it first"));
    }
    STRATA_RETURN_IF_ERROR(write_back_locked(lock, id, static_cast<Tier>(up)));
  }
  Copy& c = t.copies[idx(tier)];
  TierStats& ts = stats_.tiers[idx(tier)];
  if (holds_data(c.state)) {
    ++ts.hits;
  } else {
    ++ts.misses;
    const int64_t t0 = monotonic_ns();
    for (;;) {
      if (holds_data(c.state)) break;
      if (c.state == Residency::kAbsent) {
        STRATA_RETURN_IF_ERROR(
            load_locked(lock, id, tier, access != Access::kWrite, /*prefetch=*/false),
            absl::StrCat("loading \"", t.spec.name, "\" onto the ", tier_name(tier)));
        continue;
      }
      changed_.wait(lock);  // loading or writing elsewhere
    }
    ts.stall_ns += static_cast<uint64_t>(monotonic_ns() - t0);
  }
  ++c.pins;  // from here on the copy stays put while this waits
  // A writer starts once the loads copying from this copy are done.
  if (access != Access::kRead) {
    changed_.wait(lock, [&] { return c.transfers_reading == 0; });
  }
  queue_prefetches_locked(tier);
  // Device work still moving or using the copy: the caller's stream waits
  // for it on the device, or the host waits here (pinned, so it stays put).
  prune(c.pending);
  if (stream.has_value()) {
    for (const EventRef& e : c.pending) {
      if (absl::Status s = options_.device->wait_event(*stream, *e); !s.ok()) {
        --c.pins;
        changed_.notify_all();
        return annotate(s, absl::StrCat("ordering \"", t.spec.name, "\" on the caller's stream"));
      }
    }
  } else if (!c.pending.empty()) {
    // A wait for a transfer still in flight is a stall like a miss's.
    const int64_t t0 = monotonic_ns();
    absl::Status settled = settle_locked(&lock, c);
    ts.stall_ns += static_cast<uint64_t>(monotonic_ns() - t0);
    if (absl::Status s = settled; !s.ok()) {
      --c.pins;
      changed_.notify_all();
      return annotate(s, absl::StrCat("waiting for the device's work on \"", t.spec.name, "\""));
    }
  }
  return TensorView{c.data, t.bytes};
}

absl::Status TieredStore::release(TensorId id, Tier tier, bool dirty) {
  std::unique_lock lock(mu_);
  return release_locked(lock, id, tier, dirty);
}

absl::Status TieredStore::release_after(const std::vector<TensorId>& ids, Tier tier, bool dirty,
                                        gpu::StreamId stream, bool copy_back) {
  if (ids.empty()) return absl::OkStatus();
  if (options_.device == nullptr) return absl::FailedPreconditionError("the store has no device");
  STRATA_ASSIGN_OR_RETURN(EventRef done, record_on(stream), "marking the end of the caller's work");
  std::unique_lock lock(mu_);
  for (TensorId id : ids) {
    if (id >= tensors_.size()) return absl::InvalidArgumentError(absl::StrCat("no tensor ", id));
    if (idx(tier) >= kTierCount) return absl::InvalidArgumentError("no such tier");
    Copy& c = tensors_[id].copies[idx(tier)];
    if (c.pins > 0) {
      prune(c.pending);
      c.pending.push_back(done);
    }
    STRATA_RETURN_IF_ERROR(release_locked(lock, id, tier, dirty));
  }
  if (dirty && copy_back && tier == Tier::kDevice) {
    return write_back_async_locked(lock, ids, done);
  }
  return absl::OkStatus();
}

absl::Status TieredStore::write_back_async_locked(std::unique_lock<std::mutex>& lock,
                                                  const std::vector<TensorId>& ids,
                                                  const EventRef& after) {
  std::vector<TensorId> moving;
  std::vector<EventRef> waits{after};
  for (TensorId id : ids) {
    Tensor& t = tensors_[id];
    Copy& c = t.copies[idx(Tier::kDevice)];
    Copy& dst = t.copies[idx(Tier::kHost)];
    if (t.spec.home != Tier::kHost || c.state != Residency::kDirty || c.pins > 0 ||
        !holds_data(dst.state) || dst.pins > 0) {
      continue;  // copied back when someone needs it, as before
    }
    c.state = Residency::kWriting;
    ++dst.pins;
    prune(dst.pending);
    waits.insert(waits.end(), dst.pending.begin(), dst.pending.end());
    moving.push_back(id);
  }
  if (moving.empty()) return absl::OkStatus();
  lock.unlock();
  absl::Status s;
  EventRef done;
  {
    TraceScope scope(options_.trace, "d2h", "offload");
    absl::StatusOr<gpu::StreamId> stream = take_stream();
    s = stream.status();
    if (s.ok()) {
      for (const EventRef& e : waits) {
        if (s.ok()) s = options_.device->wait_event(*stream, *e);
      }
      uint64_t bytes = 0;
      for (TensorId id : moving) {
        const Tensor& t = tensors_[id];
        bytes += t.bytes;
        if (s.ok()) {
          s = options_.device->copy_to_host(t.copies[idx(Tier::kHost)].data,
                                            t.copies[idx(Tier::kDevice)].data, t.bytes, *stream);
        }
      }
      scope.arg("bytes", static_cast<int64_t>(bytes));
      if (s.ok()) {
        absl::StatusOr<EventRef> e = record_on(*stream);
        s = e.status();
        if (s.ok()) done = *std::move(e);
      }
      return_stream(*stream);
    }
  }
  lock.lock();
  for (TensorId id : moving) {
    Tensor& t = tensors_[id];
    Copy& c = t.copies[idx(Tier::kDevice)];
    Copy& dst = t.copies[idx(Tier::kHost)];
    --dst.pins;
    if (!s.ok()) {
      c.state = Residency::kDirty;
      continue;
    }
    c.state = Residency::kResident;
    c.pending.push_back(done);
    dst.pending.push_back(done);
    stats_.tiers[idx(Tier::kDevice)].bytes_out += t.bytes;
  }
  changed_.notify_all();
  return annotate(s, "copying gradients back to the host");
}

absl::Status TieredStore::synchronize(gpu::StreamId stream) {
  if (options_.device == nullptr) return absl::FailedPreconditionError("the store has no device");
  gpu::Device& dev = *options_.device;
  std::vector<gpu::StreamId> streams;
  gpu::StreamId join = 0;
  {
    std::lock_guard lock(streams_mu_);
    if (!has_join_stream_) {
      STRATA_ASSIGN_OR_RETURN(join_stream_, dev.create_stream());
      has_join_stream_ = true;
    }
    join = join_stream_;
    streams = all_streams_;
  }
  streams.push_back(stream);
  // The streams meet on the device, then the host waits once.
  std::vector<EventRef> marks;
  for (gpu::StreamId s : streams) {
    STRATA_ASSIGN_OR_RETURN(EventRef e, record_on(s));
    STRATA_RETURN_IF_ERROR(dev.wait_event(join, *e));
    marks.push_back(std::move(e));
  }
  return dev.synchronize_stream(join);
}

absl::StatusOr<TieredStore::EventRef> TieredStore::record_on(gpu::StreamId stream) {
  gpu::Device& dev = *options_.device;
  gpu::EventId id = 0;
  {
    std::lock_guard lock(streams_mu_);
    if (!free_events_.empty()) {
      id = free_events_.back();
      free_events_.pop_back();
    } else {
      STRATA_ASSIGN_OR_RETURN(id, dev.create_event());
      all_events_.push_back(id);
    }
  }
  EventRef e(new gpu::EventId(id), [this](const gpu::EventId* p) {
    std::lock_guard lock(streams_mu_);
    free_events_.push_back(*p);
    delete p;
  });
  STRATA_RETURN_IF_ERROR(dev.record_event(*e, stream));
  return e;
}

void TieredStore::prune(std::vector<EventRef>& events) const {
  std::erase_if(events, [&](const EventRef& e) {
    absl::StatusOr<bool> done = options_.device->query_event(*e);
    return !done.ok() || *done;  // an error surfaces at the next synchronisation
  });
}

absl::Status TieredStore::settle_locked(std::unique_lock<std::mutex>* lock, Copy& c) {
  if (c.pending.empty()) return absl::OkStatus();
  prune(c.pending);
  if (c.pending.empty()) return absl::OkStatus();
  std::vector<EventRef> waits = c.pending;
  if (lock != nullptr) lock->unlock();
  absl::Status s;
  for (const EventRef& e : waits) {
    if (s.ok()) s = options_.device->synchronize_event(*e);
  }
  if (lock != nullptr) lock->lock();
  if (s.ok()) {
    std::erase_if(c.pending, [&](const EventRef& e) {
      return std::find(waits.begin(), waits.end(), e) != waits.end();
    });
  }
  return s;
}

absl::Status TieredStore::release_locked(std::unique_lock<std::mutex>& lock, TensorId id, Tier tier,
                                         bool dirty) {
  if (id >= tensors_.size()) return absl::InvalidArgumentError(absl::StrCat("no tensor ", id));
  if (idx(tier) >= kTierCount) return absl::InvalidArgumentError("no such tier");
  Tensor& t = tensors_[id];
  Copy& c = t.copies[idx(tier)];
  if (c.pins == 0) {
    return absl::FailedPreconditionError(absl::StrCat("release of \"", t.spec.name, "\" on the ",
                                                      tier_name(tier),
                                                      " without a matching acquire"));
  }
  // Validate everything before changing anything, so an error leaves the
  // copy acquired and every residency as it was. Our pin keeps `c` in place
  // while the wait drops the lock.
  if (dirty) {
    // A copy above being written back (kWriting) counts as modified: it may
    // be waiting for our pin, so it is not waited for.
    auto settled = [&] {
      for (int up = idx(tier) - 1; up >= 0; --up) {
        if (t.copies[up].state == Residency::kLoading) return false;
      }
      return true;
    };
    changed_.wait(lock, settled);
    for (int up = idx(tier) - 1; up >= 0; --up) {
      const Copy& above = t.copies[up];
      if (above.state == Residency::kAbsent) continue;
      if (above.pins > 0 || above.state != Residency::kResident) {
        return absl::FailedPreconditionError(absl::StrCat(
            "\"", t.spec.name, "\" was modified on the ", tier_name(tier), " while its ",
            tier_name(static_cast<Tier>(up)), " copy is ", above.pins > 0 ? "held" : "modified",
            " too; only one tier may be written at a time"));
      }
    }
  }
  --c.pins;
  if (dirty) {
    // A home copy has no tier below to go stale against.
    if (tier != t.spec.home) c.state = Residency::kDirty;
    // Coherence: copies above now hold old data and are dropped.
    for (int up = idx(tier) - 1; up >= 0; --up) {
      if (t.copies[up].state != Residency::kAbsent) free_copy_locked(t, static_cast<Tier>(up));
    }
  }
  changed_.notify_all();
  return absl::OkStatus();
}

absl::Status TieredStore::abandon_changes(TensorId id, Tier tier) {
  std::unique_lock lock(mu_);
  if (id >= tensors_.size()) return absl::InvalidArgumentError(absl::StrCat("no tensor ", id));
  if (idx(tier) >= kTierCount) return absl::InvalidArgumentError("no such tier");
  Tensor& t = tensors_[id];
  if (tier == t.spec.home) {
    return absl::InvalidArgumentError(absl::StrCat(
        "abandon_changes of \"", t.spec.name, "\" on the ", tier_name(tier), ", its home tier"));
  }
  Copy& c = t.copies[idx(tier)];
  if (c.state == Residency::kAbsent) return absl::OkStatus();
  if (c.pins > 0 || c.state == Residency::kLoading || c.state == Residency::kWriting) {
    return absl::FailedPreconditionError(
        absl::StrCat("abandon_changes of \"", t.spec.name, "\" on the ", tier_name(tier),
                     " while it is ", c.pins > 0 ? "held" : "being moved"));
  }
  c.state = Residency::kResident;  // was kResident or kDirty
  changed_.notify_all();
  return absl::OkStatus();
}

absl::Status TieredStore::exchange(TensorId a, TensorId b) {
  std::unique_lock lock(mu_);
  if (a >= tensors_.size() || b >= tensors_.size()) {
    return absl::InvalidArgumentError(absl::StrCat("exchange: no tensor ", std::max(a, b)));
  }
  Tensor& ta = tensors_[a];
  Tensor& tb = tensors_[b];
  const std::string what =
      absl::StrCat("exchange of \"", ta.spec.name, "\" and \"", tb.spec.name, "\"");
  if (a == b) return absl::InvalidArgumentError(absl::StrCat(what, ": the same tensor"));
  if (ta.bytes != tb.bytes || ta.padded != tb.padded || ta.spec.home != tb.spec.home) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": they differ in size or home tier (", ta.bytes, " B on the ",
        tier_name(ta.spec.home), ", ", tb.bytes, " B on the ", tier_name(tb.spec.home), ")"));
  }
  const Tier home = ta.spec.home;
  if (home == Tier::kNvme) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": NVMe-homed tensors are copied"));
  }
  // Moves in flight (a prefetch of either onto the device) finish first.
  auto settled = [&] {
    for (const Tensor* t : {&ta, &tb}) {
      for (const Copy& c : t->copies) {
        if (c.state == Residency::kLoading || c.state == Residency::kWriting ||
            c.transfers_reading > 0) {
          return false;
        }
      }
    }
    return true;
  };
  changed_.wait(lock, settled);
  for (const Tensor* t : {&ta, &tb}) {
    for (int k = 0; k < kTierCount; ++k) {
      const Copy& c = t->copies[k];
      if (c.pins > 0 || (k != idx(home) && c.state == Residency::kDirty)) {
        return absl::FailedPreconditionError(
            absl::StrCat(what, ": \"", t->spec.name, "\" is ", c.pins > 0 ? "held" : "modified",
                         " on the ", tier_name(static_cast<Tier>(k)), "; release it first"));
      }
    }
  }
  for (Tensor* t : {&ta, &tb}) {
    for (int k = 0; k < kTierCount; ++k) {
      if (k != idx(home) && t->copies[k].state != Residency::kAbsent) {
        free_copy_locked(*t, static_cast<Tier>(k));
      }
    }
  }
  std::swap(ta.copies[idx(home)], tb.copies[idx(home)]);
  std::swap(ta.copies[idx(home)].queued, tb.copies[idx(home)].queued);  // jobs name the tensor
  changed_.notify_all();
  return absl::OkStatus();
}

void TieredStore::prefetch(TensorId id, Tier tier) {
  std::unique_lock lock(mu_);
  if (id >= tensors_.size() || !finalized_ || !check_tier(tensors_[id], tier).ok()) return;
  if (tensors_[id].spec.home == tier) return;  // nothing to load (allocate_on_use: its acquire)
  Copy& c = tensors_[id].copies[idx(tier)];
  if (c.state != Residency::kAbsent || c.queued) return;
  c.queued = true;
  jobs_.push_back({id, tier});
  changed_.notify_all();
}

absl::Status TieredStore::load_locked(std::unique_lock<std::mutex>& lock, TensorId id, Tier tier,
                                      bool need_data, bool prefetch, bool nested) {
  Tensor& t = tensors_[id];
  Copy& c = t.copies[idx(tier)];
  const uint64_t size = footprint(t.bytes, t.padded, tier);
  const uint64_t protect = prefetch ? next_use_locked(id, tier) : 0;
  STRATA_RETURN_IF_ERROR(make_room_locked(lock, tier, size, protect));
  if (c.state != Residency::kAbsent) return absl::OkStatus();  // someone else got it
  for (;;) {
    absl::Status s = allocate_copy_locked(t, tier);
    if (s.ok()) break;
    if (!absl::IsResourceExhausted(s)) return s;
    // The budget has room but the host arena or the device pool has no block
    // that large: evict one more copy (coalescing its block with its
    // neighbours) and try again.
    STRATA_RETURN_IF_ERROR(make_room_locked(lock, tier, size, protect, /*evict_one=*/true));
    if (c.state != Residency::kAbsent) return absl::OkStatus();
  }
  c.state = Residency::kLoading;
  if (tier == t.spec.home) {
    // An allocate_on_use home copy: it holds zeros until first written, as
    // finalize() leaves the others; the block's previous owner's device
    // work ends first.
    if (absl::Status s = settle_locked(nullptr, c); !s.ok()) {
      free_copy_locked(t, tier);
      changed_.notify_all();
      return s;
    }
    std::memset(c.data, 0, t.padded);
    c.state = Residency::kResident;
    changed_.notify_all();
    return absl::OkStatus();
  }
  if (!need_data) {
    c.state = Residency::kResident;
    changed_.notify_all();
    return absl::OkStatus();
  }
  // The source is the tier below; bring it up first when it is only a cache.
  const Tier from = below(tier);
  Copy& src = t.copies[idx(from)];
  absl::Status status;
  while (!holds_data(src.state)) {
    if (src.state == Residency::kAbsent) {
      status = load_locked(lock, id, from, true, prefetch, /*nested=*/true);
      if (!status.ok()) break;
    } else {
      changed_.wait(lock);
    }
  }
  // A prefetch does not copy from a source someone holds: a holder may be
  // writing it (the copy would be torn, and dropped by the dirty release).
  if (status.ok() && prefetch && src.pins > src.transfers_reading) {
    status = absl::UnavailableError("the source copy is held");
  }
  // The host writes a block from NVMe only once the device work of its
  // previous owner is done (a transfer still reading it).
  if (status.ok() && from == Tier::kNvme) status = settle_locked(nullptr, c);
  if (status.ok() && prefetch && !nested && options_.read_ahead && from == Tier::kNvme &&
      t.nvme_written) {
    status = start_read_ahead_locked(lock, id);
    if (status.ok()) return status;  // finish_read_ahead makes it resident
  } else if (status.ok()) {
    ++src.pins;
    ++src.transfers_reading;
    std::vector<EventRef> after;
    if (from != Tier::kNvme) {
      prune(src.pending);
      prune(c.pending);
      after = src.pending;
      after.insert(after.end(), c.pending.begin(), c.pending.end());
    }
    EventRef done;
    lock.unlock();
    status = transfer(t, from, tier, after, &done);
    lock.lock();
    if (done != nullptr) {  // the copy is resident in stream order
      src.pending.push_back(done);
      c.pending.push_back(done);
    }
    --src.transfers_reading;
    --src.pins;
  }
  if (!status.ok()) {
    free_copy_locked(t, tier);
    changed_.notify_all();
    return status;
  }
  c.state = Residency::kResident;
  stats_.tiers[idx(tier)].bytes_in += t.bytes;
  if (from == Tier::kNvme && t.nvme_written) {
    stats_.tiers[idx(Tier::kNvme)].bytes_out += t.padded;  // what the disk read
  }
  if (prefetch) ++stats_.tiers[idx(tier)].prefetches;
  changed_.notify_all();
  return absl::OkStatus();
}

absl::Status TieredStore::make_room_locked(std::unique_lock<std::mutex>& lock, Tier tier,
                                           uint64_t bytes, uint64_t protect_before,
                                           bool evict_one) {
  const int ti = idx(tier);
  if (bytes > budget_[ti]) {
    return absl::ResourceExhaustedError(absl::StrCat(bytes, " bytes do not fit the ",
                                                     tier_name(tier), " budget of ", budget_[ti],
                                                     " bytes at all"));
  }
  auto deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(options_.pinned_wait_ms);
  const uint64_t frees_before = frees_[ti];
  while (used_[ti] + bytes > budget_[ti] || evict_one) {
    // A block freed meanwhile (a write-behind landing) coalesced with its
    // neighbours: the caller's allocation is worth another try.
    if (evict_one && frees_[ti] != frees_before) {
      evict_one = false;
      continue;
    }
    if (tier == Tier::kHost && !write_behind_error_.ok()) {
      return std::exchange(write_behind_error_, absl::OkStatus());
    }
    // Copies being written behind free their blocks as their writes land:
    // once those cover the shortfall, wait for them rather than evict more.
    if (!evict_one && used_[ti] - freeing_[ti] + bytes <= budget_[ti]) {
      changed_.wait(lock);
      continue;
    }
    // Belady with a trace (furthest next use), else least recently used.
    TensorId victim = 0;
    uint64_t victim_next = 0;
    bool found = false, in_flight = false;
    uint64_t pinned_bytes = 0;
    for (TensorId i = 0; i < tensors_.size(); ++i) {
      const Tensor& t = tensors_[i];
      const Copy& c = t.copies[ti];
      if (t.spec.home == tier || c.state == Residency::kAbsent) continue;
      if (!holds_data(c.state)) {
        in_flight = true;
        continue;
      }
      // A dirty copy whose copy below is held cannot be written back now
      // (write-back never overwrites a copy someone is reading): as good as pinned.
      if (c.pins > 0 ||
          (c.state == Residency::kDirty && ti + 1 < kTierCount && t.copies[ti + 1].pins > 0)) {
        pinned_bytes += footprint(t.bytes, t.padded, tier);
        continue;
      }
      const uint64_t next = next_use_locked(i, tier);
      if (next <= protect_before) continue;  // needed before what we are prefetching
      if (!found || next > victim_next) {
        victim = i;
        victim_next = next;
        found = true;
      }
    }
    if (!found) {
      if (protect_before > 0) return absl::UnavailableError("no room to prefetch");
      if (!in_flight && pinned_bytes == 0) {
        if (evict_one) {
          return absl::ResourceExhaustedError(absl::StrCat(
              "the ", tier_name(tier), " tier has ", budget_[ti] - used_[ti],
              " bytes free but no free block of ", bytes, " bytes, and nothing left to evict"));
        }
        break;  // home copies fill the tier: fail below
      }
      // The deadline is for pinned copies; moves in flight end by themselves
      // (and notify), so past it this waits for them, never spins.
      const bool expired = std::chrono::steady_clock::now() >= deadline;
      if (expired && !in_flight && evict_one && used_[ti] + bytes <= budget_[ti]) {
        // The budget has room: the pinned copies split the tier's memory.
        const uint64_t largest = tier == Tier::kDevice ? pool_->stats().largest_free_bytes
                                                       : arena_->stats().largest_free_bytes;
        return absl::ResourceExhaustedError(absl::StrCat(
            "the ", tier_name(tier), " tier (budget ", budget_[ti], " bytes, ", used_[ti],
            " used) has room for ", bytes, " more bytes but no free range that large (largest ",
            largest, " bytes): ", pinned_bytes,
            " bytes are pinned by acquires not yet released and split it; release tensors "
            "sooner or raise the budget"));
      }
      if (expired && !in_flight) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "the ", tier_name(tier), " tier (budget ", budget_[ti], " bytes, ", used_[ti],
            " used) cannot fit ", bytes, " more bytes: ", pinned_bytes,
            " bytes are pinned by acquires not yet released; raise the budget or release "
            "tensors sooner"));
      }
      if (expired) {
        changed_.wait_for(lock, kInFlightRecheck);
      } else {
        changed_.wait_until(lock, deadline);
      }
      continue;
    }
    Tensor& v = tensors_[victim];
    if (v.copies[ti].state == Residency::kDirty) {
      // A fragmented arena (evict_one) needs a block now, so that write waits.
      if (!evict_one && options_.write_behind && tier == Tier::kHost &&
          v.spec.home == Tier::kNvme) {
        STRATA_RETURN_IF_ERROR(start_write_behind_locked(lock, victim));
        continue;
      }
      STRATA_RETURN_IF_ERROR(write_back_locked(lock, victim, tier));
      if (v.copies[ti].pins > 0 || !holds_data(v.copies[ti].state)) continue;
    }
    free_copy_locked(v, tier);
    ++stats_.tiers[ti].evictions;
    evict_one = false;
    changed_.notify_all();
  }
  if (used_[ti] + bytes > budget_[ti]) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the ", tier_name(tier), " budget of ", budget_[ti], " bytes is full"));
  }
  return absl::OkStatus();
}

absl::Status TieredStore::write_back_locked(std::unique_lock<std::mutex>& lock, TensorId id,
                                            Tier tier) {
  Tensor& t = tensors_[id];
  Copy& c = t.copies[idx(tier)];
  const Tier to = below(tier);
  Copy& dst = t.copies[idx(to)];
  c.state = Residency::kWriting;
  auto give_up = [&](const absl::Status& s) {
    c.state = Residency::kDirty;
    changed_.notify_all();
    return s;
  };
  // Readers of the copy below must not see it change under them: wait until
  // it is released (new acquires of it wait while this copy is kWriting).
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(options_.pinned_wait_ms);
  for (;;) {
    if (dst.state == Residency::kAbsent) {
      // The copy below is overwritten whole, so a missing one is allocated, not loaded.
      absl::Status s = load_locked(lock, id, to, /*need_data=*/false, /*prefetch=*/false);
      if (!s.ok()) return give_up(s);
      continue;
    }
    if (!holds_data(dst.state)) {
      changed_.wait(lock);
      continue;
    }
    if (dst.pins == 0) break;
    if (changed_.wait_until(lock, deadline) == std::cv_status::timeout && dst.pins > 0) {
      return give_up(absl::FailedPreconditionError(
          absl::StrCat("cannot write the modified ", tier_name(tier), " copy of \"", t.spec.name,
                       "\" back: its ", tier_name(to), " copy is still acquired after ",
                       options_.pinned_wait_ms, " ms; release it first")));
    }
  }
  ++dst.pins;
  std::vector<EventRef> after;
  absl::Status s;
  if (to == Tier::kNvme) {
    s = settle_locked(nullptr, c);  // the drive reads it from the host
  } else {
    prune(c.pending);
    prune(dst.pending);
    after = c.pending;
    after.insert(after.end(), dst.pending.begin(), dst.pending.end());
  }
  EventRef done;
  if (s.ok()) {
    lock.unlock();
    s = transfer(t, tier, to, after, &done);
    lock.lock();
  }
  if (done != nullptr) {
    c.pending.push_back(done);
    dst.pending.push_back(done);
  }
  --dst.pins;
  if (!s.ok()) {
    c.state = Residency::kDirty;
    changed_.notify_all();
    return annotate(s, absl::StrCat("writing back \"", t.spec.name, "\""));
  }
  if (to != t.spec.home) dst.state = Residency::kDirty;
  if (to == Tier::kNvme) {
    t.nvme_written = true;
    stats_.tiers[idx(Tier::kNvme)].bytes_in += t.padded;  // what the disk wrote
  }
  c.state = Residency::kResident;
  stats_.tiers[idx(tier)].bytes_out += t.bytes;
  changed_.notify_all();
  return absl::OkStatus();
}

absl::Status TieredStore::start_write_behind_locked(std::unique_lock<std::mutex>& lock,
                                                    TensorId id) {
  Tensor& t = tensors_[id];
  Copy& c = t.copies[idx(Tier::kHost)];
  Copy& dst = t.copies[idx(Tier::kNvme)];
  // kWriting keeps acquires and loads off the block until the write lands;
  // the extent's pin keeps reads of it (none can start: the copy above is
  // not absent) and other writes away.
  c.state = Residency::kWriting;
  if (absl::Status s = settle_locked(nullptr, c); !s.ok()) {
    c.state = Residency::kDirty;
    changed_.notify_all();
    return s;
  }
  freeing_[idx(Tier::kHost)] += t.padded;
  ++dst.pins;
  ++async_io_;
  const int64_t start = monotonic_ns();
  void* data = c.data;
  // Not under the lock: the swap file may write its header first, and the
  // engine thread that completes that write may be in one of our callbacks.
  lock.unlock();
  absl::Status s = swap_->write_tensor_async(
      t.spec.name, data, t.padded,
      [this, id, start](const absl::Status& st) { finish_write_behind(id, start, st); });
  lock.lock();
  if (!s.ok()) {  // the callback will not run
    c.state = Residency::kDirty;
    freeing_[idx(Tier::kHost)] -= t.padded;
    --dst.pins;
    --async_io_;
    changed_.notify_all();
    return annotate(s, absl::StrCat("writing back \"", t.spec.name, "\" to ", swap_->path()));
  }
  return absl::OkStatus();
}

void TieredStore::finish_write_behind(TensorId id, int64_t start_ns, const absl::Status& status) {
  std::lock_guard lock(mu_);
  Tensor& t = tensors_[id];
  Copy& c = t.copies[idx(Tier::kHost)];
  --t.copies[idx(Tier::kNvme)].pins;
  freeing_[idx(Tier::kHost)] -= t.padded;
  if (status.ok()) {
    t.nvme_written = true;
    stats_.tiers[idx(Tier::kNvme)].bytes_in += t.padded;  // what the disk wrote
    stats_.tiers[idx(Tier::kHost)].bytes_out += t.bytes;
    ++stats_.tiers[idx(Tier::kHost)].evictions;
    free_copy_locked(t, Tier::kHost);
    trace_io("nvme_write", start_ns, t.padded);
  } else {
    c.state = Residency::kDirty;  // nothing lost: the host copy stays authoritative
    absl::Status e =
        annotate(status, absl::StrCat("write-behind of \"", t.spec.name, "\" to swap file ",
                                      swap_->path(), " failed; its host copy stays dirty"));
    log::get("offload")->warn("{}", std::string(e.message()));
    if (write_behind_error_.ok()) write_behind_error_ = e;
    if (background_error_.ok()) background_error_ = e;
  }
  --async_io_;
  changed_.notify_all();
}

absl::Status TieredStore::start_read_ahead_locked(std::unique_lock<std::mutex>& lock, TensorId id) {
  Tensor& t = tensors_[id];
  Copy& c = t.copies[idx(Tier::kHost)];
  Copy& src = t.copies[idx(Tier::kNvme)];
  ++src.pins;
  ++src.transfers_reading;
  ++async_io_;
  const int64_t start = monotonic_ns();
  void* data = c.data;
  lock.unlock();  // as in start_write_behind_locked
  absl::Status s = swap_->read_tensor_async(
      t.spec.name, data, t.padded,
      [this, id, start](const absl::Status& st) { finish_read_ahead(id, start, st); });
  lock.lock();
  if (!s.ok()) {  // the callback will not run; the caller frees the copy
    --src.transfers_reading;
    --src.pins;
    --async_io_;
  }
  return s;
}

void TieredStore::finish_read_ahead(TensorId id, int64_t start_ns, const absl::Status& status) {
  std::lock_guard lock(mu_);
  Tensor& t = tensors_[id];
  Copy& src = t.copies[idx(Tier::kNvme)];
  --src.transfers_reading;
  --src.pins;
  if (status.ok()) {
    t.copies[idx(Tier::kHost)].state = Residency::kResident;
    stats_.tiers[idx(Tier::kHost)].bytes_in += t.bytes;
    ++stats_.tiers[idx(Tier::kHost)].prefetches;
    stats_.tiers[idx(Tier::kNvme)].bytes_out += t.padded;  // what the disk read
    trace_io("nvme_read", start_ns, t.padded);
  } else {
    // Absent again: an acquire that waited for it loads it itself and gets
    // the error, if it persists.
    free_copy_locked(t, Tier::kHost);
    absl::Status e = annotate(
        status, absl::StrCat("reading \"", t.spec.name, "\" ahead from swap file ", swap_->path()));
    log::get("offload")->warn("prefetch failed: {}", std::string(e.message()));
    if (background_error_.ok()) background_error_ = e;
  }
  --async_io_;
  changed_.notify_all();
}

void TieredStore::trace_io(const char* name, int64_t start_ns, uint64_t bytes) const {
  if (options_.trace == nullptr || !options_.trace->enabled()) return;
  options_.trace->record(name, "offload", start_ns, monotonic_ns() - start_ns,
                         {{"bytes", static_cast<int64_t>(bytes)}});
}

absl::Status TieredStore::allocate_copy_locked(Tensor& t, Tier tier) {
  Copy& c = t.copies[idx(tier)];
  if (tier == Tier::kHost) {
    if (arena_ == nullptr) return absl::FailedPreconditionError("the store has no host budget");
    STRATA_ASSIGN_OR_RETURN(c.block, arena_->allocate(t.padded));
    c.data = c.block.data;
  } else {
    if (pool_ == nullptr) return absl::FailedPreconditionError("the store has no device budget");
    STRATA_ASSIGN_OR_RETURN(c.data, pool_->allocate(t.bytes));
  }
  // The block may be one a freed copy's device work still touches.
  if (options_.device != nullptr) {
    prune(freed_pending_[idx(tier)]);
    c.pending = freed_pending_[idx(tier)];
  }
  used_[idx(tier)] += footprint(t.bytes, t.padded, tier);
  TierStats& ts = stats_.tiers[idx(tier)];
  ts.used_bytes = used_[idx(tier)];
  ts.peak_bytes = std::max(ts.peak_bytes, ts.used_bytes);
  return absl::OkStatus();
}

void TieredStore::free_copy_locked(Tensor& t, Tier tier) {
  Copy& c = t.copies[idx(tier)];
  if (c.data != nullptr) {
    if (tier == Tier::kHost) {
      arena_->free(c.block);
    } else {
      pool_->free(c.data);
    }
    used_[idx(tier)] -= footprint(t.bytes, t.padded, tier);
    ++frees_[idx(tier)];
    std::vector<EventRef>& freed = freed_pending_[idx(tier)];
    if (freed.size() > 8) prune(freed);
    for (EventRef& e : c.pending) {
      if (std::find(freed.begin(), freed.end(), e) == freed.end()) freed.push_back(std::move(e));
    }
  }
  c = Copy{};
  stats_.tiers[idx(tier)].used_bytes = used_[idx(tier)];
}

uint64_t TieredStore::device_pool_bytes_locked() const {
  const uint64_t budget = budget_[idx(Tier::kDevice)];
  if (options_.device == nullptr || budget == 0 || tensors_.empty()) return 0;
  uint64_t all = 0;  // every tensor's device copy at once
  std::vector<uint64_t> sizes;
  for (const Tensor& t : tensors_) {
    all += DevicePool::block_bytes(t.bytes);
    sizes.push_back(t.bytes);
  }
  if (options_.device_pool_bytes > 0) return std::min(options_.device_pool_bytes, all);
  // The most copies the budget admits at once are the smallest ones; each
  // rounds up by less than DevicePool::kAlignment, so the pool holds any set
  // of copies the budget does unless it is fragmented.
  std::sort(sizes.begin(), sizes.end());
  uint64_t sum = 0, most = 0;
  for (uint64_t b : sizes) {
    if (sum + b > budget) break;
    sum += b;
    ++most;
  }
  return std::min(DevicePool::block_bytes(budget + (DevicePool::kAlignment - 1) * most), all);
}

absl::StatusOr<gpu::StreamId> TieredStore::take_stream() {
  std::lock_guard lock(streams_mu_);
  if (!free_streams_.empty()) {
    gpu::StreamId s = free_streams_.back();
    free_streams_.pop_back();
    return s;
  }
  STRATA_ASSIGN_OR_RETURN(gpu::StreamId s, options_.device->create_stream());
  all_streams_.push_back(s);
  return s;
}

void TieredStore::return_stream(gpu::StreamId s) {
  std::lock_guard lock(streams_mu_);
  free_streams_.push_back(s);
}

// Runs without the store lock: the endpoints are pinned or in a transient
// state that keeps everyone else off them.
absl::Status TieredStore::transfer(Tensor& t, Tier from, Tier to,
                                   const std::vector<EventRef>& after, EventRef* done) {
  const Copy& src = t.copies[idx(from)];
  const Copy& dst = t.copies[idx(to)];
  if (from == Tier::kNvme) {
    TraceScope scope(options_.trace, "nvme_read", "offload");
    scope.arg("bytes", static_cast<int64_t>(t.padded));
    if (!t.nvme_written) {  // never written: reads as zeros without touching the disk
      std::memset(dst.data, 0, t.padded);
      return absl::OkStatus();
    }
    return swap_->read_tensor(t.spec.name, dst.data, t.padded);
  }
  if (to == Tier::kNvme) {
    TraceScope scope(options_.trace, "nvme_write", "offload");
    scope.arg("bytes", static_cast<int64_t>(t.padded));
    return swap_->write_tensor(t.spec.name, src.data, t.padded);
  }
  TraceScope scope(options_.trace, to == Tier::kDevice ? "h2d" : "d2h", "offload");
  scope.arg("bytes", static_cast<int64_t>(t.bytes));
  STRATA_ASSIGN_OR_RETURN(gpu::StreamId stream, take_stream());
  absl::Status s;
  for (const EventRef& e : after) {
    if (s.ok()) s = options_.device->wait_event(stream, *e);
  }
  if (s.ok()) {
    s = to == Tier::kDevice ? options_.device->copy_to_device(dst.data, src.data, t.bytes, stream)
                            : options_.device->copy_to_host(dst.data, src.data, t.bytes, stream);
  }
  // Not waited for: whoever uses either copy next orders itself after this.
  if (s.ok()) {
    absl::StatusOr<EventRef> e = record_on(stream);
    s = e.status();
    if (s.ok()) *done = *std::move(e);
  }
  return_stream(stream);
  return s;
}

absl::Status TieredStore::flush() {
  std::unique_lock lock(mu_);
  for (Tier tier : {Tier::kDevice, Tier::kHost}) {
    for (TensorId i = 0; i < tensors_.size(); ++i) {
      Copy& c = tensors_[i].copies[idx(tier)];
      while (c.state == Residency::kLoading || c.state == Residency::kWriting) {
        changed_.wait(lock);
      }
      if (c.state != Residency::kDirty) continue;
      if (c.pins > 0) {
        return absl::FailedPreconditionError(absl::StrCat("flush while \"", tensors_[i].spec.name,
                                                          "\" is still acquired on the ",
                                                          tier_name(tier), "; release it first"));
      }
      STRATA_RETURN_IF_ERROR(write_back_locked(lock, i, tier));
    }
  }
  // Copies back from the device are in place once their transfers are.
  for (Tensor& t : tensors_)
    STRATA_RETURN_IF_ERROR(settle_locked(nullptr, t.copies[idx(Tier::kHost)]));
  if (swap_ != nullptr) {
    lock.unlock();
    STRATA_RETURN_IF_ERROR(swap_->commit(), "making the swap file durable");
  }
  return absl::OkStatus();
}

uint64_t TieredStore::next_use_locked(TensorId id, Tier tier) const {
  const Tensor& t = tensors_[id];
  const TierTrace& tr = traces_[idx(tier)];
  if (!tr.valid) return kNever / 2 - t.copies[idx(tier)].last_use;  // LRU
  const std::vector<uint64_t>& uses = t.uses[idx(tier)];
  if (uses.empty()) return kNever;
  const uint64_t now = tr.next_pos;  // positions >= now are still ahead in this cycle
  auto it = std::lower_bound(uses.begin(), uses.end(), now);
  if (it != uses.end()) return *it - now + 1;
  return uses.front() + tr.order.size() - now + 1;  // next step
}

void TieredStore::record_acquire_locked(TensorId id, Tier tier) {
  tensors_[id].copies[idx(tier)].last_use = ++clock_;
  // A home copy is never loaded nor evicted, so its acquires tell the
  // schedule nothing; left out, the host trace is the optimizer's order of
  // NVMe-homed states alone, not interleaved (differently each step) with
  // the gradients another thread writes into the host tier at the same time.
  if (tensors_[id].spec.home == tier) return;
  TierTrace& tr = traces_[idx(tier)];
  // Acquires between steps count too: a delayed update runs on across the
  // step boundary, and its order is still the cycle's.
  if (tr.recording) {
    tr.order.push_back(id);
    return;
  }
  if (!tr.valid) return;
  const uint64_t n = tr.order.size();
  if (tr.order[tr.next_pos] == id) {
    tr.next_pos = (tr.next_pos + 1) % n;
    ++tr.matched;
    tr.open_end = false;
    return;
  }
  std::vector<uint64_t>& uses = tensors_[id].uses[idx(tier)];
  // A recording ends at a step boundary, where a delayed update may not yet
  // have come round to where the recording began: the tensors it lacks come
  // next, before the cycle's first one, so they extend it at its end.
  if (tr.open_end && tr.next_pos == 0 && uses.empty()) {
    uses.push_back(n);
    tr.order.push_back(id);
    return;
  }
  tr.open_end = false;
  // The cycle need not pick up where the last step left it (a delayed update
  // reaches the boundary at a different tensor each step; a failed or
  // skipped step stops short): one jump per step to the tensor's next use
  // keeps the trace. A second miss in a step, or a tensor the trace lacks,
  // means the order changed; between steps (a checkpoint reading every
  // tensor) a miss is ignored.
  if (!uses.empty() && !tr.jumped) {
    auto it = std::lower_bound(uses.begin(), uses.end(), tr.next_pos);
    tr.next_pos = ((it != uses.end() ? *it : uses.front()) + 1) % n;
    ++tr.matched;
    tr.jumped = true;
    return;
  }
  if (!in_step_) return;
  tr.valid = false;  // re-recorded from the next step
  ++stats_.trace_changes;
  log::get("offload")->debug("{} acquire order changed at position {} (\"{}\"); re-recording",
                             tier_name(tier), tr.next_pos, tensors_[id].spec.name);
}

void TieredStore::queue_prefetches_locked(Tier tier) {
  const TierTrace& tr = traces_[idx(tier)];
  if (!tr.valid || tr.order.empty()) return;
  uint64_t window = 0;
  bool queued = false;
  // Every acquire runs this under the lock: looking at most kMaxLookahead
  // acquires ahead keeps it O(1) when the tier already holds everything
  // (a whole-trace scan per acquire made a 3,000-entry step quadratic).
  constexpr uint64_t kMaxLookahead = 256;
  const uint64_t lookahead = std::min<uint64_t>(tr.order.size(), kMaxLookahead);
  for (uint64_t k = 0; k < lookahead && window < options_.prefetch_window_bytes; ++k) {
    const TensorId id = tr.order[(tr.next_pos + k) % tr.order.size()];
    Copy& c = tensors_[id].copies[idx(tier)];
    // The window is a distance along the trace: copies already resident
    // count too. Counting only missing ones reached past a resident stretch
    // (what Belady keeps from one cycle to the next) for copies needed much
    // later, and a full tier made room for them by evicting that stretch as
    // it was used: every copy then crossed the disk every cycle.
    window += tensors_[id].bytes;
    if (holds_data(c.state)) continue;
    if (c.state == Residency::kAbsent && !c.queued) {
      c.queued = true;
      jobs_.push_back({id, tier, tr.matched + k + 1});
      queued = true;
    }
  }
  if (queued) changed_.notify_all();
}

void TieredStore::mover_loop() {
  std::unique_lock lock(mu_);
  for (;;) {
    changed_.wait(lock, [&] { return stopping_ || !jobs_.empty(); });
    if (stopping_) return;
    Job job = jobs_.front();
    jobs_.pop_front();
    Copy& c = tensors_[job.id].copies[idx(job.tier)];
    c.queued = false;
    if (c.state != Residency::kAbsent) continue;
    const TierTrace& tr = traces_[idx(job.tier)];
    if (job.due != 0 && tr.valid && tr.matched >= job.due) continue;  // its use came first
    absl::Status s = load_locked(lock, job.id, job.tier, true, /*prefetch=*/true);
    if (!s.ok() && !absl::IsUnavailable(s) && !absl::IsResourceExhausted(s) &&
        background_error_.ok()) {
      background_error_ = s;
      log::get("offload")->warn("prefetch failed: {}", std::string(s.message()));
    }
  }
}

void TieredStore::begin_step() {
  std::lock_guard lock(mu_);
  in_step_ = true;
  for (int ti = 0; ti < kTierCount; ++ti) {
    TierTrace& tr = traces_[ti];
    // A recording spans one step and what follows it up to the next step:
    // the cycle of acquires, including a delayed update's tail.
    if (tr.recording) {
      tr.recording = false;
      tr.valid = !tr.order.empty();
      tr.next_pos = 0;
      tr.open_end = true;
      for (Tensor& t : tensors_) t.uses[ti].clear();
      for (uint64_t pos = 0; pos < tr.order.size(); ++pos) {
        tensors_[tr.order[pos]].uses[ti].push_back(pos);
      }
    }
    if (!tr.valid) {
      tr.recording = true;
      tr.order.clear();
    }
    tr.jumped = false;
  }
  // Start the first window of each replayed trace now, so the head of the
  // step overlaps with whatever runs before its first acquire.
  for (int ti = 0; ti < kTierCount; ++ti) queue_prefetches_locked(static_cast<Tier>(ti));
}

void TieredStore::end_step() {
  std::lock_guard lock(mu_);
  ++stats_.steps;
  stats_.trace_length = 0;
  for (int ti = 0; ti < kTierCount; ++ti) {
    stats_.trace_length += traces_[ti].order.size();
  }
  in_step_ = false;
}

Residency TieredStore::residency(TensorId id, Tier tier) const {
  std::lock_guard lock(mu_);
  STRATA_CHECK_MSG(id < tensors_.size(), "residency() of an unregistered tensor");
  return tensors_[id].copies[idx(tier)].state;
}

const TensorSpec& TieredStore::spec(TensorId id) const {
  std::lock_guard lock(mu_);
  STRATA_CHECK_MSG(id < tensors_.size(), "spec() of an unregistered tensor");
  return tensors_[id].spec;
}

StoreStats TieredStore::stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

absl::Status TieredStore::background_error() const {
  std::lock_guard lock(mu_);
  return background_error_;
}

}  // namespace strata::offload
