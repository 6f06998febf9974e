#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "gpu/cuda_kernels.cuh"

namespace strata::gpu::cuda {
namespace {

constexpr int kThreads = 256;

// Rounding matches core/dtype.h: __float2half_rn and __float2bfloat16_rn
// round to nearest even and keep inf/nan.
__device__ inline float load(const void* p, DType t, size_t i) {
  switch (t) {
    case DType::kFloat16:
      return __half2float(static_cast<const __half*>(p)[i]);
    case DType::kBFloat16:
      return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    default:
      return static_cast<const float*>(p)[i];
  }
}

__device__ inline void store(void* p, DType t, size_t i, float v) {
  switch (t) {
    case DType::kFloat16:
      static_cast<__half*>(p)[i] = __float2half_rn(v);
      break;
    case DType::kBFloat16:
      static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v);
      break;
    default:
      static_cast<float*>(p)[i] = v;
      break;
  }
}

__global__ void cast_kernel(const void* src, DType st, void* dst, DType dt, size_t n) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n;
       i += size_t{gridDim.x} * blockDim.x) {
    store(dst, dt, i, load(src, st, i));
  }
}

__global__ void scale_kernel(void* x, DType t, size_t n, float factor) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n;
       i += size_t{gridDim.x} * blockDim.x) {
    store(x, t, i, load(x, t, i) * factor);
  }
}

__global__ void squared_norm_kernel(const void* x, DType t, size_t n, float* out, int32_t* flag) {
  __shared__ float partial[kThreads];
  float sum = 0.f;
  int bad = 0;
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n;
       i += size_t{gridDim.x} * blockDim.x) {
    float v = load(x, t, i);
    bad |= !isfinite(v);
    sum += v * v;
  }
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) atomicAdd(out, partial[0]);
  if (bad) atomicOr(flag, 1);
}

unsigned blocks_for(size_t n) {
  size_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 4096 ? (b == 0 ? 1 : b) : 4096);
}

}  // namespace

cudaError_t launch_cast(const void* src, DType src_type, void* dst, DType dst_type, size_t n,
                        cudaStream_t stream) {
  cast_kernel<<<blocks_for(n), kThreads, 0, stream>>>(src, src_type, dst, dst_type, n);
  return cudaGetLastError();
}

cudaError_t launch_scale(void* x, DType type, size_t n, float factor, cudaStream_t stream) {
  scale_kernel<<<blocks_for(n), kThreads, 0, stream>>>(x, type, n, factor);
  return cudaGetLastError();
}

cudaError_t launch_squared_norm(const void* x, DType type, size_t n, float* out_sum_sq,
                                int32_t* out_nonfinite, cudaStream_t stream) {
  if (cudaError_t e = cudaMemsetAsync(out_sum_sq, 0, sizeof(float), stream); e != cudaSuccess) {
    return e;
  }
  if (cudaError_t e = cudaMemsetAsync(out_nonfinite, 0, sizeof(int32_t), stream);
      e != cudaSuccess) {
    return e;
  }
  squared_norm_kernel<<<blocks_for(n), kThreads, 0, stream>>>(x, type, n, out_sum_sq,
                                                              out_nonfinite);
  return cudaGetLastError();
}

}  // namespace strata::gpu::cuda
