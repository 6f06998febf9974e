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

// The gradient of element i (a vector of them): the compute-dtype grad, plus
// the fp32 accumulator when there is one (the same fp32 add the
// accumulation pass makes, so a fused step sees the same bits).
template <class Arch, DType G, bool kAcc>
Vec<Arch> load_sum(const Buffers& b, size_t i) {
  if constexpr (kAcc) {
    return load_f32(Arch{}, b.grad_accum + i) + load_grad<Arch, G>(b.grad, i);
  } else {
    return load_grad<Arch, G>(b.grad, i);
  }
}

// Updates element i (kW elements from i) with gradient g.
template <class Arch, OptimizerKind K, OutKind O>
inline void step_at(const StepKernelArgs& a, size_t i, Vec<Arch> g) {
  using V = Vec<Arch>;
  constexpr bool kHasM = K != OptimizerKind::kAdagrad;
  constexpr bool kHasV = K != OptimizerKind::kLion;
  const Buffers& b = a.b;
  V p = load_f32(Arch{}, b.param + i);
  V m(0.0f), v(0.0f);
  if constexpr (kHasM) m = load_f32(Arch{}, b.exp_avg + i);
  if constexpr (kHasV) v = load_f32(Arch{}, b.exp_avg_sq + i);
  if (b.save_param != nullptr) {  // the rollback copy (a branch the predictor always gets right)
    store_f32(Arch{}, b.save_param + i, p);
    if constexpr (kHasM) store_f32(Arch{}, b.save_exp_avg + i, m);
    if constexpr (kHasV) store_f32(Arch{}, b.save_exp_avg_sq + i, v);
  }
  update<K>(a.c, g, p, m, v);
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
template <DType G, bool kAcc>
double block_sum_double(const Buffers& b, size_t begin, size_t end) {
  double s = 0;
  for (size_t i = begin; i < end; ++i) {
    const double x =
        kAcc ? static_cast<double>(load_sum<ScalarArch, G, kAcc>(b, i)) : load_double<G>(b.grad, i);
    if (std::isfinite(x)) s += x * x;
  }
  return s;
}

// The gradient statistics of [begin, end), in blocks of kStatsBlock: every
// gradient vector is also handed to visit(arch, i, g) (the fused step; a
// no-op for the plain statistics), so fused and plain statistics are the
// same operations in the same order. The block-tail elements go one by one
// through visit(ScalarArch{}, i, g).
template <class Arch, DType G, bool kAcc, class Visit>
GradStats stats_blocks(const Buffers& b, size_t begin, size_t end, const Visit& visit) {
  using V = Vec<Arch>;
  constexpr size_t kW = width<Arch>();
  GradStats out;
  for (size_t block = begin; block < end; block += kStatsBlock) {
    const size_t block_end = std::min(end, block + kStatsBlock);
    // Two accumulators halve the add chain; x * 0 is NaN exactly for inf/NaN.
    V acc0(0.0f), acc1(0.0f), bad(0.0f);
    size_t i = block;
    for (; i + 2 * kW <= block_end; i += 2 * kW) {
      const V x0 = load_sum<Arch, G, kAcc>(b, i), x1 = load_sum<Arch, G, kAcc>(b, i + kW);
      acc0 = acc0 + x0 * x0;
      acc1 = acc1 + x1 * x1;
      bad = bad + (x0 * V(0.0f) + x1 * V(0.0f));
      visit(Arch{}, i, x0);
      visit(Arch{}, i + kW, x1);
    }
    float sum = vsum(acc0 + acc1);
    float tail_bad = vsum(bad);
    for (; i < block_end; ++i) {
      const float x = load_sum<ScalarArch, G, kAcc>(b, i);
      sum += x * x;
      tail_bad += x * 0.0f;
      visit(ScalarArch{}, i, x);
    }
    if (std::isnan(tail_bad)) out.nonfinite = true;
    if (std::isfinite(sum)) {
      out.sum_squares += sum;
    } else {
      out.sum_squares += block_sum_double<G, kAcc>(b, block, block_end);
    }
  }
  return out;
}

template <class Arch, OptimizerKind K, DType G, OutKind O, bool kAcc, bool kStats>
GradStats step_range(const StepKernelArgs& a, size_t i, size_t end) {
  GradStats stats;
  if constexpr (kStats) {
    stats = stats_blocks<Arch, G, kAcc>(a.b, i, end, [&](auto arch, size_t at, auto g) {
      step_at<decltype(arch), K, O>(a, at, g);
    });
  } else {
    constexpr size_t kW = width<Arch>();
    for (; i + kW <= end; i += kW) step_at<Arch, K, O>(a, i, load_sum<Arch, G, kAcc>(a.b, i));
    for (; i < end; ++i) step_at<ScalarArch, K, O>(a, i, load_sum<ScalarArch, G, kAcc>(a.b, i));
  }
#if defined(__x86_64__)
  // Non-temporal stores are weakly ordered; make them visible before the
  // caller hands the copy on.
  if constexpr (!std::is_same_v<Arch, ScalarArch> && O != OutKind::kNone) {
    if (a.stream_out) _mm_sfence();
  }
#endif
  return stats;
}

template <class Arch, OptimizerKind K, DType G, OutKind O>
GradStats step_fused(const StepKernelArgs& a, size_t begin, size_t end) {
  const bool acc = a.b.grad_accum != nullptr;
  if (a.stats) {
    return acc ? step_range<Arch, K, G, O, true, true>(a, begin, end)
               : step_range<Arch, K, G, O, false, true>(a, begin, end);
  }
  return acc ? step_range<Arch, K, G, O, true, false>(a, begin, end)
             : step_range<Arch, K, G, O, false, false>(a, begin, end);
}

template <class Arch, OptimizerKind K, DType G>
GradStats step_out(const StepKernelArgs& a, size_t begin, size_t end) {
  if (a.b.param_out == nullptr) return step_fused<Arch, K, G, OutKind::kNone>(a, begin, end);
  if (a.b.out_dtype == DType::kBFloat16)
    return step_fused<Arch, K, G, OutKind::kBf16>(a, begin, end);
  return step_fused<Arch, K, G, OutKind::kFp16>(a, begin, end);
}

template <class Arch, OptimizerKind K>
GradStats step_grad(const StepKernelArgs& a, size_t begin, size_t end) {
  switch (a.b.grad_dtype) {
    case DType::kFloat32:
      return step_out<Arch, K, DType::kFloat32>(a, begin, end);
    case DType::kFloat16:
      return step_out<Arch, K, DType::kFloat16>(a, begin, end);
    case DType::kBFloat16:
      return step_out<Arch, K, DType::kBFloat16>(a, begin, end);
  }
  return {};
}

template <class Arch, DType G>
GradStats stats_range(const Buffers& b, size_t begin, size_t end) {
  const auto none = [](auto, size_t, auto) {};
  return b.grad_accum != nullptr ? stats_blocks<Arch, G, true>(b, begin, end, none)
                                 : stats_blocks<Arch, G, false>(b, begin, end, none);
}

template <class Arch, DType G, bool kFirst>
void accumulate_range(float* accum, const void* grad, size_t i, size_t end) {
  constexpr size_t kW = width<Arch>();
  const Buffers b{.grad = grad, .grad_accum = accum};
  for (; i + kW <= end; i += kW) {
    store_f32(Arch{}, accum + i,
              kFirst ? load_grad<Arch, G>(grad, i) : load_sum<Arch, G, true>(b, i));
  }
  for (; i < end; ++i) {
    accum[i] = kFirst ? load_grad<ScalarArch, G>(grad, i) : load_sum<ScalarArch, G, true>(b, i);
  }
}

template <class Arch, DType G>
void accumulate_dtype(float* accum, const void* grad, bool first, size_t begin, size_t end) {
  if (first) return accumulate_range<Arch, G, true>(accum, grad, begin, end);
  accumulate_range<Arch, G, false>(accum, grad, begin, end);
}

}  // namespace

