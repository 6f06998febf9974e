#include "gpu/sim_device.h"

#include <sys/prctl.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace strata::gpu {
namespace {

// Linux delays a sleeping thread's wake-up by up to its timer slack (50 us
// by default), which would turn a 4 us modelled charge into ~55 us. The
// stream threads run with 1 us slack for all their sleeps; a charge on a
// caller's thread lowers the caller's slack for that one sleep.
constexpr unsigned long kTimerSlackNs = 1000;

void sleep_precisely(double seconds) {
  if (!(seconds > 0)) return;
  const int old_slack = prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0);
  prctl(PR_SET_TIMERSLACK, kTimerSlackNs, 0, 0, 0);
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  if (old_slack > 0) prctl(PR_SET_TIMERSLACK, static_cast<unsigned long>(old_slack), 0, 0, 0);
}

using Clock = std::chrono::steady_clock;

Clock::duration seconds_of(double s) {
  return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
}

// The modelled times of the operation a stream thread is running: when it
// may start, and when it ended (unset: when it returned, or `ready` if later).
struct OpTimes {
  Clock::time_point ready;
  std::optional<Clock::time_point> end;
};
thread_local OpTimes* current_op = nullptr;

// When the running operation may start in the model; now off a stream thread.
Clock::time_point op_ready() { return current_op != nullptr ? current_op->ready : Clock::now(); }
void set_op_end(Clock::time_point end) {
  if (current_op != nullptr) current_op->end = end;
}

}  // namespace

// One host thread per stream, running its operations in order. The first
// failure sticks (as a CUDA stream error does) and later work is skipped.
class SimDevice::StreamWorker {
 public:
  StreamWorker() : thread_([this] { run(); }) {}
  ~StreamWorker() {
    {
      std::lock_guard lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  void push(std::function<absl::Status()> op) {
    {
      std::lock_guard lock(mu_);
      queue_.push_back({std::move(op), Clock::now()});
      ++submitted_;
    }
    cv_.notify_all();
  }

  // Waits for everything submitted before the call; returns the sticky error.
  absl::Status drain() {
    std::unique_lock lock(mu_);
    const uint64_t target = submitted_;
    cv_.wait(lock, [&] { return finished_ >= target; });
    return error_;
  }

 private:
  void run() {
    prctl(PR_SET_TIMERSLACK, kTimerSlackNs, 0, 0, 0);  // this thread's modelled sleeps
    std::unique_lock lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, and nothing left to do
      Item item = std::move(queue_.front());
      queue_.pop_front();
      const bool skip = !error_.ok();
      lock.unlock();
      OpTimes times{.ready = std::max(item.enqueued_at, modelled_end_)};
      current_op = &times;
      absl::Status s = skip ? absl::OkStatus() : item.op();
      current_op = nullptr;
      modelled_end_ = times.end.value_or(std::max(times.ready, Clock::now()));
      lock.lock();
      if (!s.ok() && error_.ok()) error_ = s;
      ++finished_;
      cv_.notify_all();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  struct Item {
    std::function<absl::Status()> op;
    Clock::time_point enqueued_at;
  };
  std::deque<Item> queue_;
  Clock::time_point modelled_end_;  // of the last operation; the stream thread's own
  uint64_t submitted_ = 0;
  uint64_t finished_ = 0;
  absl::Status error_;
  bool stopping_ = false;
  std::thread thread_;  // last: starts after the members it uses exist
};

SimDeviceOptions host_mode_options(uint64_t capacity_bytes) {
  return SimDeviceOptions{.capacity_bytes = capacity_bytes,
                          .h2d_gb_per_s = 1e6,
                          .d2h_gb_per_s = 1e6,
                          .copy_latency_us = 0,
                          .move_data = true,
                          .costs = {.enabled = false}};
}

SimDevice::SimDevice(SimDeviceOptions options) : options_(options) {
  stats_.capacity_bytes = options_.capacity_bytes;
}

SimDevice::~SimDevice() {
  // Stream threads first: their queued work may still touch device memory.
  std::unordered_map<StreamId, std::unique_ptr<StreamWorker>> streams;
  {
    std::lock_guard lock(mu_);
    streams.swap(streams_);
  }
  streams.clear();
  for (auto& [start, bytes] : allocations_) std::free(reinterpret_cast<void*>(start));
}

std::string SimDevice::name() const {
  return absl::StrCat("SimDevice (", options_.capacity_bytes >> 20, " MiB, H2D ",
                      options_.h2d_gb_per_s, " GB/s, D2H ", options_.d2h_gb_per_s, " GB/s)");
}

void SimDevice::drain_all_streams() {
  std::vector<StreamWorker*> workers;
  {
    std::lock_guard lock(mu_);
    for (auto& [id, w] : streams_) workers.push_back(w.get());
  }
  for (StreamWorker* w : workers) (void)w->drain();  // errors surface at the next synchronize
}

void SimDevice::charge_host_sync(bool device_wide) {
  {
    std::lock_guard lock(mu_);
    ++sync_.host_syncs;
    if (device_wide) ++sync_.device_syncs;
  }
  if (options_.costs.enabled) sleep_precisely(options_.costs.host_sync_us * 1e-6);
}

absl::StatusOr<void*> SimDevice::allocate(size_t bytes) {
  if (bytes == 0) return absl::InvalidArgumentError("device allocation of 0 bytes");
  const size_t rounded = (bytes + 255) & ~size_t{255};
  {
    std::lock_guard lock(mu_);
    ++sync_.device_syncs;
  }
  if (options_.costs.enabled) {
    drain_all_streams();
    sleep_precisely(options_.costs.allocate_us * 1e-6);
  }
  std::lock_guard lock(mu_);
  if (stats_.used_bytes + rounded > stats_.capacity_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "device out of memory: requested ", rounded, " bytes with ", stats_.used_bytes, " of ",
        stats_.capacity_bytes, " in use; lower the batch size or offload more state"));
  }
  void* p = std::aligned_alloc(256, rounded);
  if (p == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrCat("host memory for the simulated device exhausted (", rounded, " bytes)"));
  }
  allocations_.emplace(reinterpret_cast<uintptr_t>(p), rounded);
  ++sync_.allocations;
  stats_.used_bytes += rounded;
  stats_.peak_bytes = std::max(stats_.peak_bytes, stats_.used_bytes);
  return p;
}

