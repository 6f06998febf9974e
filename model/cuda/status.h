// CUDA errors (gpu/cuda_status.h) and argument errors as absl::Status, for the host side of
// model/cuda (gpt2_kernels.cc, matmul.cc, runtime.cc).
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "absl/status/status.h"
#include "gpu/cuda_status.h"

namespace strata::model::cuda::detail {

// The one conversion (gpu/cuda_status.h): it also clears the handled error
// so the next launch check does not pick it up.
using gpu::cuda_status;

inline absl::Status bad_argument(const char* fn, const std::string& what) {
  return absl::InvalidArgumentError(std::string("cuda::") + fn + ": " + what);
}

}  // namespace strata::model::cuda::detail
