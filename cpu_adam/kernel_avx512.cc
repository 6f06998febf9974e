// The cpu_adam kernels instantiated for AVX-512F; compiled with -mavx512f -mfma -mf16c.
#include "cpu_adam/kernel_impl.h"

namespace strata::cpu_adam::detail {

STRATA_CPU_ADAM_INSTANTIATE(xsimd::avx512f)

}  // namespace strata::cpu_adam::detail
