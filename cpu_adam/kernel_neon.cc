// The cpu_adam kernels instantiated for aarch64 NEON (built on aarch64 only; untested here).
#include "cpu_adam/kernel_impl.h"

namespace strata::cpu_adam::detail {

STRATA_CPU_ADAM_INSTANTIATE(xsimd::neon64)

}  // namespace strata::cpu_adam::detail
