// LayerNorm forward and backward on the GPU: one warp per row for the
// row-wise parts; the weight and bias gradients (sums over rows) are split
// over channels, 32 a block, so each sum has one owner and a fixed order.
#include "model/cuda/common.cuh"

namespace strata::model::cuda::launch {
namespace {

constexpr float kEps = 1e-5f;                   // model::cpu::kLayerNormEps
constexpr int kWarps = kLayerNormRowsPerBlock;  // one warp per row
constexpr int kRowThreads = 32 * kWarps;
constexpr int kParamRows = 16;  // row groups per block in the dweight/dbias kernel

__global__ void __launch_bounds__(kRowThreads)
    layernorm_forward_kernel(void* out, float* mean, float* rstd, const void* inp,
                             const void* weight, const void* bias, int64_t n, int64_t c, int t) {
  const int64_t row = blockIdx.x * int64_t{kWarps} + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= n) return;  // whole warps leave together
  const int64_t base = row * c;
  float s = 0.0f;
  for (int64_t i = lane; i < c; i += 32) s += load(inp, t, base + i);
  const float m = warp_sum(s) / static_cast<float>(c);
  // Two passes, as on the CPU: no cancellation when |mean| >> std.
  float v = 0.0f;
  for (int64_t i = lane; i < c; i += 32) {
    const float d = load(inp, t, base + i) - m;
    v += d * d;
  }
  const float rs = 1.0f / sqrtf(warp_sum(v) / static_cast<float>(c) + kEps);
  for (int64_t i = lane; i < c; i += 32) {
    const float y = (load(inp, t, base + i) - m) * rs * load(weight, t, i) + load(bias, t, i);
    store(out, t, base + i, y);
  }
  if (lane == 0) {
    mean[row] = m;
    rstd[row] = rs;
  }
}

__global__ void __launch_bounds__(kRowThreads)
    layernorm_backward_dinp_kernel(void* dinp, const void* dout, const void* inp,
                                   const void* weight, const float* mean, const float* rstd,
                                   int64_t n, int64_t c, int t) {
  const int64_t row = blockIdx.x * int64_t{kWarps} + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= n) return;
  const int64_t base = row * c;
  const float m = mean[row], rs = rstd[row];
  float sum_dn = 0.0f, sum_dn_n = 0.0f;
  for (int64_t i = lane; i < c; i += 32) {
    const float dn = load(dout, t, base + i) * load(weight, t, i);
    sum_dn += dn;
    sum_dn_n += dn * (load(inp, t, base + i) - m) * rs;
  }
  const float mean_dn = warp_sum(sum_dn) / static_cast<float>(c);
  const float mean_dn_n = warp_sum(sum_dn_n) / static_cast<float>(c);
  for (int64_t i = lane; i < c; i += 32) {
    const float norm = (load(inp, t, base + i) - m) * rs;
    const float dn = load(dout, t, base + i) * load(weight, t, i);
    store(dinp, t, base + i, load(dinp, t, base + i) + rs * (dn - mean_dn - norm * mean_dn_n));
  }
}

// Block (32 channels, kParamRows row groups): thread (x, y) sums rows y,
// y + kParamRows, ... of channel x; then row group 0 adds the partials in
// order. Reads are coalesced: a warp covers 32 channels of one row.
__global__ void __launch_bounds__(32 * kParamRows)
    layernorm_backward_params_kernel(float* dweight, float* dbias, const void* dout,
                                     const void* inp, const float* mean, const float* rstd,
                                     int64_t n, int64_t c, int t) {
  __shared__ float dw_part[kParamRows][33];
  __shared__ float db_part[kParamRows][33];
  const int64_t ch = blockIdx.x * int64_t{32} + threadIdx.x;
  float dw = 0.0f, db = 0.0f;
  if (ch < c) {
    for (int64_t row = threadIdx.y; row < n; row += kParamRows) {
      const float dy = load(dout, t, row * c + ch);
      dw += (load(inp, t, row * c + ch) - mean[row]) * rstd[row] * dy;
      db += dy;
    }
  }
  dw_part[threadIdx.y][threadIdx.x] = dw;
  db_part[threadIdx.y][threadIdx.x] = db;
  __syncthreads();
  if (threadIdx.y != 0 || ch >= c) return;
  for (int y = 1; y < kParamRows; ++y) {
    dw += dw_part[y][threadIdx.x];
    db += db_part[y][threadIdx.x];
  }
  if (dweight != nullptr) dweight[ch] += dw;
  if (dbias != nullptr) dbias[ch] += db;
}

}  // namespace

cudaError_t layernorm_forward(void* out, float* mean, float* rstd, const void* inp,
                              const void* weight, const void* bias, int64_t n, int64_t c, int dtype,
                              cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>((n + kWarps - 1) / kWarps);
  layernorm_forward_kernel<<<blocks, kRowThreads, 0, stream>>>(out, mean, rstd, inp, weight, bias,
                                                               n, c, dtype);
  return cudaGetLastError();
}

cudaError_t layernorm_backward(void* dinp, float* dweight, float* dbias, const void* dout,
                               const void* inp, const void* weight, const float* mean,
                               const float* rstd, int64_t n, int64_t c, int dtype,
                               cudaStream_t stream) {
  if (dinp != nullptr) {
    const unsigned blocks = static_cast<unsigned>((n + kWarps - 1) / kWarps);
    layernorm_backward_dinp_kernel<<<blocks, kRowThreads, 0, stream>>>(dinp, dout, inp, weight,
                                                                       mean, rstd, n, c, dtype);
    if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  }
  if (dweight != nullptr || dbias != nullptr) {
    const unsigned blocks = static_cast<unsigned>((c + 31) / 32);
    layernorm_backward_params_kernel<<<blocks, dim3(32, kParamRows), 0, stream>>>(
        dweight, dbias, dout, inp, mean, rstd, n, c, dtype);
    if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

}  // namespace strata::model::cuda::launch
