// Element-wise reductions the CPU backends apply: out[i] = a[i] (op) b[i]
// over n elements. fp16 and bf16 are reduced in fp32 and rounded back (to
// nearest even), as NCCL does. kMax propagates NaN, so an overflow flag or a
// NaN norm survives a max-reduction. `out` may alias `a` or `b`.
#pragma once

#include <cstddef>

#include "core/dtype.h"
#include "dist/communicator.h"

namespace strata::dist {

using ReduceFn = void (*)(void* out, const void* a, const void* b, size_t n);

ReduceFn reduce_fn(DType dtype, ReduceOp op);
ReduceFn reduce_fn_f64(ReduceOp op);

}  // namespace strata::dist
