// Internal to cpu_adam: the per-ISA kernel entry points that optimizer.cc
// picks from at run time. Each is a functor templated on the xsimd arch, defined once
// in kernel_impl.h and instantiated in its own kernel_<isa>.cc compiled with
// that ISA's flags; this header only declares them.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/dtype.h"
#include "cpu_adam/optimizer.h"
#include "xsimd/xsimd.hpp"

namespace strata::cpu_adam::detail {

// The plain-float arch of the scalar reference.
struct ScalarArch {};

// The per-step constants, each computed in double and rounded to float once.
struct Coeffs {
  float grad_scale = 1;
  float beta1 = 0, one_minus_beta1 = 1;
  float beta2 = 0, one_minus_beta2 = 1;
  float eps = 0;
  float l2 = 0;             // Adam, Adagrad: g += l2 * p
  float decay = 1;          // AdamW, Lion: p *= decay (1 - lr*wd)
  float neg_step_size = 0;  // -lr/(1-beta1^t) for Adam(W), -lr for Adagrad and Lion
  float bias_correction2_sqrt = 1;
};

enum class OutKind : uint8_t { kNone, kFp16, kBf16 };

struct StepKernelArgs {
  OptimizerKind kind;
  Coeffs c;
  Buffers b;
  bool stream_out;  // non-temporal stores for param_out
  bool stats;       // also return the GradStats of the gradient read
};

// The gradient statistics are summed in blocks of kStatsBlock elements; a
// range handed to either kernel with stats must begin at a multiple of it so
// block boundaries never depend on the caller's split.
inline constexpr size_t kStatsBlock = 1024;

// Updates elements [begin, end) of args.b; returns the GradStats of the
// gradient (grad_accum + grad) over the range when args.stats, else zeros.
struct StepKernel {
  template <class Arch>
  GradStats operator()(Arch, const StepKernelArgs& args, size_t begin, size_t end) const;
};

// Squared norm and inf/NaN flag of the gradient b.grad_accum + b.grad over
// [begin, end) (no accumulator: b.grad alone); only the grad fields are read.
struct StatsKernel {
  template <class Arch>
  GradStats operator()(Arch, const Buffers& b, size_t begin, size_t end) const;
};

// accum[i] = grad[i] (first) or accum[i] + grad[i] over [begin, end).
struct AccumulateKernel {
  template <class Arch>
  void operator()(Arch, float* accum, const void* grad, DType dtype, bool first, size_t begin,
                  size_t end) const;
};

#define STRATA_CPU_ADAM_DECLARE(Arch)                                                             \
  extern template GradStats StepKernel::operator()<Arch>(Arch, const StepKernelArgs&, size_t,     \
                                                         size_t) const;                           \
  extern template GradStats StatsKernel::operator()<Arch>(Arch, const Buffers&, size_t, size_t)   \
      const;                                                                                      \
  extern template void AccumulateKernel::operator()<Arch>(Arch, float*, const void*, DType, bool, \
                                                          size_t, size_t) const;

STRATA_CPU_ADAM_DECLARE(ScalarArch)
#if defined(__x86_64__)
STRATA_CPU_ADAM_DECLARE(xsimd::avx512f)
STRATA_CPU_ADAM_DECLARE(xsimd::fma3<xsimd::avx2>)
STRATA_CPU_ADAM_DECLARE(xsimd::sse2)
#elif defined(__aarch64__)
STRATA_CPU_ADAM_DECLARE(xsimd::neon64)
#endif

}  // namespace strata::cpu_adam::detail
