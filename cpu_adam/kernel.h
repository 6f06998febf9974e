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
};

// Updates elements [begin, end) of args.b.
struct StepKernel {
  template <class Arch>
  void operator()(Arch, const StepKernelArgs& args, size_t begin, size_t end) const;
};

// Squared norm and inf/NaN flag of grad[begin, end); begin must be a multiple
// of kStatsBlock so block boundaries never depend on the caller's split.
inline constexpr size_t kStatsBlock = 1024;
struct StatsKernel {
  template <class Arch>
  GradStats operator()(Arch, const void* grad, DType dtype, size_t begin, size_t end) const;
};

#define STRATA_CPU_ADAM_DECLARE(Arch)                                                            \
  extern template void StepKernel::operator()<Arch>(Arch, const StepKernelArgs&, size_t, size_t) \
      const;                                                                                     \
  extern template GradStats StatsKernel::operator()<Arch>(Arch, const void*, DType, size_t,      \
                                                          size_t) const;

STRATA_CPU_ADAM_DECLARE(ScalarArch)
#if defined(__x86_64__)
STRATA_CPU_ADAM_DECLARE(xsimd::avx512f)
STRATA_CPU_ADAM_DECLARE(xsimd::fma3<xsimd::avx2>)
STRATA_CPU_ADAM_DECLARE(xsimd::sse2)
#elif defined(__aarch64__)
STRATA_CPU_ADAM_DECLARE(xsimd::neon64)
#endif

}  // namespace strata::cpu_adam::detail
