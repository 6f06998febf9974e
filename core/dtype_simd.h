// Per-ISA bodies of the array conversions in dtype.h. Each converts the
// largest prefix that fills whole vectors and returns how many elements it
// did; the caller finishes the tail with the scalar functions. Only call a
// function when the CPU has its ISA (dtype.cc checks at start-up).
#pragma once

#include <cstddef>
#include <cstdint>

namespace strata::simd {

size_t fp16_to_fp32_avx2(const uint16_t* src, float* dst, size_t n);
size_t fp32_to_fp16_avx2(const float* src, uint16_t* dst, size_t n);
size_t bf16_to_fp32_avx2(const uint16_t* src, float* dst, size_t n);
size_t fp32_to_bf16_avx2(const float* src, uint16_t* dst, size_t n);

size_t fp16_to_fp32_avx512(const uint16_t* src, float* dst, size_t n);
size_t fp32_to_fp16_avx512(const float* src, uint16_t* dst, size_t n);
size_t bf16_to_fp32_avx512(const uint16_t* src, float* dst, size_t n);
size_t fp32_to_bf16_avx512(const float* src, uint16_t* dst, size_t n);

}  // namespace strata::simd