void SimDevice::free(void* ptr) {
  if (ptr == nullptr) return;
  if (options_.costs.enabled) {
    drain_all_streams();  // queued work may still use the memory, as cudaFree waits for it
    sleep_precisely(options_.costs.free_us * 1e-6);
  }
  std::lock_guard lock(mu_);
  auto it = allocations_.find(reinterpret_cast<uintptr_t>(ptr));
  STRATA_CHECK_MSG(it != allocations_.end(), "SimDevice::free of a pointer it did not allocate");
  ++sync_.frees;
  ++sync_.device_syncs;
  stats_.used_bytes -= it->second;
  allocations_.erase(it);
  std::free(ptr);
}

DeviceMemoryStats SimDevice::stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

SyncCounters SimDevice::sync_counters() const {
  std::lock_guard lock(mu_);
  return sync_;
}

absl::StatusOr<StreamId> SimDevice::create_stream() {
  std::lock_guard lock(mu_);
  StreamId id = next_stream_++;
  streams_.emplace(id, std::make_unique<StreamWorker>());
  return id;
}

void SimDevice::destroy_stream(StreamId id) {
  std::unique_ptr<StreamWorker> worker;
  {
    std::lock_guard lock(mu_);
    auto it = streams_.find(id);
    if (it == streams_.end()) return;
    worker = std::move(it->second);
    streams_.erase(it);
  }
  // As in CUDA, work already queued completes before the stream goes away.
  (void)worker->drain();
}

absl::StatusOr<EventId> SimDevice::create_event() {
  std::lock_guard lock(mu_);
  EventId id = next_event_++;
  events_.emplace(id, EventState{});
  return id;
}

void SimDevice::destroy_event(EventId event) {
  std::lock_guard lock(mu_);
  events_.erase(event);
}

absl::StatusOr<SimDevice::StreamWorker*> SimDevice::stream(StreamId id) {
  std::lock_guard lock(mu_);
  auto it = streams_.find(id);
  if (it == streams_.end()) {
    return absl::InvalidArgumentError(absl::StrCat("unknown stream ", id));
  }
  return it->second.get();
}

