// Device-side helpers of the model's CUDA kernels: dtype-dispatched loads and
// stores (one compiled kernel serves fp32, fp16 and bf16: the branch on the
// dtype is uniform across a launch and costs far less than a template
// instantiation per dtype in nvcc time) and warp reductions. No absl or
// project headers here: they would cost nvcc seconds per .cu file.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "model/cuda/launch.h"

namespace strata::model::cuda::launch {

__device__ __forceinline__ float load(const void* p, int t, int64_t i) {
  switch (t) {
    case kF16:
      return __half2float(static_cast<const __half*>(p)[i]);
    case kBF16:
      return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    default:
      return static_cast<const float*>(p)[i];
  }
}

// Round to nearest even, as core/dtype.h does on the host.
__device__ __forceinline__ void store(void* p, int t, int64_t i, float v) {
  switch (t) {
    case kF16:
      static_cast<__half*>(p)[i] = __float2half_rn(v);
      break;
    case kBF16:
      static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v);
      break;
    default:
      static_cast<float*>(p)[i] = v;
      break;
  }
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

// Blocks for a grid-stride loop over n elements.
inline unsigned grid_for(int64_t n, int threads) {
  const int64_t blocks = (n + threads - 1) / threads;
  constexpr int64_t kMaxBlocks = 1 << 16;  // enough to fill any current GPU
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > kMaxBlocks ? kMaxBlocks : blocks));
}

}  // namespace strata::model::cuda::launch
