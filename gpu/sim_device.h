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
// Time is modelled, not measured: each operation starts when its stream's
// previous one ended in the model (or when it was enqueued, if later) and
// its engine is free in the model, and ends its modelled duration after
// that. The stream thread then sleeps until that end, so nothing completes
// before the model says, but a thread that wakes late (every sleep
// overshoots by scheduler latency, a millisecond or more on a loaded box)
// does not push the work queued behind it later: the next operation starts
// at the modelled end, as back-to-back kernels do on a GPU. Only the last
// operation before an idle stream shows its wake-up delay.
//
// Copies and kernels check that device pointers fall inside a live
// allocation and fail the stream (InvalidArgument, surfaced at the next
// synchronisation) when they do not: schedule bugs show up here, not as
// corrupt memory.
//
// The cost model (SimDeviceCosts) charges what the CUDA runtime would for
// the calls that hurt an asynchronous schedule: a host synchronisation costs
// a round trip on the calling thread; allocate() and free() drain every
// stream first (cudaMalloc / cudaFree synchronise the device) and then take
// their own time; a copy from or to host memory that was not registered
// (register_host_memory) runs at a fraction of the link rate (pageable
// memory is staged through a driver buffer); every launch (cast, scale,
// squared_norm, copy_on_device, timed compute) occupies the compute engine
// for the launch overhead on top of its work. sync_counters() counts the
// synchronising calls whether or not the costs are charged.
//
// Default: charged (`costs.enabled = true`), with the public H100 / RTX 5090
// figures below, because SimDevice is a model of a GPU (it already charges
// the PCIe link) and a schedule that synchronises should pay for it in every
// test and benchmark, not only in those that remember to ask. It stays cheap:
// each charge is microseconds (sleeps run with 1 us timer slack), and with
// the store's device pool nothing allocates during a step; the store, engine
// and device suites took within ~25% of their time without it (1-5 s each).
// Off (`costs.enabled = false`): a test that times the link model alone, or
// `strata bench step --no-device-costs` to see a schedule's cost-free bound.
#pragma once

#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "gpu/device.h"

namespace strata::gpu {

// What the CUDA runtime charges for the calls that synchronise or launch.
// Defaults are public figures for H100 / RTX 5090 class systems (PCIe Gen5,
// CUDA 12); each is an order of magnitude, not a measurement of one box.
struct SimDeviceCosts {
  bool enabled = true;
  // cudaStreamSynchronize / cudaEventSynchronize / cudaDeviceSynchronize on
  // work that has just finished: the host learns of it one round trip later,
  // about 5-10 us (the completion interrupt or the spin-wait poll plus the
  // driver's return path; NVIDIA CUDA C++ Best Practices Guide, "Asynchronous
  // and Overlapping Transfers with Computation", calls every such point a
  // pipeline stall; forum and Nsight measurements put it at 5-10 us).
  double host_sync_us = 10.0;
  // cudaMalloc / cudaFree, after the device-wide synchronisation they imply
  // (CUDA Runtime API reference: cudaFree "performs an implicit
  // cudaDeviceSynchronize()"; the Best Practices Guide: allocation and
  // deallocation "are expensive operations ... sub-allocate"). Measured at
  // about 50 us for 4 KiB-512 KiB and rising to milliseconds for large
  // blocks (U. Virginia "Memory allocation overhead" study of cudaMalloc).
  double allocate_us = 50.0;
  double free_us = 50.0;
  // A copy from or to pageable host memory goes through the driver's pinned
  // staging buffer: at most about half the pinned bandwidth (NVIDIA developer
  // blog "How to Optimize Data Transfers in CUDA C/C++": pageable 2-3x slower
  // than pinned on the same link).
  double pageable_fraction = 0.5;
  // Each kernel launch: about 3-5 us of driver and GPU front-end time before
  // the kernel runs (cudaLaunchKernel ~5 us on the host, NVIDIA developer
  // forum thread 196616; Nsight Systems guide).
  double launch_us = 4.0;
};

struct SimDeviceOptions {
  uint64_t capacity_bytes = uint64_t{8} << 30;
  double h2d_gb_per_s = 50.0;  // 1e9 bytes per second
  double d2h_gb_per_s = 50.0;
  double copy_latency_us = 5.0;
  bool move_data = true;
  // A discrete GPU's memory as the code that chooses by it sees it:
  // host_addressable() and host_backed_memory() say false (the host never
  // touches device memory, a host-memory communicator cannot reach it)
  // while copies still move the data, so those paths are tested for what
  // they compute.
  bool discrete = false;
  SimDeviceCosts costs;
};

// Host mode: a SimDevice standing in for no GPU at all (the C API's and
// Python's "cpu"/host device, stratad's sessions). Copies are plain memcpys
// with no modelled link time or latency, and no CUDA costs are charged.
SimDeviceOptions host_mode_options(uint64_t capacity_bytes = uint64_t{1} << 30);

class SimDevice final : public Device {
 public:
  explicit SimDevice(SimDeviceOptions options = {});
  ~SimDevice() override;

