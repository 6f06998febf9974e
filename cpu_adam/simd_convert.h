// Loads and stores of fp32 / fp16 / bf16 vectors for the kernel in
// kernel_impl.h, one overload set per arch tag. xsimd 8.1 has no 16-bit
// float conversions, so this is the one place with intrinsics: F16C for
// AVX2, AVX-512F for AVX-512, integer shifts for bf16; any other arch
// (SSE2, NEON) goes element by element through core's scalar conversions.
// Every path is bit-identical to core's fp16_to_fp32 / fp32_to_fp16 /
// bf16_to_fp32 / fp32_to_bf16 (round to nearest even, NaN quietened).
//
// Internal to cpu_adam: included only by the per-ISA kernel_*.cc files. All
// of it has internal linkage, so copies compiled with different ISA flags
// never meet at link time. fp16 scalar conversions call core's out-of-line
// fp16_to_fp32 / fp32_to_fp16 (compiled baseline).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "core/dtype.h"
#include "cpu_adam/kernel.h"
#include "xsimd/xsimd.hpp"

#if defined(__x86_64__)
#include <immintrin.h>

#include "core/bf16_round_x86.h"
#endif

namespace strata::cpu_adam::detail {

namespace {

template <class Arch>
struct VecOf {
  using type = xsimd::batch<float, Arch>;
};
template <>
struct VecOf<ScalarArch> {
  using type = float;
};
template <class Arch>
using Vec = typename VecOf<Arch>::type;

template <class Arch>
constexpr size_t width() {
  if constexpr (std::is_same_v<Arch, ScalarArch>) {
    return 1;
  } else {
    return xsimd::batch<float, Arch>::size;
  }
}

// core's inline bf16 conversions, restated here with internal linkage: an
// out-of-line copy of an inline function compiled with AVX-512 flags could
// otherwise be picked by the linker for baseline callers. Same bits as core
// (the tests compare them).
inline float bf16_bits_to_f32(uint16_t h) {
  const uint32_t u = uint32_t{h} << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t f32_to_bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even; overflow carries into inf
  return static_cast<uint16_t>(u >> 16);
}

// ---- scalar reference ----
inline float load_f32(ScalarArch, const float* p) { return *p; }
inline void store_f32(ScalarArch, float* p, float x) { *p = x; }
inline float load_fp16(ScalarArch, const uint16_t* p) { return fp16_to_fp32(*p); }
inline float load_bf16(ScalarArch, const uint16_t* p) { return bf16_bits_to_f32(*p); }
inline void store_fp16(ScalarArch, uint16_t* p, float x) { *p = fp32_to_fp16(x); }
inline void store_bf16(ScalarArch, uint16_t* p, float x) { *p = f32_to_bf16_bits(x); }

// ---- any xsimd arch: fp32 natively, 16-bit types element by element ----
template <class A>
xsimd::batch<float, A> load_f32(A, const float* p) {
  return xsimd::batch<float, A>::load_unaligned(p);
}
template <class A>
void store_f32(A, float* p, const xsimd::batch<float, A>& x) {
  x.store_unaligned(p);
}
template <class A>
xsimd::batch<float, A> load_fp16(A, const uint16_t* p) {
  alignas(64) float tmp[width<A>()];
  for (size_t k = 0; k < width<A>(); ++k) tmp[k] = fp16_to_fp32(p[k]);
  return xsimd::batch<float, A>::load_aligned(tmp);
}
template <class A>
xsimd::batch<float, A> load_bf16(A, const uint16_t* p) {
  alignas(64) float tmp[width<A>()];
  for (size_t k = 0; k < width<A>(); ++k) tmp[k] = bf16_bits_to_f32(p[k]);
  return xsimd::batch<float, A>::load_aligned(tmp);
}
template <class A>
void store_fp16(A, uint16_t* p, const xsimd::batch<float, A>& x) {
  alignas(64) float tmp[width<A>()];
  x.store_aligned(tmp);
  for (size_t k = 0; k < width<A>(); ++k) p[k] = fp32_to_fp16(tmp[k]);
}
template <class A>
void store_bf16(A, uint16_t* p, const xsimd::batch<float, A>& x) {
  alignas(64) float tmp[width<A>()];
  x.store_aligned(tmp);
  for (size_t k = 0; k < width<A>(); ++k) p[k] = f32_to_bf16_bits(tmp[k]);
}

// Non-temporal stores of the 16-bit copy; plain stores where an ISA below has none.
template <class A, class V>
void stream_fp16(A, uint16_t* p, const V& x) {
  store_fp16(A{}, p, x);
}
template <class A, class V>
void stream_bf16(A, uint16_t* p, const V& x) {
  store_bf16(A{}, p, x);
}

// ---- AVX2 + F16C ----
#if defined(__AVX2__) && defined(__F16C__) && defined(__FMA__)
using Avx2 = xsimd::fma3<xsimd::avx2>;
inline xsimd::batch<float, Avx2> load_fp16(Avx2, const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
inline xsimd::batch<float, Avx2> load_bf16(Avx2, const uint16_t* p) {
  __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
inline __m128i to_fp16_bits(const xsimd::batch<float, Avx2>& x) {
  return _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT);
}
inline __m128i to_bf16_bits(const xsimd::batch<float, Avx2>& x) {
  const __m256i r = ::strata::simd::bf16_round_avx2(_mm256_castps_si256(x));
  // packus works per 128-bit lane; both halves are in [0, 65535] so it only narrows.
  return _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
}
inline void store_fp16(Avx2, uint16_t* p, const xsimd::batch<float, Avx2>& x) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), to_fp16_bits(x));
}
inline void store_bf16(Avx2, uint16_t* p, const xsimd::batch<float, Avx2>& x) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), to_bf16_bits(x));
}
inline void stream_fp16(Avx2, uint16_t* p, const xsimd::batch<float, Avx2>& x) {
  if ((reinterpret_cast<uintptr_t>(p) & 15) != 0) return store_fp16(Avx2{}, p, x);
  _mm_stream_si128(reinterpret_cast<__m128i*>(p), to_fp16_bits(x));
}
inline void stream_bf16(Avx2, uint16_t* p, const xsimd::batch<float, Avx2>& x) {
  if ((reinterpret_cast<uintptr_t>(p) & 15) != 0) return store_bf16(Avx2{}, p, x);
  _mm_stream_si128(reinterpret_cast<__m128i*>(p), to_bf16_bits(x));
}
#endif

