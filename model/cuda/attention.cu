// Causal attention on the GPU, blocked like FlashAttention: no (T, T)
// matrix is stored. Three kernels, each with 256 threads = 32 rows x 8
// lanes; the 8 lanes of a row are consecutive in a warp and split the head
// dimension (lane g owns dims g, g + 8, ...), so a dot product is 8 partial
// sums and 3 shuffles. Tiles of 32 keys (or queries) pass through shared
// memory in fp32.
//
//   forward: a block owns 32 query rows and streams key tiles with an online
//            softmax (running max m and sum l per row); saves lse = m + log l.
//   dq:      a block owns 32 query rows, streams key tiles, recomputes
//            P = exp(S - lse) and adds dS K into dq.
//   dkv:     a block owns 32 keys, streams query tiles from the diagonal on,
//            and adds P^T dO into dv and dS^T Q into dk.
// Splitting dq from dk/dv costs a second recomputation of S but needs no
// atomics, so every sum has one owner and a fixed order.
#include <cmath>

#include "model/cuda/common.cuh"

namespace strata::model::cuda::launch {
namespace {

constexpr int kLanes = 8;                 // threads per row (or key)
constexpr int kTile = 32;                 // rows per block, keys per tile
constexpr int kThreads = kTile * kLanes;  // 256
constexpr int kMaxHead = 128;             // head size limit
constexpr int kPer = kMaxHead / kLanes;   // head dims per thread, at most

__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// Sum over the 8 lanes of a row. All 32 lanes of the warp must call it.
__device__ __forceinline__ float row_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 4);
  v += __shfl_xor_sync(0xffffffffu, v, 2);
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v;
}

struct Shape {
  int64_t t, c, nh, hs;
  int64_t tiles;  // ceil(T / kTile)
  float scale;    // 1 / sqrt(hs)
  int dtype;
};

// The block's (batch, head, tile) from a flat blockIdx.x.
struct BlockPos {
  int64_t b, h, tile;
};
__device__ __forceinline__ BlockPos block_pos(const Shape& s) {
  const int64_t bh = blockIdx.x / s.tiles;
  return {bh / s.nh, bh % s.nh, static_cast<int64_t>(blockIdx.x % s.tiles)};
}

// Row `row` of head h's Q (part 0), K (1) or V (2) inside qkv (B, T, 3C).
__device__ __forceinline__ int64_t qkv_index(const Shape& s, int64_t b, int64_t row, int part,
                                             int64_t h) {
  return (b * s.t + row) * 3 * s.c + part * s.c + h * s.hs;
}
// Row `row` of head h inside a (B, T, C) tensor.
__device__ __forceinline__ int64_t bt_index(const Shape& s, int64_t b, int64_t row, int64_t h) {
  return (b * s.t + row) * s.c + h * s.hs;
}

// Loads rows [r0, r0 + kTile) of one head of `src` (row stride `stride`,
// first element at `first`) into tile[kTile][kMaxHead] as fp32, zero past T.
__device__ void load_tile(float (*tile)[kMaxHead], const void* src, int64_t first, int64_t stride,
                          int64_t r0, const Shape& s) {
  for (int64_t i = threadIdx.x; i < kTile * s.hs; i += kThreads) {
    const int64_t r = i / s.hs, d = i % s.hs;
    tile[r][d] = r0 + r < s.t ? load(src, s.dtype, first + (r0 + r) * stride + d) : 0.0f;
  }
}

// Loads this thread's dims of one row (zeros when the row is past T).
__device__ __forceinline__ void load_row(float* x, const void* src, int64_t at, bool valid,
                                         const Shape& s) {
  const int g = threadIdx.x % kLanes;
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    const int64_t d = g + kLanes * k;
    x[k] = valid && d < s.hs ? load(src, s.dtype, at + d) : 0.0f;
  }
}

// Partial dot product of this thread's dims with row r of a tile.
__device__ __forceinline__ float dot_tile(const float* x, const float (*tile)[kMaxHead], int r,
                                          const Shape& s) {
  const int g = threadIdx.x % kLanes;
  float acc = 0.0f;
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    if (g + kLanes * k < s.hs) acc += x[k] * tile[r][g + kLanes * k];
  }
  return acc;
}

// dst[at + d] += x[k] for this thread's dims.
__device__ __forceinline__ void add_row(void* dst, int64_t at, const float* x, const Shape& s) {
  const int g = threadIdx.x % kLanes;
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    const int64_t d = g + kLanes * k;
    if (d < s.hs) store(dst, s.dtype, at + d, load(dst, s.dtype, at + d) + x[k]);
  }
}