  std::string name() const override;
  // Device memory is host memory; with move_data = false it holds no data.
  bool host_addressable() const override { return options_.move_data && !options_.discrete; }
  // Allocations are host memory, moving data or not (unless modelled discrete).
  bool host_backed_memory() const override { return !options_.discrete; }
  absl::StatusOr<void*> allocate(size_t bytes) override;
  void free(void* ptr) override;
  DeviceMemoryStats stats() const override;
  SyncCounters sync_counters() const override;

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

  // Whether [ptr, ptr + bytes) lies inside one registered host range (its
  // copies run at the pinned rate).
  bool registered(const void* ptr, size_t bytes) const;
  // The bytes of host memory registered now (all ranges together).
  size_t registered_bytes() const;

 private:
  class StreamWorker;
  enum class Engine { kNone, kH2D, kD2H, kCompute };
  using Clock = std::chrono::steady_clock;
  struct EventState {
    uint64_t recorded = 0;           // generations handed out by record_event
    uint64_t completed = 0;          // highest generation whose work has finished
    Clock::time_point completed_at;  // when `completed` was reached, in the model
  };

  absl::StatusOr<StreamWorker*> stream(StreamId id);
  // Both with mu_ held. The event's state, or InvalidArgument for an unknown id.
  absl::StatusOr<EventState*> event_locked(EventId event);
  // Whether the work of record `generation` has finished (a destroyed event has).
  bool reached_locked(EventId event, uint64_t generation) const;
  absl::Status enqueue(StreamId id, Engine engine, std::function<absl::Status()> op);
  absl::Status check_device_range(const void* ptr, size_t bytes, const char* what) const;
  void run_copy(Engine engine, void* dst, const void* src, size_t bytes, bool pinned);
  // Drains every stream (errors stay sticky on their streams): the implicit
  // device synchronisation of cudaMalloc / cudaFree, when costs are charged.
  void drain_all_streams();
  // Charges a host synchronisation: counts it and, with costs, sleeps one round trip.
  void charge_host_sync(bool device_wide);

  const SimDeviceOptions options_;
  mutable std::mutex mu_;  // guards everything below except the engine locks
  std::condition_variable events_cv_;
  std::map<uintptr_t, size_t> allocations_;  // start -> bytes
  DeviceMemoryStats stats_;
  SyncCounters sync_;
  std::unordered_map<StreamId, std::unique_ptr<StreamWorker>> streams_;
  std::unordered_map<EventId, EventState> events_;
  std::map<uintptr_t, size_t> registered_;  // start -> bytes
  StreamId next_stream_ = 1;
  EventId next_event_ = 1;
  std::mutex h2d_engine_, d2h_engine_, compute_engine_;
  // When each engine is free again in the model (each under its engine lock).
  Clock::time_point h2d_free_at_, d2h_free_at_, compute_free_at_;
};

}  // namespace strata::gpu
