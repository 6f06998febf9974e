// CudaDevice: Device on the CUDA runtime. Every call selects the device
// first, because the current device is per host thread in CUDA.
#include <cuda_runtime.h>

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "gpu/cuda_kernels.cuh"
#include "gpu/cuda_status.h"
#include "gpu/device.h"

namespace strata::gpu {
namespace {

class CudaDevice final : public Device {
 public:
  explicit CudaDevice(int ordinal) : ordinal_(ordinal) {}
  ~CudaDevice() override {
    cudaSetDevice(ordinal_);
    cudaDeviceSynchronize();
    for (auto& [id, s] : streams_) cudaStreamDestroy(s);
    for (auto& [id, e] : events_) cudaEventDestroy(e);
    for (auto& [p, bytes] : allocations_) cudaFree(p);
  }

  absl::Status init() {
    if (absl::Status s = cuda_status(cudaSetDevice(ordinal_), "cudaSetDevice"); !s.ok()) return s;
    cudaDeviceProp prop;
    if (absl::Status s = cuda_status(cudaGetDeviceProperties(&prop, ordinal_), "device properties");
        !s.ok()) {
      return s;
    }
    name_ = prop.name;
    stats_.capacity_bytes = prop.totalGlobalMem;
    return absl::OkStatus();
  }

  std::string name() const override { return "CUDA " + std::to_string(ordinal_) + ": " + name_; }

  absl::StatusOr<void*> allocate(size_t bytes) override {
    cudaSetDevice(ordinal_);
    void* p = nullptr;
    const cudaError_t err = cudaMalloc(&p, bytes);
    {
      // cudaMalloc may synchronise the device, failed or not: counted as if it always did.
      std::lock_guard lock(mu_);
      ++sync_.device_syncs;
    }
    if (absl::Status s = cuda_status(err, "cudaMalloc"); !s.ok()) {
      return absl::ResourceExhaustedError("device out of memory allocating " +
                                          std::to_string(bytes) +
                                          " bytes: " + std::string(s.message()));
    }
    std::lock_guard lock(mu_);
    ++sync_.allocations;
    allocations_[p] = bytes;
    stats_.used_bytes += bytes;
    if (stats_.used_bytes > stats_.peak_bytes) stats_.peak_bytes = stats_.used_bytes;
    return p;
  }

  void free(void* ptr) override {
    if (ptr == nullptr) return;
    cudaSetDevice(ordinal_);
    cudaFree(ptr);  // synchronises the whole device
    std::lock_guard lock(mu_);
    ++sync_.frees;
    ++sync_.device_syncs;
    auto it = allocations_.find(ptr);
    if (it != allocations_.end()) {
      stats_.used_bytes -= it->second;
      allocations_.erase(it);
    }
  }

  DeviceMemoryStats stats() const override {
    std::lock_guard lock(mu_);
    return stats_;
  }

  SyncCounters sync_counters() const override {
    std::lock_guard lock(mu_);
    return sync_;
  }

  void* native_stream(StreamId stream) override { return find_stream(stream); }