__global__ void __launch_bounds__(kThreads)
    attention_forward_kernel(void* out, float* lse, const void* qkv, Shape s) {
  __shared__ float ks[kTile][kMaxHead];
  __shared__ float vs[kTile][kMaxHead];
  const BlockPos p = block_pos(s);
  const int64_t i0 = p.tile * kTile;
  const int64_t row = i0 + threadIdx.x / kLanes;
  const bool valid = row < s.t;
  float q[kPer], acc[kPer];
  load_row(q, qkv, qkv_index(s, p.b, row, 0, p.h), valid, s);
#pragma unroll
  for (int k = 0; k < kPer; ++k) acc[k] = 0.0f;
  float m = -INFINITY, l = 0.0f;
  const int64_t last_key = min64(i0 + kTile, s.t) - 1;  // the block's last row sees keys <= it
  const int64_t k_first = qkv_index(s, p.b, 0, 1, p.h), v_first = qkv_index(s, p.b, 0, 2, p.h);
  for (int64_t j0 = 0; j0 <= last_key; j0 += kTile) {
    __syncthreads();  // the previous tile is no longer read
    load_tile(ks, qkv, k_first, 3 * s.c, j0, s);
    load_tile(vs, qkv, v_first, 3 * s.c, j0, s);
    __syncthreads();
    const int jn = static_cast<int>(min64(kTile, last_key - j0 + 1));
    for (int j = 0; j < jn; ++j) {
      const float sc = row_sum(dot_tile(q, ks, j, s)) * s.scale;
      if (!valid || j0 + j > row) continue;  // causal mask; no shuffles below
      if (sc > m) {
        const float corr = expf(m - sc);  // 0 the first time (m = -inf)
        l *= corr;
#pragma unroll
        for (int k = 0; k < kPer; ++k) acc[k] *= corr;
        m = sc;
      }
      const float pr = expf(sc - m);
      l += pr;
      const int g = threadIdx.x % kLanes;
#pragma unroll
      for (int k = 0; k < kPer; ++k) {
        if (g + kLanes * k < s.hs) acc[k] += pr * vs[j][g + kLanes * k];
      }
    }
  }
  if (!valid) return;
  const float inv = 1.0f / l;
  const int g = threadIdx.x % kLanes;
  const int64_t at = bt_index(s, p.b, row, p.h);
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    if (g + kLanes * k < s.hs) store(out, s.dtype, at + g + kLanes * k, acc[k] * inv);
  }
  if (g == 0) lse[(p.b * s.nh + p.h) * s.t + row] = m + logf(l);
}

__global__ void __launch_bounds__(kThreads)
    attention_backward_dq_kernel(void* dqkv, const void* dout, const void* qkv, const void* out,
                                 const float* lse, Shape s) {
  __shared__ float ks[kTile][kMaxHead];
  __shared__ float vs[kTile][kMaxHead];
  const BlockPos p = block_pos(s);
  const int64_t i0 = p.tile * kTile;
  const int64_t row = i0 + threadIdx.x / kLanes;
  const bool valid = row < s.t;
  float q[kPer], dy[kPer], y[kPer], dq[kPer];
  load_row(q, qkv, qkv_index(s, p.b, row, 0, p.h), valid, s);
  load_row(dy, dout, bt_index(s, p.b, row, p.h), valid, s);
  load_row(y, out, bt_index(s, p.b, row, p.h), valid, s);
  float dd = 0.0f;  // D = dout . out, the softmax backward's row term
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    dd += dy[k] * y[k];
    dq[k] = 0.0f;
  }
  dd = row_sum(dd);
  const float row_lse = valid ? lse[(p.b * s.nh + p.h) * s.t + row] : 0.0f;
  const int64_t last_key = min64(i0 + kTile, s.t) - 1;
  const int64_t k_first = qkv_index(s, p.b, 0, 1, p.h), v_first = qkv_index(s, p.b, 0, 2, p.h);
  const int g = threadIdx.x % kLanes;
  for (int64_t j0 = 0; j0 <= last_key; j0 += kTile) {
    __syncthreads();
    load_tile(ks, qkv, k_first, 3 * s.c, j0, s);
    load_tile(vs, qkv, v_first, 3 * s.c, j0, s);
    __syncthreads();
    const int jn = static_cast<int>(min64(kTile, last_key - j0 + 1));
    for (int j = 0; j < jn; ++j) {
      const float sc = row_sum(dot_tile(q, ks, j, s)) * s.scale;
      const float dp = row_sum(dot_tile(dy, vs, j, s));
      if (!valid || j0 + j > row) continue;
      const float pr = expf(sc - row_lse);
      const float ds = pr * (dp - dd) * s.scale;  // the 1/sqrt(hs) of S folds in here
#pragma unroll
      for (int k = 0; k < kPer; ++k) {
        if (g + kLanes * k < s.hs) dq[k] += ds * ks[j][g + kLanes * k];
      }
    }
  }
  if (valid) add_row(dqkv, qkv_index(s, p.b, row, 0, p.h), dq, s);
}

