// The optimizer and gradient-statistics kernels, written once over an arch
// tag: an xsimd arch (vectors of xsimd::batch<float, Arch>) or ScalarArch
// (plain floats, the reference). Included only by kernel_<isa>.cc, each of
// which instantiates the two functors of kernel.h for its arch.
//
// Every ISA is bit-identical to ScalarArch because the vector code performs
// the same IEEE operations in the same order (mul, add, div and sqrt are all
// correctly rounded) and the library is compiled with -ffp-contract=off, so
// no FMA is formed in one path and not the other.
#pragma once

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "cpu_adam/kernel.h"
#include "cpu_adam/simd_convert.h"

namespace strata::cpu_adam::detail {
namespace {

inline float vsqrt(float x) { return std::sqrt(x); }
template <class A>
xsimd::batch<float, A> vsqrt(const xsimd::batch<float, A>& x) {
  return xsimd::sqrt(x);
}

// torch.sign: 1, -1, zero for zero, NaN for NaN (x * 0 keeps both).
inline float vsign(float x) { return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : x * 0.0f); }
template <class A>
xsimd::batch<float, A> vsign(const xsimd::batch<float, A>& x) {
  using B = xsimd::batch<float, A>;
  const B zero(0.0f);
  return xsimd::select(x > zero, B(1.0f), xsimd::select(x < zero, B(-1.0f), x * zero));
}

inline float vsum(float x) { return x; }
// In lane order (xsimd 8.1's AVX-512F hadd needs AVX-512DQ, so no hadd).
template <class A>
float vsum(const xsimd::batch<float, A>& x) {
  alignas(64) float lanes[width<A>()];
  x.store_aligned(lanes);
  float s = 0.0f;
  for (float l : lanes) s += l;
  return s;
}

template <class Arch, DType G>
Vec<Arch> load_grad(const void* grad, size_t i) {
  if constexpr (G == DType::kFloat32) {
    return load_f32(Arch{}, static_cast<const float*>(grad) + i);
  } else if constexpr (G == DType::kFloat16) {
    return load_fp16(Arch{}, static_cast<const uint16_t*>(grad) + i);
  } else {
    return load_bf16(Arch{}, static_cast<const uint16_t*>(grad) + i);
  }
}

// One element (or one vector of them); the formulas of optimizer.h in the
// operation order torch uses, e.g. addcdiv is p + (value * t1) / t2.
template <OptimizerKind K, class V>
inline void update(const Coeffs& c, V g, V& p, V& m, V& v) {
  g = g * V(c.grad_scale);
  if constexpr (K == OptimizerKind::kAdam || K == OptimizerKind::kAdamW) {
    if constexpr (K == OptimizerKind::kAdam) {
      g = g + V(c.l2) * p;
    } else {
      p = p * V(c.decay);
    }
    m = m + V(c.one_minus_beta1) * (g - m);  // torch's lerp for weight < 0.5
    v = v * V(c.beta2) + (V(c.one_minus_beta2) * g) * g;
    const V denom = vsqrt(v) / V(c.bias_correction2_sqrt) + V(c.eps);
    p = p + (V(c.neg_step_size) * m) / denom;
  } else if constexpr (K == OptimizerKind::kAdagrad) {
    g = g + V(c.l2) * p;
    v = v + g * g;
    p = p + (V(c.neg_step_size) * g) / (vsqrt(v) + V(c.eps));
  } else {  // Lion
    p = p * V(c.decay);
    const V u = vsign(m * V(c.beta1) + V(c.one_minus_beta1) * g);
    p = p + V(c.neg_step_size) * u;
    m = m * V(c.beta2) + V(c.one_minus_beta2) * g;
  }
}

template <class Arch, OptimizerKind K, DType G, OutKind O>
void step_range(const StepKernelArgs& a, size_t i, size_t end) {
  using V = Vec<Arch>;
  constexpr size_t kW = width<Arch>();
  constexpr bool kHasM = K != OptimizerKind::kAdagrad;
  constexpr bool kHasV = K != OptimizerKind::kLion;
  const Buffers& b = a.b;
  for (; i + kW <= end; i += kW) {
    V p = load_f32(Arch{}, b.param + i);
    V m(0.0f), v(0.0f);
    if constexpr (kHasM) m = load_f32(Arch{}, b.exp_avg + i);
    if constexpr (kHasV) v = load_f32(Arch{}, b.exp_avg_sq + i);
    update<K>(a.c, load_grad<Arch, G>(b.grad, i), p, m, v);
    store_f32(Arch{}, b.param + i, p);
    if constexpr (kHasM) store_f32(Arch{}, b.exp_avg + i, m);
    if constexpr (kHasV) store_f32(Arch{}, b.exp_avg_sq + i, v);
    uint16_t* out = static_cast<uint16_t*>(b.param_out) + i;
    if constexpr (O == OutKind::kFp16) {
      a.stream_out ? stream_fp16(Arch{}, out, p) : store_fp16(Arch{}, out, p);
    } else if constexpr (O == OutKind::kBf16) {
      a.stream_out ? stream_bf16(Arch{}, out, p) : store_bf16(Arch{}, out, p);
    }
  }
  if constexpr (!std::is_same_v<Arch, ScalarArch>) {
    if (i < end) step_range<ScalarArch, K, G, O>(a, i, end);
#if defined(__x86_64__)
    // Non-temporal stores are weakly ordered; make them visible before the
    // caller hands the copy on.
    if (O != OutKind::kNone && a.stream_out) _mm_sfence();
#endif
  }
}

template <class Arch, OptimizerKind K, DType G>
void step_out(const StepKernelArgs& a, size_t begin, size_t end) {
  if (a.b.param_out == nullptr) return step_range<Arch, K, G, OutKind::kNone>(a, begin, end);
  if (a.b.out_dtype == DType::kBFloat16)
    return step_range<Arch, K, G, OutKind::kBf16>(a, begin, end);
  return step_range<Arch, K, G, OutKind::kFp16>(a, begin, end);
}

template <class Arch, OptimizerKind K>
void step_grad(const StepKernelArgs& a, size_t begin, size_t end) {
  switch (a.b.grad_dtype) {
    case DType::kFloat32:
      return step_out<Arch, K, DType::kFloat32>(a, begin, end);
    case DType::kFloat16:
      return step_out<Arch, K, DType::kFloat16>(a, begin, end);
    case DType::kBFloat16:
      return step_out<Arch, K, DType::kBFloat16>(a, begin, end);
  }
}

template <DType G>
double load_double(const void* grad, size_t i) {
  if constexpr (G == DType::kFloat32) {
    return static_cast<const float*>(grad)[i];
  } else if constexpr (G == DType::kFloat16) {
    return fp16_to_fp32(static_cast<const uint16_t*>(grad)[i]);
  } else {
    return bf16_bits_to_f32(static_cast<const uint16_t*>(grad)[i]);
  }
}

// The slow exact path for a block holding inf/NaN or whose fp32 sum overflowed.
template <DType G>
double block_sum_double(const void* grad, size_t begin, size_t end) {
  double s = 0;
  for (size_t i = begin; i < end; ++i) {
    double x = load_double<G>(grad, i);
    if (std::isfinite(x)) s += x * x;
  }
  return s;
}

template <class Arch, DType G>
GradStats stats_range(const void* grad, size_t begin, size_t end) {
  using V = Vec<Arch>;
  constexpr size_t kW = width<Arch>();
  GradStats out;
  for (size_t block = begin; block < end; block += kStatsBlock) {
    const size_t block_end = std::min(end, block + kStatsBlock);
    // Two accumulators halve the add chain; x * 0 is NaN exactly for inf/NaN.
    V acc0(0.0f), acc1(0.0f), bad(0.0f);
    size_t i = block;
    for (; i + 2 * kW <= block_end; i += 2 * kW) {
      const V x0 = load_grad<Arch, G>(grad, i), x1 = load_grad<Arch, G>(grad, i + kW);
      acc0 = acc0 + x0 * x0;
      acc1 = acc1 + x1 * x1;
      bad = bad + (x0 * V(0.0f) + x1 * V(0.0f));
    }
    float sum = vsum(acc0 + acc1);
    float tail_bad = vsum(bad);
    for (; i < block_end; ++i) {
      const float x = load_grad<ScalarArch, G>(grad, i);
      sum += x * x;
      tail_bad += x * 0.0f;
    }
    if (std::isnan(tail_bad)) out.nonfinite = true;
    if (std::isfinite(sum)) {
      out.sum_squares += sum;
    } else {
      out.sum_squares += block_sum_double<G>(grad, block, block_end);
    }
  }
  return out;
}

}  // namespace

