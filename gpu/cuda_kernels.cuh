// The engine's small CUDA kernels (cast, scale, squared norm). Each launcher
// enqueues on `stream` and returns the launch error, checked right after the
// launch (llm.c's cudaCheck(cudaGetLastError()) habit).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "core/dtype.h"

namespace strata::gpu::cuda {

cudaError_t launch_cast(const void* src, DType src_type, void* dst, DType dst_type, size_t n,
                        cudaStream_t stream);
cudaError_t launch_scale(void* x, DType type, size_t n, float factor, cudaStream_t stream);
// Zeroes the outputs, then accumulates sum(x^2) and the nonfinite flag.
cudaError_t launch_squared_norm(const void* x, DType type, size_t n, float* out_sum_sq,
                                int32_t* out_nonfinite, cudaStream_t stream);

}  // namespace strata::gpu::cuda
