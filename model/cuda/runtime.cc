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