absl::Status SimDevice::enqueue(StreamId id, Engine engine, std::function<absl::Status()> op) {
  STRATA_ASSIGN_OR_RETURN(StreamWorker * worker, stream(id));
  if (engine == Engine::kCompute) {
    worker->push([this, op = std::move(op)] {
      std::lock_guard engine_lock(compute_engine_);
      // The launch overhead comes before the kernel runs and keeps the engine busy.
      Clock::time_point start = std::max(op_ready(), compute_free_at_);
      if (options_.costs.enabled) start += seconds_of(options_.costs.launch_us * 1e-6);
      std::this_thread::sleep_until(start);
      if (current_op != nullptr) current_op->ready = start;  // the kernel's own start
      // A kernel that does real work takes the time its work took (not the
      // wake-up above: that is the simulation's, not the device's).
      const Clock::time_point work_start = Clock::now();
      absl::Status s = op();
      compute_free_at_ = current_op != nullptr && current_op->end
                             ? *current_op->end
                             : start + (Clock::now() - work_start);
      set_op_end(compute_free_at_);
      return s;
    });
  } else {
    worker->push(std::move(op));  // copies take their engine in run_copy
  }
  return absl::OkStatus();
}

absl::StatusOr<SimDevice::EventState*> SimDevice::event_locked(EventId event) {
  auto it = events_.find(event);
  if (it == events_.end()) return absl::InvalidArgumentError(absl::StrCat("unknown event ", event));
  return &it->second;
}

bool SimDevice::reached_locked(EventId event, uint64_t generation) const {
  auto it = events_.find(event);
  return it == events_.end() ||
         it->second.completed >= generation;  // destroyed: nothing to wait on
}

absl::Status SimDevice::record_event(EventId event, StreamId id) {
  uint64_t generation;
  {
    std::lock_guard lock(mu_);
    STRATA_ASSIGN_OR_RETURN(EventState * e, event_locked(event));
    generation = ++e->recorded;
  }
  return enqueue(id, Engine::kNone, [this, event, generation] {
    std::lock_guard lock(mu_);
    const Clock::time_point at = op_ready();
    set_op_end(at);
    auto it = events_.find(event);
    if (it != events_.end() && it->second.completed < generation) {
      it->second.completed = generation;
      it->second.completed_at = at;
    }
    events_cv_.notify_all();
    return absl::OkStatus();
  });
}

absl::Status SimDevice::wait_event(StreamId id, EventId event) {
  uint64_t generation;
  {
    std::lock_guard lock(mu_);
    STRATA_ASSIGN_OR_RETURN(EventState * e, event_locked(event));
    generation = e->recorded;
  }
  STRATA_ASSIGN_OR_RETURN(StreamWorker * worker, stream(id));
  worker->push([this, event, generation] {
    std::unique_lock lock(mu_);
    events_cv_.wait(lock, [&] { return reached_locked(event, generation); });
    // The wait ends in the model when the awaited record ran there (a later
    // record's time, if one has run since: a bound that errs late).
    auto it = events_.find(event);
    Clock::time_point end = op_ready();
    if (it != events_.end()) end = std::max(end, it->second.completed_at);
    set_op_end(end);
    return absl::OkStatus();
  });
  return absl::OkStatus();
}

absl::StatusOr<bool> SimDevice::query_event(EventId event) {
  std::lock_guard lock(mu_);
  STRATA_ASSIGN_OR_RETURN(EventState * e, event_locked(event));
  return e->completed >= e->recorded;
}

absl::Status SimDevice::synchronize_event(EventId event) {
  std::unique_lock lock(mu_);
  STRATA_ASSIGN_OR_RETURN(EventState * e, event_locked(event));
  const uint64_t generation = e->recorded;
  events_cv_.wait(lock, [&] { return reached_locked(event, generation); });
  lock.unlock();
  charge_host_sync(/*device_wide=*/false);
  return absl::OkStatus();
}

absl::Status SimDevice::synchronize_stream(StreamId id) {
  STRATA_ASSIGN_OR_RETURN(StreamWorker * worker, stream(id));
  absl::Status s = worker->drain();
  charge_host_sync(/*device_wide=*/false);
  return s;
}

absl::Status SimDevice::synchronize() {
  std::vector<StreamWorker*> workers;
  {
    std::lock_guard lock(mu_);
    for (auto& [id, w] : streams_) workers.push_back(w.get());
  }
  absl::Status first;
  for (StreamWorker* w : workers) {
    absl::Status s = w->drain();
    if (first.ok()) first = s;
  }
  charge_host_sync(/*device_wide=*/true);
  return first;
}

size_t SimDevice::registered_bytes() const {
  std::lock_guard lock(mu_);
  size_t sum = 0;
  for (const auto& [start, bytes] : registered_) sum += bytes;
  return sum;
}