// ---- AVX-512F ----
#if defined(__AVX512F__)
using Avx512 = xsimd::avx512f;
inline xsimd::batch<float, Avx512> load_fp16(Avx512, const uint16_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline xsimd::batch<float, Avx512> load_bf16(Avx512, const uint16_t* p) {
  __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}
inline __m256i to_fp16_bits(const xsimd::batch<float, Avx512>& x) {
  return _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT);
}
inline __m256i to_bf16_bits(const xsimd::batch<float, Avx512>& x) {
  return _mm512_cvtepi32_epi16(::strata::simd::bf16_round_avx512(_mm512_castps_si512(x)));
}
inline void store_fp16(Avx512, uint16_t* p, const xsimd::batch<float, Avx512>& x) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), to_fp16_bits(x));
}
inline void store_bf16(Avx512, uint16_t* p, const xsimd::batch<float, Avx512>& x) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), to_bf16_bits(x));
}
// Non-temporal where the 32-byte store is aligned (always, for 4 KiB-aligned
// buffers split at multiples of 16 elements).
inline void stream_fp16(Avx512, uint16_t* p, const xsimd::batch<float, Avx512>& x) {
  if ((reinterpret_cast<uintptr_t>(p) & 31) != 0) return store_fp16(Avx512{}, p, x);
  _mm256_stream_si256(reinterpret_cast<__m256i*>(p), to_fp16_bits(x));
}
inline void stream_bf16(Avx512, uint16_t* p, const xsimd::batch<float, Avx512>& x) {
  if ((reinterpret_cast<uintptr_t>(p) & 31) != 0) return store_bf16(Avx512{}, p, x);
  _mm256_stream_si256(reinterpret_cast<__m256i*>(p), to_bf16_bits(x));
}
#endif

}  // namespace
}  // namespace strata::cpu_adam::detail
