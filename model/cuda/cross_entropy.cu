// Fused softmax cross-entropy on the GPU: one block per row of logits.
#include <cmath>

#include "model/cuda/common.cuh"

namespace strata::model::cuda::launch {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// Sum (or max) over the block, in a fixed tree order; every thread gets the
// result. `scratch` holds kWarps values and is free again on return.
template <bool kMax>
__device__ float block_reduce(float v, float* scratch) {
  v = kMax ? warp_max(v) : warp_sum(v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float r = lane < kWarps ? scratch[lane] : (kMax ? -INFINITY : 0.0f);
  r = kMax ? warp_max(r) : warp_sum(r);
  __syncthreads();  // scratch may be reused by the caller's next reduction
  return r;
}

__device__ int block_count_targets(const int32_t* targets, int64_t n, int32_t ignore_index,
                                   float* scratch) {
  // Counts stay exact in float up to 2^24 rows, far beyond any batch.
  float count = 0.0f;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) count += targets[i] != ignore_index;
  return static_cast<int>(block_reduce<false>(count, scratch));
}

__global__ void __launch_bounds__(kThreads)
    cross_entropy_forward_kernel(float* losses, float* lse, const void* logits,
                                 const int32_t* targets, int64_t v, int64_t vp,
                                 int32_t ignore_index, int t) {
  __shared__ float scratch[kWarps];
  const int64_t row = blockIdx.x;
  const int64_t base = row * vp;
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < v; j += kThreads) mx = fmaxf(mx, load(logits, t, base + j));
  mx = block_reduce<true>(mx, scratch);
  float s = 0.0f;
  for (int64_t j = threadIdx.x; j < v; j += kThreads) s += expf(load(logits, t, base + j) - mx);
  s = block_reduce<false>(s, scratch);
  if (threadIdx.x != 0) return;
  const float row_lse = mx + logf(s);
  lse[row] = row_lse;
  const int32_t tgt = targets[row];
  if (tgt == ignore_index) {
    losses[row] = 0.0f;
    return;
  }
  if (tgt < 0 || tgt >= v) __trap();  // the host validates data; see the header
  losses[row] = row_lse - load(logits, t, base + tgt);
}

// One block: the mean over counted rows, each thread summing a strided
// slice in double, then a fixed-order tree.
__global__ void __launch_bounds__(kThreads)
    mean_loss_kernel(float* mean_loss, const float* losses, const int32_t* targets, int64_t n,
                     int32_t ignore_index) {
  __shared__ double sum[kThreads];
  __shared__ int64_t count[kThreads];
  double s = 0.0;
  int64_t k = 0;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) {
    s += losses[i];
    k += targets[i] != ignore_index;
  }
  sum[threadIdx.x] = s;
  count[threadIdx.x] = k;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half >>= 1) {
    if (threadIdx.x < half) {
      sum[threadIdx.x] += sum[threadIdx.x + half];
      count[threadIdx.x] += count[threadIdx.x + half];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    *mean_loss = count[0] == 0 ? 0.0f : static_cast<float>(sum[0] / static_cast<double>(count[0]));
  }
}

__global__ void __launch_bounds__(kThreads)
    cross_entropy_backward_kernel(void* dlogits, const void* logits, const float* lse,
                                  const int32_t* targets, int64_t n, int64_t v, int64_t vp,
                                  float dloss, int32_t ignore_index, int t) {
  __shared__ float scratch[kWarps];
  const int count = block_count_targets(targets, n, ignore_index, scratch);
  const float scale = count == 0 ? 0.0f : dloss / static_cast<float>(count);
  const int64_t row = blockIdx.x;
  const int64_t base = row * vp;
  const int32_t tgt = targets[row];
  if (tgt == ignore_index) {
    for (int64_t j = threadIdx.x; j < vp; j += kThreads) store(dlogits, t, base + j, 0.0f);
    return;
  }
  if (tgt < 0 || tgt >= v) __trap();
  const float row_lse = lse[row];
  // Each element is read and written by one thread: safe when dlogits == logits.
  for (int64_t j = threadIdx.x; j < v; j += kThreads) {
    float g = scale * expf(load(logits, t, base + j) - row_lse);
    if (j == tgt) g -= scale;
    store(dlogits, t, base + j, g);
  }
  for (int64_t j = v + threadIdx.x; j < vp; j += kThreads) store(dlogits, t, base + j, 0.0f);
}

}  // namespace

cudaError_t cross_entropy_forward(float* losses, float* lse, float* mean_loss, const void* logits,
                                  const int32_t* targets, int64_t n, int64_t v, int64_t vp,
                                  int32_t ignore_index, int dtype, cudaStream_t stream) {
  cross_entropy_forward_kernel<<<static_cast<unsigned>(n), kThreads, 0, stream>>>(
      losses, lse, logits, targets, v, vp, ignore_index, dtype);
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess || mean_loss == nullptr) return e;
  mean_loss_kernel<<<1, kThreads, 0, stream>>>(mean_loss, losses, targets, n, ignore_index);
  return cudaGetLastError();
}

cudaError_t cross_entropy_backward(void* dlogits, const void* logits, const float* lse,
                                   const int32_t* targets, int64_t n, int64_t v, int64_t vp,
                                   float dloss, int32_t ignore_index, int dtype,
                                   cudaStream_t stream) {
  cross_entropy_backward_kernel<<<static_cast<unsigned>(n), kThreads, 0, stream>>>(
      dlogits, logits, lse, targets, n, v, vp, dloss, ignore_index, dtype);
  return cudaGetLastError();
}

}  // namespace strata::model::cuda::launch