__global__ void __launch_bounds__(kThreads)
    attention_backward_dkv_kernel(void* dqkv, const void* dout, const void* qkv, const void* out,
                                  const float* lse, Shape s) {
  __shared__ float qs[kTile][kMaxHead];
  __shared__ float dys[kTile][kMaxHead];
  __shared__ float row_lse[kTile];
  __shared__ float row_d[kTile];
  const BlockPos p = block_pos(s);
  const int64_t j0 = p.tile * kTile;
  const int r = threadIdx.x / kLanes;
  const int g = threadIdx.x % kLanes;
  const int64_t key = j0 + r;
  const bool valid = key < s.t;
  float kk[kPer], vv[kPer], dk[kPer], dv[kPer];
  load_row(kk, qkv, qkv_index(s, p.b, key, 1, p.h), valid, s);
  load_row(vv, qkv, qkv_index(s, p.b, key, 2, p.h), valid, s);
#pragma unroll
  for (int k = 0; k < kPer; ++k) dk[k] = dv[k] = 0.0f;
  const int64_t q_first = qkv_index(s, p.b, 0, 0, p.h), y_first = bt_index(s, p.b, 0, p.h);
  // Queries before j0 see none of these keys; the diagonal tile on, all may.
  for (int64_t i0 = j0; i0 < s.t; i0 += kTile) {
    __syncthreads();
    load_tile(qs, qkv, q_first, 3 * s.c, i0, s);
    load_tile(dys, dout, y_first, s.c, i0, s);
    __syncthreads();
    {  // D and lse of query row i0 + r, one row per 8 lanes
      const int64_t qrow = i0 + r;
      const bool qvalid = qrow < s.t;
      const int64_t y_at = bt_index(s, p.b, qrow, p.h);
      float part = 0.0f;
#pragma unroll
      for (int k = 0; k < kPer; ++k) {
        const int d = g + kLanes * k;
        if (qvalid && d < s.hs) part += dys[r][d] * load(out, s.dtype, y_at + d);
      }
      part = row_sum(part);
      if (g == 0) {
        row_d[r] = part;
        row_lse[r] = qrow < s.t ? lse[(p.b * s.nh + p.h) * s.t + qrow] : 0.0f;
      }
    }
    __syncthreads();
    const int in = static_cast<int>(min64(kTile, s.t - i0));
    for (int i = 0; i < in; ++i) {
      const float sc = row_sum(dot_tile(kk, qs, i, s)) * s.scale;
      const float dp = row_sum(dot_tile(vv, dys, i, s));
      if (!valid || key > i0 + i) continue;  // causal: query i0 + i sees keys <= it
      const float pr = expf(sc - row_lse[i]);
      const float ds = pr * (dp - row_d[i]) * s.scale;
#pragma unroll
      for (int k = 0; k < kPer; ++k) {
        if (g + kLanes * k < s.hs) {
          dv[k] += pr * dys[i][g + kLanes * k];
          dk[k] += ds * qs[i][g + kLanes * k];
        }
      }
    }
  }
  if (!valid) return;
  add_row(dqkv, qkv_index(s, p.b, key, 1, p.h), dk, s);
  add_row(dqkv, qkv_index(s, p.b, key, 2, p.h), dv, s);
}

Shape make_shape(int64_t t, int64_t c, int64_t nh, int dtype) {
  const int64_t hs = c / nh;
  return {t, c, nh, hs, (t + kTile - 1) / kTile, 1.0f / sqrtf(static_cast<float>(hs)), dtype};
}

}  // namespace

cudaError_t attention_forward(void* out, float* lse, const void* qkv, int64_t b, int64_t t,
                              int64_t c, int64_t nh, int dtype, cudaStream_t stream) {
  const Shape s = make_shape(t, c, nh, dtype);
  const unsigned blocks = static_cast<unsigned>(b * nh * s.tiles);
  attention_forward_kernel<<<blocks, kThreads, 0, stream>>>(out, lse, qkv, s);
  return cudaGetLastError();
}

cudaError_t attention_backward(void* dqkv, const void* dout, const void* qkv, const void* out,
                               const float* lse, int64_t b, int64_t t, int64_t c, int64_t nh,
                               int dtype, cudaStream_t stream) {
  const Shape s = make_shape(t, c, nh, dtype);
  const unsigned blocks = static_cast<unsigned>(b * nh * s.tiles);
  // dq and dk/dv write disjoint columns of dqkv, so the two may run in order
  // on one stream without a race.
  attention_backward_dq_kernel<<<blocks, kThreads, 0, stream>>>(dqkv, dout, qkv, out, lse, s);
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  attention_backward_dkv_kernel<<<blocks, kThreads, 0, stream>>>(dqkv, dout, qkv, out, lse, s);
  return cudaGetLastError();
}

}  // namespace strata::model::cuda::launch
