// fp32 -> bf16 rounding on x86 vector registers: the SIMD twins of
// fp32_to_bf16() in core/dtype.h (round to nearest even on the bit pattern,
// NaN quietened with its sign and top payload bits kept), written once per
// ISA and shared by core's array conversions and cpu_adam's fused kernels.
//
// Each takes fp32 bit patterns and returns the bf16 bits in the low 16 bits
// of each 32-bit lane. The target attributes let callers compiled for any
// ISA level use them; only call one when the CPU has that ISA.
#pragma once

#include <immintrin.h>

namespace strata::simd {

__attribute__((target("avx2"))) static inline __m256i bf16_round_avx2(__m256i u) {
  const __m256i abs = _mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff));
  const __m256i is_nan = _mm256_cmpgt_epi32(abs, _mm256_set1_epi32(0x7f800000));
  const __m256i hi = _mm256_srli_epi32(u, 16);
  const __m256i lsb = _mm256_and_si256(hi, _mm256_set1_epi32(1));
  const __m256i rounded =
      _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
  const __m256i quiet = _mm256_or_si256(hi, _mm256_set1_epi32(0x40));
  return _mm256_blendv_epi8(rounded, quiet, is_nan);
}

__attribute__((target("avx512f"))) static inline __m512i bf16_round_avx512(__m512i u) {
  const __m512i abs = _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff));
  const __mmask16 is_nan = _mm512_cmpgt_epi32_mask(abs, _mm512_set1_epi32(0x7f800000));
  const __m512i hi = _mm512_srli_epi32(u, 16);
  const __m512i lsb = _mm512_and_si512(hi, _mm512_set1_epi32(1));
  const __m512i rounded =
      _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  return _mm512_mask_or_epi32(rounded, is_nan, hi, _mm512_set1_epi32(0x40));
}

}  // namespace strata::simd
