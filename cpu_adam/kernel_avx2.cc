// The cpu_adam kernels instantiated for AVX2 (+FMA, F16C); compiled with -mavx2 -mfma -mf16c.
#include "cpu_adam/kernel_impl.h"

namespace strata::cpu_adam::detail {

STRATA_CPU_ADAM_INSTANTIATE(xsimd::fma3<xsimd::avx2>)

}  // namespace strata::cpu_adam::detail
