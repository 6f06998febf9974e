// Dense layer y = x @ W^T + b on the CPU through OpenBLAS sgemm, with the
// shapes GPT-2 (and llm.c) store: x is (N, C) row-major with N = B*T rows, W is
// (OC, C) row-major (one row per output channel), b is (OC) or null, y is
// (N, OC).
//
// Backward accumulates, like every backward in model/cpu: dinp (N, C) +=
// dout @ W, dweight (OC, C) += dout^T @ x, dbias (OC) += column sums of dout.
// Pass null for a gradient that is not wanted (e.g. dinp of the first layer);
// the caller zeroes gradient buffers before a step.
//
// Threads: sgemm runs on OpenBLAS's own pool. set_blas_threads() sets its size
// once for the process (call it at start-up, before any matmul; the model uses
// one pool for all layers); without it OpenBLAS uses every core, and with
// OPENBLAS_NUM_THREADS set it uses that. Never call these functions from
// inside a oneTBB task (the two pools would oversubscribe the cores). The
// bias sum runs on oneTBB, split over output channels, so every result is the
// same whatever the thread counts. OpenBLAS splits sgemm over rows and
// columns, not over the reduced dimension, so a fixed BLAS thread count gives
// bit-identical results run to run.
//
// Errors: shapes must be positive and buffers non-overlapping (out must not
// alias inp); violations stop the process (STRATA_CHECK).
//
//   matmul_forward(qkv, ln1, attn_w, attn_b, B * T, C, 3 * C);
//   matmul_backward(dln1, dattn_w, dattn_b, dqkv, ln1, attn_w, B * T, C, 3 * C);
#pragma once

#include <cstdint>

namespace strata::model::cpu {

// Sets OpenBLAS's thread count (n >= 1) for every later call in the process.
void set_blas_threads(int n);
// The thread count OpenBLAS will use.
int blas_threads();

void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int64_t n,
                    int64_t c, int64_t oc);

void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                     const float* weight, int64_t n, int64_t c, int64_t oc);

}  // namespace strata::model::cpu
