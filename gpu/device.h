// Device: the accelerator as the offload runtime sees it.
//
// Memory with capacity accounting, ordered streams, events, async copies
// between device memory and (pinned) host memory, host functions run in
// stream order, and the few kernels the engine needs (cast, scale, squared
// norm). Two implementations: CudaDevice (CUDA runtime) and SimDevice (a CPU
// emulation with a capacity limit and a modelled PCIe link) so that every
// schedule can be tested without a GPU.
//
// Semantics follow CUDA's: work on one stream runs in submission order; work
// on different streams may overlap; record_event() captures the work
// submitted to a stream so far, and wait_event() makes a stream wait for it;
// an event never recorded counts as complete. Errors of async work surface at
// the next synchronisation (synchronize_*), as in CUDA.
//
// Threading: every method may be called from any thread. Streams and events
// are owned by the device and live until destroyed or until the device is.
// Pointers from allocate() belong to the caller until free().
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "core/dtype.h"

namespace strata::gpu {

using StreamId = uint32_t;
using EventId = uint32_t;

struct DeviceMemoryStats {
  uint64_t capacity_bytes = 0;
  uint64_t used_bytes = 0;
  uint64_t peak_bytes = 0;
  uint64_t h2d_bytes = 0;  // moved so far
  uint64_t d2h_bytes = 0;
};

// Calls that stall someone, counted since the device was created (read them
// before and after a step and subtract). On CUDA each of these costs far more
// than the work it waits for when it lands inside a step, so a schedule that
// claims to be asynchronous shows zero here in its steady state.
struct SyncCounters {
  // The host waited for device work: synchronize_stream, synchronize_event
  // and synchronize (which also counts as a device-wide synchronisation).
  uint64_t host_syncs = 0;
  // Every stream of the device was drained: synchronize(), and each
  // allocate() and free(), which synchronise the device as cudaMalloc and
  // cudaFree do.
  uint64_t device_syncs = 0;
  uint64_t allocations = 0;  // successful allocate() calls
  uint64_t frees = 0;        // free() of a non-null pointer
};

class Device {
 public:
  virtual ~Device() = default;

  virtual std::string name() const = 0;

  // True when device pointers are host addresses holding the device's data,
  // so the host may compute on device memory directly (in stream order,
  // through launch_host_function): SimDevice moving data. False for CUDA,
  // and by default. The engine runs its host optimizer on device-homed
  // states only on such a device; models pick host or device kernels by it.
  virtual bool host_addressable() const { return false; }
  // True when device allocations are host addresses that host code (a
  // collective on host memory, such as Gloo's) may read and write once the
  // streams using them are synchronised: SimDevice, whether or not it moves
  // data. Unlike host_addressable(), their contents need not be what the
  // device's copies and kernels would have left (SimDevice with move_data =
  // false writes nothing): only values the host itself wrote there can be
  // read back. False for CUDA, and by default.
  virtual bool host_backed_memory() const { return false; }

  // Device memory. ResourceExhausted (naming requested, used and capacity
  // bytes) when the capacity would be exceeded. Both calls wait for every
  // stream (cudaMalloc / cudaFree; SimDevice with its costs), so a step must
  // not make them (take memory once: offload/device_pool.h), nor may a
  // thread that holds a lock some queued host function needs.
  virtual absl::StatusOr<void*> allocate(size_t bytes) = 0;
  virtual void free(void* ptr) = 0;
  virtual DeviceMemoryStats stats() const = 0;
  // Never fails; thread-safe (a snapshot: counts may move while it is read).
  virtual SyncCounters sync_counters() const = 0;

  virtual absl::StatusOr<StreamId> create_stream() = 0;
  virtual void destroy_stream(StreamId stream) = 0;
  virtual absl::StatusOr<EventId> create_event() = 0;
  virtual void destroy_event(EventId event) = 0;

  virtual absl::Status record_event(EventId event, StreamId stream) = 0;
  virtual absl::Status wait_event(StreamId stream, EventId event) = 0;
  // True once the work the event captured has finished.
  virtual absl::StatusOr<bool> query_event(EventId event) = 0;
  virtual absl::Status synchronize_event(EventId event) = 0;
  virtual absl::Status synchronize_stream(StreamId stream) = 0;
  virtual absl::Status synchronize() = 0;
  // The backend's handle of `stream` (a cudaStream_t on CUDA), for code that
  // queues its own kernels in the stream's order (the GPT-2 CUDA path);
  // null for an unknown stream and on devices without one (SimDevice).
  virtual void* native_stream(StreamId stream) { return nullptr; }

  // Async copies; `host` should be registered (pinned) memory for full speed.
  virtual absl::Status copy_to_device(void* device_dst, const void* host_src, size_t bytes,
                                      StreamId stream) = 0;
  virtual absl::Status copy_to_host(void* host_dst, const void* device_src, size_t bytes,
                                    StreamId stream) = 0;
  virtual absl::Status copy_on_device(void* dst, const void* src, size_t bytes,
                                      StreamId stream) = 0;

  // Runs `fn` on a host thread once all earlier work on `stream` is done;
  // later work on the stream waits for it. `fn` must not call the device.
  virtual absl::Status launch_host_function(StreamId stream, std::function<void()> fn) = 0;

  // Kernels. Buffers are device memory; n is an element count.
  // dst[i] = convert(src[i]) between fp32, fp16 and bf16 (round to nearest even).
  virtual absl::Status cast(const void* src, DType src_type, void* dst, DType dst_type, size_t n,
                            StreamId stream) = 0;
  // x[i] *= factor, in place.
  virtual absl::Status scale(void* x, DType type, size_t n, float factor, StreamId stream) = 0;
  // *out_sum_sq = sum of x[i]^2 (fp32 accumulation or better) and
  // *out_nonfinite = 1 if any x[i] is inf or nan, else 0. Both outputs are
  // device memory (one float, one int32).
  virtual absl::Status squared_norm(const void* x, DType type, size_t n, float* out_sum_sq,
                                    int32_t* out_nonfinite, StreamId stream) = 0;

  // Pins host memory for DMA (cudaHostRegister on CUDA; a no-op accounting
  // on SimDevice). Fails with the reason (e.g. RLIMIT_MEMLOCK) if it cannot.
  virtual absl::Status register_host_memory(void* ptr, size_t bytes) = 0;
  virtual absl::Status unregister_host_memory(void* ptr) = 0;
};

// The CUDA device `ordinal`; FailedPrecondition saying why when this build
// has no CUDA or the machine no GPU.
absl::StatusOr<std::unique_ptr<Device>> make_cuda_device(int ordinal);

}  // namespace strata::gpu
