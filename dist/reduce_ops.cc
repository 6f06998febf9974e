#include "dist/reduce_ops.h"

#include <cmath>
#include <cstdint>

namespace strata::dist {
namespace {

template <typename T>
T apply(ReduceOp op, T a, T b) {
  if (op == ReduceOp::kSum) return a + b;
  return (a > b || std::isnan(a)) ? a : b;
}

template <typename T, ReduceOp kOp>
void reduce_plain(void* out, const void* a, const void* b, size_t n) {
  auto* o = static_cast<T*>(out);
  const auto* x = static_cast<const T*>(a);
  const auto* y = static_cast<const T*>(b);
  for (size_t i = 0; i < n; ++i) o[i] = apply(kOp, x[i], y[i]);
}

// 16-bit types: widen a chunk of each input to fp32 (SIMD conversions),
// reduce, narrow back. Chunks keep aliasing safe: a chunk is read whole
// before it is written.
template <DType kType, ReduceOp kOp>
void reduce_half(void* out, const void* a, const void* b, size_t n) {
  constexpr size_t kChunk = 1024;
  float fa[kChunk];
  float fb[kChunk];
  auto* o = static_cast<uint16_t*>(out);
  const auto* x = static_cast<const uint16_t*>(a);
  const auto* y = static_cast<const uint16_t*>(b);
  for (size_t i = 0; i < n; i += kChunk) {
    const size_t m = n - i < kChunk ? n - i : kChunk;
    if constexpr (kType == DType::kFloat16) {
      convert_fp16_to_fp32(x + i, fa, m);
      convert_fp16_to_fp32(y + i, fb, m);
    } else {
      convert_bf16_to_fp32(x + i, fa, m);
      convert_bf16_to_fp32(y + i, fb, m);
    }
    for (size_t j = 0; j < m; ++j) fa[j] = apply(kOp, fa[j], fb[j]);
    if constexpr (kType == DType::kFloat16) {
      convert_fp32_to_fp16(fa, o + i, m);
    } else {
      convert_fp32_to_bf16(fa, o + i, m);
    }
  }
}

}  // namespace

ReduceFn reduce_fn(DType dtype, ReduceOp op) {
  const bool sum = op == ReduceOp::kSum;
  switch (dtype) {
    case DType::kFloat32:
      return sum ? &reduce_plain<float, ReduceOp::kSum> : &reduce_plain<float, ReduceOp::kMax>;
    case DType::kFloat16:
      return sum ? &reduce_half<DType::kFloat16, ReduceOp::kSum>
                 : &reduce_half<DType::kFloat16, ReduceOp::kMax>;
    case DType::kBFloat16:
      return sum ? &reduce_half<DType::kBFloat16, ReduceOp::kSum>
                 : &reduce_half<DType::kBFloat16, ReduceOp::kMax>;
  }
  return nullptr;
}

ReduceFn reduce_fn_f64(ReduceOp op) {
  return op == ReduceOp::kSum ? &reduce_plain<double, ReduceOp::kSum>
                              : &reduce_plain<double, ReduceOp::kMax>;
}

}  // namespace strata::dist
