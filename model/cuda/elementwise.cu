// GELU, residual, the token + position embedding, the fp32 cast and the
// dense layers' bias kernels on the GPU.
#include "model/cuda/common.cuh"

namespace strata::model::cuda::launch {
namespace {

constexpr int kThreads = 256;
constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kCubic = 0.044715f;
// The wte gradient splits tokens into this many buckets (token % kBuckets),
// one grid row each, so that each (token, channel) sum has exactly one
// owner thread that visits rows in order: deterministic without atomics.
constexpr int kTokenBuckets = 32;
constexpr int kBiasRows = 16;  // row groups per block in the column-sum kernel

#define STRATA_GRID_STRIDE(i, n)                                            \
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < (n); \
       i += int64_t{gridDim.x} * blockDim.x)

__global__ void __launch_bounds__(kThreads)
    gelu_forward_kernel(void* out, const void* inp, int64_t n, int t) {
  STRATA_GRID_STRIDE(i, n) {
    const float x = load(inp, t, i);
    const float u = kSqrt2OverPi * (x + kCubic * x * x * x);
    store(out, t, i, 0.5f * x * (1.0f + tanhf(u)));
  }
}

__global__ void __launch_bounds__(kThreads)
    gelu_backward_kernel(void* dinp, const void* inp, const void* dout, int64_t n, int t) {
  STRATA_GRID_STRIDE(i, n) {
    const float x = load(inp, t, i);
    const float u = kSqrt2OverPi * (x + kCubic * x * x * x);
    const float th = tanhf(u);
    // sech^2 as 1 - tanh^2: cosh(u)^2 overflows for |u| > ~44.
    const float du = kSqrt2OverPi * (1.0f + 3.0f * kCubic * x * x);
    const float grad = 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * du;
    store(dinp, t, i, load(dinp, t, i) + grad * load(dout, t, i));
  }
}

__global__ void __launch_bounds__(kThreads)
    residual_forward_kernel(void* out, const void* a, const void* b, int64_t n, int t) {
  STRATA_GRID_STRIDE(i, n) { store(out, t, i, load(a, t, i) + load(b, t, i)); }
}

__global__ void __launch_bounds__(kThreads)
    residual_backward_kernel(void* da, void* db, const void* dout, int64_t n, int t) {
  STRATA_GRID_STRIDE(i, n) {
    const float g = load(dout, t, i);
    if (da != nullptr) store(da, t, i, load(da, t, i) + g);
    if (db != nullptr) store(db, t, i, load(db, t, i) + g);
  }
}

// out[r, :] = wte[tokens[r], :] + wpe[r % T, :] over r in [0, B*T).
__global__ void __launch_bounds__(kThreads)
    encoder_forward_kernel(void* out, const int32_t* tokens, const void* wte, const void* wpe,
                           int64_t rows, int64_t t_len, int64_t c, int64_t v, int t) {
  STRATA_GRID_STRIDE(i, rows * c) {
    const int64_t r = i / c, ch = i % c;
    const int32_t tok = tokens[r];
    if (tok < 0 || tok >= v) __trap();  // the host validates data; see gpt2_kernels.h
    store(out, t, i, load(wte, t, tok * c + ch) + load(wpe, t, (r % t_len) * c + ch));
  }
}

// Thread (channel, bucket) owns dwte[tok, channel] for every tok in its
// bucket and adds the rows in order, as the CPU kernel does.
__global__ void __launch_bounds__(kThreads)
    encoder_backward_wte_kernel(float* dwte, const void* dout, const int32_t* tokens, int64_t rows,
                                int64_t c, int64_t v, int t) {
  const int64_t ch = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  const int32_t bucket = static_cast<int32_t>(blockIdx.y);
  if (ch >= c) return;
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t tok = tokens[r];
    if (tok < 0 || tok >= v) __trap();
    if (tok % kTokenBuckets != bucket) continue;
    dwte[tok * c + ch] += load(dout, t, r * c + ch);
  }
}

// Thread (position, channel) adds dout[b, pos, channel] for b in order.
__global__ void __launch_bounds__(kThreads)
    encoder_backward_wpe_kernel(float* dwpe, const void* dout, int64_t b, int64_t t_len, int64_t c,
                                int t) {
  STRATA_GRID_STRIDE(i, t_len * c) {
    float acc = dwpe[i];
    for (int64_t bi = 0; bi < b; ++bi) acc += load(dout, t, bi * t_len * c + i);
    dwpe[i] = acc;
  }
}

__global__ void __launch_bounds__(kThreads)
    cast_from_fp32_kernel(void* dst, const float* src, int64_t n, int t) {
  STRATA_GRID_STRIDE(i, n) { store(dst, t, i, src[i]); }
}