  absl::StatusOr<StreamId> create_stream() override {
    cudaSetDevice(ordinal_);
    cudaStream_t s;
    if (absl::Status st =
            cuda_status(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
        !st.ok()) {
      return st;
    }
    std::lock_guard lock(mu_);
    StreamId id = next_id_++;
    streams_[id] = s;
    return id;
  }

  void destroy_stream(StreamId stream) override {
    std::lock_guard lock(mu_);
    auto it = streams_.find(stream);
    if (it == streams_.end()) return;
    cudaStreamDestroy(it->second);
    streams_.erase(it);
  }

  absl::StatusOr<EventId> create_event() override {
    cudaSetDevice(ordinal_);
    cudaEvent_t e;
    if (absl::Status st =
            cuda_status(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate");
        !st.ok()) {
      return st;
    }
    std::lock_guard lock(mu_);
    EventId id = next_id_++;
    events_[id] = e;
    return id;
  }

  void destroy_event(EventId event) override {
    std::lock_guard lock(mu_);
    auto it = events_.find(event);
    if (it == events_.end()) return;
    cudaEventDestroy(it->second);
    events_.erase(it);
  }

  absl::Status record_event(EventId event, StreamId stream) override {
    auto [e, s] = lookup(event, stream);
    if (e == nullptr || s == nullptr) return unknown();
    return cuda_status(cudaEventRecord(e, s), "cudaEventRecord");
  }

  absl::Status wait_event(StreamId stream, EventId event) override {
    auto [e, s] = lookup(event, stream);
    if (e == nullptr || s == nullptr) return unknown();
    return cuda_status(cudaStreamWaitEvent(s, e, 0), "cudaStreamWaitEvent");
  }

  absl::StatusOr<bool> query_event(EventId event) override {
    cudaEvent_t e = find_event(event);
    if (e == nullptr) return unknown();
    cudaError_t err = cudaEventQuery(e);
    if (err == cudaErrorNotReady) {
      clear_cuda_error();  // not an error: keep it out of the next launch check
      return false;
    }
    if (absl::Status s = cuda_status(err, "cudaEventQuery"); !s.ok()) return s;
    return true;
  }

  absl::Status synchronize_event(EventId event) override {
    cudaEvent_t e = find_event(event);
    if (e == nullptr) return unknown();
    count_sync(false);
    return cuda_status(cudaEventSynchronize(e), "cudaEventSynchronize");
  }

  absl::Status synchronize_stream(StreamId stream) override {
    cudaStream_t s = find_stream(stream);
    if (s == nullptr) return unknown();
    count_sync(false);
    return cuda_status(cudaStreamSynchronize(s), "cudaStreamSynchronize");
  }

  absl::Status synchronize() override {
    cudaSetDevice(ordinal_);
    count_sync(true);
    return cuda_status(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  }

  absl::Status copy_to_device(void* dst, const void* src, size_t bytes, StreamId stream) override {
    return copy(dst, src, bytes, cudaMemcpyHostToDevice, stream, &DeviceMemoryStats::h2d_bytes);
  }
  absl::Status copy_to_host(void* dst, const void* src, size_t bytes, StreamId stream) override {
    return copy(dst, src, bytes, cudaMemcpyDeviceToHost, stream, &DeviceMemoryStats::d2h_bytes);
  }
  absl::Status copy_on_device(void* dst, const void* src, size_t bytes, StreamId stream) override {
    return copy(dst, src, bytes, cudaMemcpyDeviceToDevice, stream, nullptr);
  }

  absl::Status launch_host_function(StreamId stream, std::function<void()> fn) override {
    cudaStream_t s = find_stream(stream);
    if (s == nullptr) return unknown();
    auto* heap_fn = new std::function<void()>(std::move(fn));
    cudaError_t err = cudaLaunchHostFunc(
        s,
        [](void* arg) {
          std::unique_ptr<std::function<void()>> f(static_cast<std::function<void()>*>(arg));
          (*f)();
        },
        heap_fn);
    if (err != cudaSuccess) delete heap_fn;
    return cuda_status(err, "cudaLaunchHostFunc");
  }

  absl::Status cast(const void* src, DType st, void* dst, DType dt, size_t n,
                    StreamId stream) override {
    cudaStream_t s = find_stream(stream);
    if (s == nullptr) return unknown();
    return cuda_status(cuda::launch_cast(src, st, dst, dt, n, s), "cast kernel");
  }

  absl::Status scale(void* x, DType type, size_t n, float factor, StreamId stream) override {
    cudaStream_t s = find_stream(stream);
    if (s == nullptr) return unknown();
    return cuda_status(cuda::launch_scale(x, type, n, factor, s), "scale kernel");
  }

  absl::Status squared_norm(const void* x, DType type, size_t n, float* out_sum_sq,
                            int32_t* out_nonfinite, StreamId stream) override {
    cudaStream_t s = find_stream(stream);
    if (s == nullptr) return unknown();
    return cuda_status(cuda::launch_squared_norm(x, type, n, out_sum_sq, out_nonfinite, s),
                       "squared_norm kernel");
  }

  absl::Status register_host_memory(void* ptr, size_t bytes) override {
    cudaSetDevice(ordinal_);
    cudaError_t err = cudaHostRegister(ptr, bytes, cudaHostRegisterPortable);
    if (err != cudaSuccess) {
      clear_cuda_error();  // reported here; callers may carry on unpinned
      return absl::ResourceExhaustedError(
          "cannot pin " + std::to_string(bytes) + " bytes of host memory (cudaHostRegister: " +
          cudaGetErrorString(err) + "); check RLIMIT_MEMLOCK (ulimit -l) and free memory");
    }
    return absl::OkStatus();
  }

  absl::Status unregister_host_memory(void* ptr) override {
    cudaSetDevice(ordinal_);
    return cuda_status(cudaHostUnregister(ptr), "cudaHostUnregister");
  }

 private:
  static absl::Status unknown() { return absl::InvalidArgumentError("unknown stream or event"); }

  void count_sync(bool device_wide) {
    std::lock_guard lock(mu_);
    ++sync_.host_syncs;
    if (device_wide) ++sync_.device_syncs;
  }

  cudaStream_t find_stream(StreamId id) {
    cudaSetDevice(ordinal_);
    std::lock_guard lock(mu_);
    auto it = streams_.find(id);
    return it == streams_.end() ? nullptr : it->second;
  }
  cudaEvent_t find_event(EventId id) {
    cudaSetDevice(ordinal_);
    std::lock_guard lock(mu_);
    auto it = events_.find(id);
    return it == events_.end() ? nullptr : it->second;
  }
  std::pair<cudaEvent_t, cudaStream_t> lookup(EventId e, StreamId s) {
    return {find_event(e), find_stream(s)};
  }

  absl::Status copy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, StreamId stream,
                    uint64_t DeviceMemoryStats::*counter) {
    cudaStream_t s = find_stream(stream);
    if (s == nullptr) return unknown();
    if (absl::Status st = cuda_status(cudaMemcpyAsync(dst, src, bytes, kind, s), "cudaMemcpyAsync");
        !st.ok()) {
      return st;
    }
    if (counter != nullptr) {
      std::lock_guard lock(mu_);
      stats_.*counter += bytes;
    }
    return absl::OkStatus();
  }

  const int ordinal_;
  std::string name_;
  mutable std::mutex mu_;
  DeviceMemoryStats stats_;
  SyncCounters sync_;
  std::unordered_map<void*, size_t> allocations_;
  std::unordered_map<uint32_t, cudaStream_t> streams_;
  std::unordered_map<uint32_t, cudaEvent_t> events_;
  uint32_t next_id_ = 1;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Device>> make_cuda_device(int ordinal) {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    clear_cuda_error();
    return absl::FailedPreconditionError(
        std::string("no CUDA device available (") +
        (err != cudaSuccess ? cudaGetErrorString(err) : "driver sees 0 GPUs") +
        "); use --device cpu, or run `strata report` to see why");
  }
  if (ordinal < 0 || ordinal >= count) {
    return absl::InvalidArgumentError("CUDA device " + std::to_string(ordinal) +
                                      " does not exist; this machine has " + std::to_string(count));
  }
  auto device = std::make_unique<CudaDevice>(ordinal);
  if (absl::Status s = device->init(); !s.ok()) return s;
  return std::unique_ptr<Device>(std::move(device));
}

}  // namespace strata::gpu