template <class Arch>
void AccumulateKernel::operator()(Arch, float* accum, const void* grad, DType dtype, bool first,
                                  size_t begin, size_t end) const {
  switch (dtype) {
    case DType::kFloat32:
      return accumulate_dtype<Arch, DType::kFloat32>(accum, grad, first, begin, end);
    case DType::kFloat16:
      return accumulate_dtype<Arch, DType::kFloat16>(accum, grad, first, begin, end);
    case DType::kBFloat16:
      return accumulate_dtype<Arch, DType::kBFloat16>(accum, grad, first, begin, end);
  }
}

template <class Arch>
GradStats StepKernel::operator()(Arch, const StepKernelArgs& args, size_t begin, size_t end) const {
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
  return {};
}

template <class Arch>
GradStats StatsKernel::operator()(Arch, const Buffers& b, size_t begin, size_t end) const {
  switch (b.grad_dtype) {
    case DType::kFloat32:
      return stats_range<Arch, DType::kFloat32>(b, begin, end);
    case DType::kFloat16:
      return stats_range<Arch, DType::kFloat16>(b, begin, end);
    case DType::kBFloat16:
      return stats_range<Arch, DType::kBFloat16>(b, begin, end);
  }
  return {};
}

#define STRATA_CPU_ADAM_INSTANTIATE(Arch)                                                          \
  template GradStats StepKernel::operator()<Arch>(Arch, const StepKernelArgs&, size_t, size_t)     \
      const;                                                                                       \
  template GradStats StatsKernel::operator()<Arch>(Arch, const Buffers&, size_t, size_t) const;    \
  template void AccumulateKernel::operator()<Arch>(Arch, float*, const void*, DType, bool, size_t, \
                                                   size_t) const;

}  // namespace strata::cpu_adam::detail
