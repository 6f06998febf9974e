// SimDevice: a Device emulated on the CPU, so every schedule is testable
// without a GPU.
//
// Device memory is host memory under a hard capacity limit. Each stream is a
// host thread running its work in order. Copies go through one copy engine
// per direction (full duplex, like a GPU's two DMA engines) and take the
// modelled time latency + bytes / bandwidth (defaults: PCIe Gen5 x16, about
// 50 GB/s each way); if the real memcpy is slower, the real time counts.
// Kernels run on one compute engine, so compute from different streams is
// serialised while copies and compute overlap; host functions run in stream
// order without occupying it.
//
// With move_data = false copies move no bytes and only take their modelled
// time; launch_timed_compute() occupies the compute engine without using a
// core. Together they let schedule benchmarks model a GPU step while the CPU
// cores stay free for the optimizer.
//
// Copies and kernels check that device pointers fall inside a live
// allocation and fail the stream (InvalidArgument, surfaced at the next
// synchronisation) when they do not: schedule bugs show up here, not as
// corrupt memory.
#pragma once

#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "gpu/device.h"

namespace strata::gpu {

struct SimDeviceOptions {
  uint64_t capacity_bytes = uint64_t{8} << 30;
  double h2d_gb_per_s = 50.0;  // 1e9 bytes per second
  double d2h_gb_per_s = 50.0;
  double copy_latency_us = 5.0;
  bool move_data = true;
};

class SimDevice final : public Device {
 public:
  explicit SimDevice(SimDeviceOptions options = {});
  ~SimDevice() override;

  std::string name() const override;
  // Device memory is host memory; with move_data = false it holds no data.
  bool host_addressable() const override { return options_.move_data; }
  absl::StatusOr<void*> allocate(size_t bytes) override;
  void free(void* ptr) override;
  DeviceMemoryStats stats() const override;

  absl::StatusOr<StreamId> create_stream() override;
  void destroy_stream(StreamId stream) override;
  absl::StatusOr<EventId> create_event() override;
  void destroy_event(EventId event) override;

  absl::Status record_event(EventId event, StreamId stream) override;
  absl::Status wait_event(StreamId stream, EventId event) override;
  absl::StatusOr<bool> query_event(EventId event) override;
  absl::Status synchronize_event(EventId event) override;
  absl::Status synchronize_stream(StreamId stream) override;
  absl::Status synchronize() override;

  absl::Status copy_to_device(void* device_dst, const void* host_src, size_t bytes,
                              StreamId stream) override;
  absl::Status copy_to_host(void* host_dst, const void* device_src, size_t bytes,
                            StreamId stream) override;
  absl::Status copy_on_device(void* dst, const void* src, size_t bytes, StreamId stream) override;
  absl::Status launch_host_function(StreamId stream, std::function<void()> fn) override;

  absl::Status cast(const void* src, DType src_type, void* dst, DType dst_type, size_t n,
                    StreamId stream) override;
  absl::Status scale(void* x, DType type, size_t n, float factor, StreamId stream) override;
  absl::Status squared_norm(const void* x, DType type, size_t n, float* out_sum_sq,
                            int32_t* out_nonfinite, StreamId stream) override;

  absl::Status register_host_memory(void* ptr, size_t bytes) override;
  absl::Status unregister_host_memory(void* ptr) override;

  // Occupies the compute engine for `seconds` (sleeping, not spinning).
  absl::Status launch_timed_compute(StreamId stream, double seconds);

  const SimDeviceOptions& options() const { return options_; }

 private:
  class StreamWorker;
  enum class Engine { kNone, kH2D, kD2H, kCompute };
  struct EventState {
    uint64_t recorded = 0;   // generations handed out by record_event
    uint64_t completed = 0;  // highest generation whose work has finished
  };

  absl::StatusOr<StreamWorker*> stream(StreamId id);
  // Both with mu_ held. The event's state, or InvalidArgument for an unknown id.
  absl::StatusOr<EventState*> event_locked(EventId event);
  // Whether the work of record `generation` has finished (a destroyed event has).
  bool reached_locked(EventId event, uint64_t generation) const;
  absl::Status enqueue(StreamId id, Engine engine, std::function<absl::Status()> op);
  absl::Status check_device_range(const void* ptr, size_t bytes, const char* what) const;
  void run_copy(Engine engine, void* dst, const void* src, size_t bytes);

  const SimDeviceOptions options_;
  mutable std::mutex mu_;  // guards everything below except the engine locks
  std::condition_variable events_cv_;
  std::map<uintptr_t, size_t> allocations_;  // start -> bytes
  DeviceMemoryStats stats_;
  std::unordered_map<StreamId, std::unique_ptr<StreamWorker>> streams_;
  std::unordered_map<EventId, EventState> events_;
  std::unordered_map<void*, size_t> registered_;
  StreamId next_stream_ = 1;
  EventId next_event_ = 1;
  std::mutex h2d_engine_, d2h_engine_, compute_engine_;
};

}  // namespace strata::gpu