bool SimDevice::registered(const void* ptr, size_t bytes) const {
  const uintptr_t p = reinterpret_cast<uintptr_t>(ptr);
  std::lock_guard lock(mu_);
  auto it = registered_.upper_bound(p);
  if (it == registered_.begin()) return false;
  --it;
  return p >= it->first && p + bytes <= it->first + it->second;
}

absl::Status SimDevice::check_device_range(const void* ptr, size_t bytes, const char* what) const {
  const uintptr_t p = reinterpret_cast<uintptr_t>(ptr);
  std::lock_guard lock(mu_);
  auto it = allocations_.upper_bound(p);
  if (it != allocations_.begin()) {
    --it;
    if (p >= it->first && p + bytes <= it->first + it->second) return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat(what, ": ", bytes, " bytes at ", absl::Hex(p),
                                                 " are not inside one device allocation"));
}

void SimDevice::run_copy(Engine engine, void* dst, const void* src, size_t bytes, bool pinned) {
  const bool h2d = engine == Engine::kH2D;
  std::mutex& engine_mu = h2d ? h2d_engine_ : d2h_engine_;
  Clock::time_point& free_at = h2d ? h2d_free_at_ : d2h_free_at_;
  double gbps = h2d ? options_.h2d_gb_per_s : options_.d2h_gb_per_s;
  if (!pinned && options_.costs.enabled) gbps *= options_.costs.pageable_fraction;
  std::lock_guard engine_lock(engine_mu);
  const Clock::time_point start = std::max(op_ready(), free_at);
  const Clock::time_point copy_start = Clock::now();
  if (options_.move_data) std::memcpy(dst, src, bytes);
  // A memcpy slower than the link counts with its real time.
  const Clock::duration took = std::max(
      seconds_of(options_.copy_latency_us * 1e-6 + static_cast<double>(bytes) / (gbps * 1e9)),
      Clock::now() - copy_start);
  free_at = start + took;
  std::this_thread::sleep_until(free_at);
  set_op_end(free_at);
  std::lock_guard lock(mu_);
  (h2d ? stats_.h2d_bytes : stats_.d2h_bytes) += bytes;
}

absl::Status SimDevice::copy_to_device(void* device_dst, const void* host_src, size_t bytes,
                                       StreamId stream) {
  // As the driver does, the copy's path is decided when it is issued.
  const bool pinned = registered(host_src, bytes);
  return enqueue(stream, Engine::kH2D, [=, this] {
    STRATA_RETURN_IF_ERROR(check_device_range(device_dst, bytes, "copy_to_device destination"));
    run_copy(Engine::kH2D, device_dst, host_src, bytes, pinned);
    return absl::OkStatus();
  });
}

absl::Status SimDevice::copy_to_host(void* host_dst, const void* device_src, size_t bytes,
                                     StreamId stream) {
  const bool pinned = registered(host_dst, bytes);
  return enqueue(stream, Engine::kD2H, [=, this] {
    STRATA_RETURN_IF_ERROR(check_device_range(device_src, bytes, "copy_to_host source"));
    run_copy(Engine::kD2H, host_dst, device_src, bytes, pinned);
    return absl::OkStatus();
  });
}

absl::Status SimDevice::copy_on_device(void* dst, const void* src, size_t bytes, StreamId stream) {
  return enqueue(stream, Engine::kCompute, [=, this] {
    STRATA_RETURN_IF_ERROR(check_device_range(src, bytes, "copy_on_device source"));
    STRATA_RETURN_IF_ERROR(check_device_range(dst, bytes, "copy_on_device destination"));
    if (options_.move_data) std::memmove(dst, src, bytes);
    return absl::OkStatus();
  });
}

absl::Status SimDevice::launch_host_function(StreamId stream, std::function<void()> fn) {
  // As with cudaLaunchHostFunc, the function runs on a host thread and does
  // not occupy the device's compute engine.
  return enqueue(stream, Engine::kNone, [fn = std::move(fn)] {
    fn();
    return absl::OkStatus();
  });
}

absl::Status SimDevice::launch_timed_compute(StreamId stream, double seconds) {
  if (!(seconds >= 0)) return absl::InvalidArgumentError("timed compute needs seconds >= 0");
  return enqueue(stream, Engine::kCompute, [seconds] {
    const Clock::time_point end = op_ready() + seconds_of(seconds);
    std::this_thread::sleep_until(end);
    set_op_end(end);
    return absl::OkStatus();
  });
}

