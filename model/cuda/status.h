// CUDA errors and argument errors as absl::Status, for the host side of
// model/cuda (gpt2_kernels.cc, matmul.cc, runtime.cc).
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "absl/status/status.h"

namespace strata::model::cuda::detail {

inline absl::Status cuda_status(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  std::string msg = std::string("cuda::") + what + ": " + cudaGetErrorName(err) + " (" +
                    cudaGetErrorString(err) + ")";
  if (err == cudaErrorMemoryAllocation) return absl::ResourceExhaustedError(msg);
  return absl::InternalError(msg);
}

inline absl::Status bad_argument(const char* fn, const std::string& what) {
  return absl::InvalidArgumentError(std::string("cuda::") + fn + ": " + what);
}

}  // namespace strata::model::cuda::detail
