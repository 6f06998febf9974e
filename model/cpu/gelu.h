// GELU with GPT-2's tanh approximation, elementwise over n floats:
//   gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
// Backward accumulates dinp += gelu'(x) * dout, recomputing from the saved
// input x (no extra activation is kept). out may alias inp in the forward.
//
// Threads: oneTBB over fixed-size blocks; each element is computed alone, so
// results never depend on the thread count. Bad arguments stop the process.
#pragma once

#include <cstdint>

namespace strata::model::cpu {

void gelu_forward(float* out, const float* inp, int64_t n);

void gelu_backward(float* dinp, const float* inp, const float* dout, int64_t n);

}  // namespace strata::model::cpu
