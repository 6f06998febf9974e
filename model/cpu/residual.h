// Residual connection: out = a + b elementwise over n floats (out may alias
// a or b). Backward accumulates the same gradient into both branches:
// da += dout, db += dout (da and db may be null to skip one).
//
// Threads: oneTBB over fixed-size blocks; elementwise, so results never depend
// on the thread count. Bad arguments stop the process (STRATA_CHECK).
#pragma once

#include <cstdint>

namespace strata::model::cpu {

void residual_forward(float* out, const float* a, const float* b, int64_t n);

void residual_backward(float* da, float* db, const float* dout, int64_t n);

}  // namespace strata::model::cpu