namespace {

float load_element(const void* p, DType t, size_t i) {
  switch (t) {
    case DType::kFloat32:
      return static_cast<const float*>(p)[i];
    case DType::kFloat16:
      return fp16_to_fp32(static_cast<const uint16_t*>(p)[i]);
    case DType::kBFloat16:
      return bf16_to_fp32(static_cast<const uint16_t*>(p)[i]);
  }
  return 0;
}

void store_element(void* p, DType t, size_t i, float v) {
  switch (t) {
    case DType::kFloat32:
      static_cast<float*>(p)[i] = v;
      break;
    case DType::kFloat16:
      static_cast<uint16_t*>(p)[i] = fp32_to_fp16(v);
      break;
    case DType::kBFloat16:
      static_cast<uint16_t*>(p)[i] = fp32_to_bf16(v);
      break;
  }
}

}  // namespace

absl::Status SimDevice::cast(const void* src, DType src_type, void* dst, DType dst_type, size_t n,
                             StreamId stream) {
  return enqueue(stream, Engine::kCompute, [=, this] {
    STRATA_RETURN_IF_ERROR(check_device_range(src, n * dtype_size(src_type), "cast source"));
    STRATA_RETURN_IF_ERROR(check_device_range(dst, n * dtype_size(dst_type), "cast destination"));
    if (!options_.move_data) return absl::OkStatus();
    const auto* s16 = static_cast<const uint16_t*>(src);
    auto* d16 = static_cast<uint16_t*>(dst);
    if (src_type == dst_type) {
      std::memmove(dst, src, n * dtype_size(src_type));
    } else if (src_type == DType::kFloat32 && dst_type == DType::kFloat16) {
      convert_fp32_to_fp16(static_cast<const float*>(src), d16, n);
    } else if (src_type == DType::kFloat32 && dst_type == DType::kBFloat16) {
      convert_fp32_to_bf16(static_cast<const float*>(src), d16, n);
    } else if (src_type == DType::kFloat16 && dst_type == DType::kFloat32) {
      convert_fp16_to_fp32(s16, static_cast<float*>(dst), n);
    } else if (src_type == DType::kBFloat16 && dst_type == DType::kFloat32) {
      convert_bf16_to_fp32(s16, static_cast<float*>(dst), n);
    } else {
      for (size_t i = 0; i < n; ++i)
        store_element(dst, dst_type, i, load_element(src, src_type, i));
    }
    return absl::OkStatus();
  });
}

absl::Status SimDevice::scale(void* x, DType type, size_t n, float factor, StreamId stream) {
  return enqueue(stream, Engine::kCompute, [=, this] {
    STRATA_RETURN_IF_ERROR(check_device_range(x, n * dtype_size(type), "scale buffer"));
    if (!options_.move_data) return absl::OkStatus();
    for (size_t i = 0; i < n; ++i) store_element(x, type, i, load_element(x, type, i) * factor);
    return absl::OkStatus();
  });
}

absl::Status SimDevice::squared_norm(const void* x, DType type, size_t n, float* out_sum_sq,
                                     int32_t* out_nonfinite, StreamId stream) {
  return enqueue(stream, Engine::kCompute, [=, this] {
    STRATA_RETURN_IF_ERROR(check_device_range(x, n * dtype_size(type), "squared_norm input"));
    STRATA_RETURN_IF_ERROR(check_device_range(out_sum_sq, sizeof(float), "squared_norm output"));
    STRATA_RETURN_IF_ERROR(
        check_device_range(out_nonfinite, sizeof(int32_t), "squared_norm nonfinite flag"));
    if (!options_.move_data) return absl::OkStatus();
    double sum = 0;
    int32_t nonfinite = 0;
    for (size_t i = 0; i < n; ++i) {
      const float v = load_element(x, type, i);
      if (!std::isfinite(v)) nonfinite = 1;
      sum += static_cast<double>(v) * v;
    }
    *out_sum_sq = static_cast<float>(sum);
    *out_nonfinite = nonfinite;
    return absl::OkStatus();
  });
}

absl::Status SimDevice::register_host_memory(void* ptr, size_t bytes) {
  std::lock_guard lock(mu_);
  if (!registered_.emplace(reinterpret_cast<uintptr_t>(ptr), bytes).second) {
    return absl::AlreadyExistsError("host memory registered twice");
  }
  return absl::OkStatus();
}

absl::Status SimDevice::unregister_host_memory(void* ptr) {
  std::lock_guard lock(mu_);
  if (registered_.erase(reinterpret_cast<uintptr_t>(ptr)) == 0) {
    return absl::NotFoundError("unregister of host memory that was never registered");
  }
  return absl::OkStatus();
}

}  // namespace strata::gpu
