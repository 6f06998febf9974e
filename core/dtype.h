// Element types strata stores and moves, and conversions between them.
//
// fp16 is IEEE binary16; bf16 is the top half of an IEEE binary32. Conversion
// from fp32 rounds to nearest, ties to even; infinities keep their sign; NaN
// stays NaN (quietened, top payload bits kept, as x86 F16C does). Values too
// large for fp16 become infinity, too small become (signed) zero or a subnormal.
//
// The array conversions pick the widest SIMD the CPU has at run time
// (AVX-512, AVX2+F16C, else scalar) and give bit-identical results to the
// scalar functions on every input. They are thread-safe and allocate nothing.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

#include "absl/status/statusor.h"

namespace strata {

enum class DType : uint8_t { kFloat32, kFloat16, kBFloat16 };

constexpr size_t dtype_size(DType t) { return t == DType::kFloat32 ? 4 : 2; }
std::string_view dtype_name(DType t);  // "fp32", "fp16", "bf16"
// Accepts fp32/float32/float, fp16/float16/half, bf16/bfloat16.
absl::StatusOr<DType> parse_dtype(std::string_view name);

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline float bf16_to_fp32(uint16_t h) { return bits_float(uint32_t{h} << 16); }

inline uint16_t fp32_to_bf16(float f) {
  uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even; overflow carries into inf
  return static_cast<uint16_t>(u >> 16);
}

float fp16_to_fp32(uint16_t h);
uint16_t fp32_to_fp16(float f);

// Array conversions; src and dst must not overlap.
void convert_fp16_to_fp32(const uint16_t* src, float* dst, size_t n);
void convert_fp32_to_fp16(const float* src, uint16_t* dst, size_t n);
void convert_bf16_to_fp32(const uint16_t* src, float* dst, size_t n);
void convert_fp32_to_bf16(const float* src, uint16_t* dst, size_t n);
// The same for n elements of any DType (fp32: a copy).
void convert_to_fp32(const void* src, DType type, float* dst, size_t n);
void convert_from_fp32(const float* src, DType type, void* dst, size_t n);

// Which implementation the array conversions use on this CPU: "avx512", "avx2", "scalar".
std::string_view dtype_conversion_isa();

}  // namespace strata