template <class Arch>
void StepKernel::operator()(Arch, const StepKernelArgs& args, size_t begin, size_t end) const {
  switch (args.kind) {
    case OptimizerKind::kAdam:
      return step_grad<Arch, OptimizerKind::kAdam>(args, begin, end);
    case OptimizerKind::kAdamW:
      return step_grad<Arch, OptimizerKind::kAdamW>(args, begin, end);
    case OptimizerKind::kAdagrad:
      return step_grad<Arch, OptimizerKind::kAdagrad>(args, begin, end);
    case OptimizerKind::kLion:
      return step_grad<Arch, OptimizerKind::kLion>(args, begin, end);
  }
}

template <class Arch>
GradStats StatsKernel::operator()(Arch, const void* grad, DType dtype, size_t begin,
                                  size_t end) const {
  switch (dtype) {
    case DType::kFloat32:
      return stats_range<Arch, DType::kFloat32>(grad, begin, end);
    case DType::kFloat16:
      return stats_range<Arch, DType::kFloat16>(grad, begin, end);
    case DType::kBFloat16:
      return stats_range<Arch, DType::kBFloat16>(grad, begin, end);
  }
  return {};
}

#define STRATA_CPU_ADAM_INSTANTIATE(Arch)                                                        \
  template void StepKernel::operator()<Arch>(Arch, const StepKernelArgs&, size_t, size_t) const; \
  template GradStats StatsKernel::operator()<Arch>(Arch, const void*, DType, size_t, size_t) const;

}  // namespace strata::cpu_adam::detail
