// The cpu_adam kernels instantiated for the scalar reference (and the tails of every vector ISA);
// plain C++, no ISA flags.
#include "cpu_adam/kernel_impl.h"

namespace strata::cpu_adam::detail {

STRATA_CPU_ADAM_INSTANTIATE(ScalarArch)

}  // namespace strata::cpu_adam::detail
