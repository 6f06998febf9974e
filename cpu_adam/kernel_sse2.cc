// The cpu_adam kernels instantiated for SSE2, the x86-64 baseline; 16-bit floats go through core's
// scalar conversions.
#include "cpu_adam/kernel_impl.h"

namespace strata::cpu_adam::detail {

STRATA_CPU_ADAM_INSTANTIATE(xsimd::sse2)

}  // namespace strata::cpu_adam::detail
