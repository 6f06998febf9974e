// cuda_status: the one conversion of a cudaError_t into an absl::Status, for
// gpu/ and model/cuda alike (CUDA builds only).
//
// A failure converted here is handled: the thread's last-error slot is
// cleared (cudaGetLastError), so the launch check after the next kernel
// (cudaGetLastError, llm.c's habit) does not report it again as that
// kernel's error. Sticky errors (a faulted context) cannot be cleared; every
// later call keeps failing, as it should. Code that handles a failure
// without converting it (cudaEventQuery's cudaErrorNotReady, a fallback)
// calls clear_cuda_error() itself.
//
//   if (absl::Status s = cuda_status(cudaMalloc(&p, n), "cudaMalloc"); !s.ok()) return s;
#pragma once

#include <cuda_runtime.h>

#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace strata::gpu {

// Clears this thread's last CUDA error after a failure that was handled.
inline void clear_cuda_error() { (void)cudaGetLastError(); }

// Ok for cudaSuccess; ResourceExhausted for cudaErrorMemoryAllocation;
// Internal otherwise. The message is "<what>: <name> (<description>)".
inline absl::Status cuda_status(cudaError_t err, std::string_view what) {
  if (err == cudaSuccess) return absl::OkStatus();
  clear_cuda_error();
  std::string msg =
      std::string(what) + ": " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")";
  if (err == cudaErrorMemoryAllocation) return absl::ResourceExhaustedError(msg);
  return absl::InternalError(msg);
}

}  // namespace strata::gpu
