// Stream and memory helpers of model/cuda/gpt2_kernels.h on the CUDA runtime.
#include <cuda_runtime.h>

#include <string>

#include "model/cuda/gpt2_kernels.h"
#include "model/cuda/status.h"

namespace strata::model::cuda {

using detail::cuda_status;

absl::StatusOr<Stream> create_stream() {
  cudaStream_t s = nullptr;
  if (absl::Status st = cuda_status(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking),
                                    "cudaStreamCreateWithFlags");
      !st.ok()) {
    return st;
  }
  return static_cast<Stream>(s);
}

absl::Status destroy_stream(Stream stream) {
  return cuda_status(cudaStreamDestroy(static_cast<cudaStream_t>(stream)), "cudaStreamDestroy");
}

absl::Status synchronize(Stream stream) {
  return cuda_status(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)),
                     "cudaStreamSynchronize");
}

absl::Status synchronize_device() {
  return cuda_status(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
}

absl::StatusOr<Event> create_event() {
  cudaEvent_t e = nullptr;
  if (absl::Status st =
          cuda_status(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate");
      !st.ok()) {
    return st;
  }
  return static_cast<Event>(e);
}

absl::Status destroy_event(Event event) {
  return cuda_status(cudaEventDestroy(static_cast<cudaEvent_t>(event)), "cudaEventDestroy");
}

absl::Status record_event(Event event, Stream stream) {
  return cuda_status(
      cudaEventRecord(static_cast<cudaEvent_t>(event), static_cast<cudaStream_t>(stream)),
      "cudaEventRecord");
}

absl::Status synchronize_event(Event event) {
  return cuda_status(cudaEventSynchronize(static_cast<cudaEvent_t>(event)), "cudaEventSynchronize");
}

absl::StatusOr<void*> allocate(size_t bytes) {
  void* p = nullptr;
  if (absl::Status st = cuda_status(cudaMalloc(&p, bytes), "cudaMalloc"); !st.ok()) {
    return absl::Status(st.code(), std::string(st.message()) + " allocating " +
                                       std::to_string(bytes) + " bytes of device memory");
  }
  return p;
}

void free(void* ptr) {
  if (ptr != nullptr) cudaFree(ptr);
}

absl::StatusOr<void*> allocate_host(size_t bytes) {
  void* p = nullptr;
  if (absl::Status st = cuda_status(cudaMallocHost(&p, bytes), "cudaMallocHost"); !st.ok()) {
    return absl::Status(st.code(), std::string(st.message()) + " allocating " +
                                       std::to_string(bytes) + " bytes of pinned host memory");
  }
  return p;
}

void free_host(void* ptr) {
  if (ptr != nullptr) cudaFreeHost(ptr);
}

absl::Status zero(void* ptr, size_t bytes, Stream stream) {
  return cuda_status(cudaMemsetAsync(ptr, 0, bytes, static_cast<cudaStream_t>(stream)),
                     "cudaMemsetAsync");
}

absl::Status copy(void* dst, const void* src, size_t bytes, Stream stream) {
  return cuda_status(
      cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, static_cast<cudaStream_t>(stream)),
      "cudaMemcpyAsync");
}

}  // namespace strata::model::cuda