// out[r, o] = bias[o]; the gemm then adds into it (beta = 1), so the bias is
// summed in fp32 inside the gemm rather than rounded twice.
__global__ void __launch_bounds__(kThreads)
    broadcast_bias_kernel(void* out, const void* bias, int64_t n, int64_t oc, int t) {
  STRATA_GRID_STRIDE(i, n * oc) { store(out, t, i, load(bias, t, i % oc)); }
}

#undef STRATA_GRID_STRIDE

// dbias[o] += sum over rows of dout[r, o]; thread (x, y) sums rows y,
// y + kBiasRows, ... of column x, then row group 0 adds the partials in order.
// A warp reads 32 adjacent columns of one row: coalesced.
__global__ void __launch_bounds__(32 * kBiasRows)
    column_sum_kernel(float* dbias, const void* dout, int64_t n, int64_t oc, int t) {
  __shared__ float part[kBiasRows][33];
  const int64_t col = blockIdx.x * int64_t{32} + threadIdx.x;
  float s = 0.0f;
  if (col < oc) {
    for (int64_t r = threadIdx.y; r < n; r += kBiasRows) s += load(dout, t, r * oc + col);
  }
  part[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y != 0 || col >= oc) return;
  for (int y = 1; y < kBiasRows; ++y) s += part[y][threadIdx.x];
  dbias[col] += s;
}

}  // namespace

cudaError_t gelu_forward(void* out, const void* inp, int64_t n, int dtype, cudaStream_t stream) {
  gelu_forward_kernel<<<grid_for(n, kThreads), kThreads, 0, stream>>>(out, inp, n, dtype);
  return cudaGetLastError();
}

cudaError_t gelu_backward(void* dinp, const void* inp, const void* dout, int64_t n, int dtype,
                          cudaStream_t stream) {
  gelu_backward_kernel<<<grid_for(n, kThreads), kThreads, 0, stream>>>(dinp, inp, dout, n, dtype);
  return cudaGetLastError();
}

cudaError_t residual_forward(void* out, const void* a, const void* b, int64_t n, int dtype,
                             cudaStream_t stream) {
  residual_forward_kernel<<<grid_for(n, kThreads), kThreads, 0, stream>>>(out, a, b, n, dtype);
  return cudaGetLastError();
}

cudaError_t residual_backward(void* da, void* db, const void* dout, int64_t n, int dtype,
                              cudaStream_t stream) {
  residual_backward_kernel<<<grid_for(n, kThreads), kThreads, 0, stream>>>(da, db, dout, n, dtype);
  return cudaGetLastError();
}

cudaError_t encoder_forward(void* out, const int32_t* tokens, const void* wte, const void* wpe,
                            int64_t b, int64_t t, int64_t c, int64_t v, int dtype,
                            cudaStream_t stream) {
  const int64_t rows = b * t;
  encoder_forward_kernel<<<grid_for(rows * c, kThreads), kThreads, 0, stream>>>(
      out, tokens, wte, wpe, rows, t, c, v, dtype);
  return cudaGetLastError();
}

cudaError_t encoder_backward(float* dwte, float* dwpe, const void* dout, const int32_t* tokens,
                             int64_t b, int64_t t, int64_t c, int64_t v, int dtype,
                             cudaStream_t stream) {
  if (dwte != nullptr) {
    const dim3 grid(static_cast<unsigned>((c + kThreads - 1) / kThreads), kTokenBuckets);
    encoder_backward_wte_kernel<<<grid, kThreads, 0, stream>>>(dwte, dout, tokens, b * t, c, v,
                                                               dtype);
    if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  }
  if (dwpe != nullptr) {
    encoder_backward_wpe_kernel<<<grid_for(t * c, kThreads), kThreads, 0, stream>>>(dwpe, dout, b,
                                                                                    t, c, dtype);
    if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

cudaError_t cast_from_fp32(void* dst, const float* src, int64_t n, int dtype, cudaStream_t stream) {
  cast_from_fp32_kernel<<<grid_for(n, kThreads), kThreads, 0, stream>>>(dst, src, n, dtype);
  return cudaGetLastError();
}

cudaError_t broadcast_bias(void* out, const void* bias, int64_t n, int64_t oc, int dtype,
                           cudaStream_t stream) {
  broadcast_bias_kernel<<<grid_for(n * oc, kThreads), kThreads, 0, stream>>>(out, bias, n, oc,
                                                                             dtype);
  return cudaGetLastError();
}

cudaError_t column_sums(float* dbias, const void* dout, int64_t n, int64_t oc, int dtype,
                        cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>((oc + 31) / 32);
  column_sum_kernel<<<blocks, dim3(32, kBiasRows), 0, stream>>>(dbias, dout, n, oc, dtype);
  return cudaGetLastError();
}

}  // namespace strata::model::cuda::launch
