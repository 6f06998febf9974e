// LayerNorm over the last dimension, as GPT-2 applies it before attention,
// before the MLP and at the end: for each of the N rows of x (N, C),
//   mean = sum(x)/C, rstd = 1/sqrt(sum((x-mean)^2)/C + 1e-5),
//   out = (x - mean) * rstd * weight + bias.
// Forward saves mean and rstd (N each) for the backward pass.
//
// Backward accumulates into dinp (N, C), dweight (C) and dbias (C):
//   dnorm = dout * weight,
//   dinp += rstd * (dnorm - mean(dnorm) - norm * mean(dnorm * norm)).
// dinp may be null (no input gradient wanted).
//
// Threads: oneTBB; the forward and dinp split over rows, dweight/dbias over
// channels (each channel sums its rows in order), so the results are
// bit-identical whatever the thread count. Shapes must be positive; bad
// arguments stop the process (STRATA_CHECK).
#pragma once

#include <cstdint>

namespace strata::model::cpu {

inline constexpr float kLayerNormEps = 1e-5f;

void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                       const float* bias, int64_t n, int64_t c);

void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                        const float* inp, const float* weight, const float* mean, const float* rstd,
                        int64_t n, int64_t c);

}  // namespace strata::model::cpu
