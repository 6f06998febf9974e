#include "core/dtype.h"

#include <cstring>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "core/dtype_simd.h"

namespace strata {

std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::kFloat32:
      return "fp32";
    case DType::kFloat16:
      return "fp16";
    case DType::kBFloat16:
      return "bf16";
  }
  return "?";
}

absl::StatusOr<DType> parse_dtype(std::string_view name) {
  std::string s = absl::AsciiStrToLower(std::string(name));
  if (s == "fp32" || s == "float32" || s == "float") return DType::kFloat32;
  if (s == "fp16" || s == "float16" || s == "half") return DType::kFloat16;
  if (s == "bf16" || s == "bfloat16") return DType::kBFloat16;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown dtype \"", std::string(name), "\"; expected fp32, fp16 or bf16"));
}

float fp16_to_fp32(uint16_t h) {
  uint32_t sign = uint32_t{h & 0x8000u} << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0x1f) {  // inf; NaN comes back quiet, as F16C returns it
    return bits_float(sign | 0x7f800000u | (mant << 13) | (mant != 0 ? 0x400000u : 0u));
  }
  if (exp != 0) return bits_float(sign | ((exp + 112) << 23) | (mant << 13));
  if (mant == 0) return bits_float(sign);
  // Subnormal: normalise the mantissa into an fp32 normal.
  int shift = __builtin_clz(mant) - 21;  // leading zeros within the 10-bit field
  mant = (mant << shift) & 0x3ffu;
  return bits_float(sign | ((113 - shift) << 23) | (mant << 13));
}

uint16_t fp32_to_fp16(float f) {
  uint32_t u = float_bits(f);
  uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7e00u | static_cast<uint16_t>((abs >> 13) & 0x3ffu);
  if (abs >= 0x477ff000u) return sign | 0x7c00u;  // rounds to >= 65520: infinity
  if (abs >= 0x38800000u) {                       // normal in fp16 (>= 2^-14)
    uint32_t r = abs - 0x38000000u;               // rebias exponent 127 -> 15
    r += 0xfffu + ((r >> 13) & 1u);
    return sign | static_cast<uint16_t>(r >> 13);
  }
  if (abs < 0x33000000u) return sign;  // below half the smallest subnormal (2^-25)
  // Subnormal: value = mant * 2^(e-150); fp16 subnormal unit is 2^-24.
  uint32_t e = abs >> 23;
  uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
  uint32_t shift = 126 - e;  // 14..24 for e in 102..112
  uint32_t q = mant >> shift;
  uint32_t rem = mant & ((1u << shift) - 1);
  uint32_t half = 1u << (shift - 1);
  if (rem > half || (rem == half && (q & 1u))) ++q;
  return sign | static_cast<uint16_t>(q);
}

namespace {
enum class Isa { kScalar, kAvx2, kAvx512 };
Isa detect_isa() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) return Isa::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c")) return Isa::kAvx2;
  return Isa::kScalar;
}
const Isa kIsa = detect_isa();
}  // namespace

std::string_view dtype_conversion_isa() {
  switch (kIsa) {
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    case Isa::kScalar:
      return "scalar";
  }
  return "scalar";
}

void convert_fp16_to_fp32(const uint16_t* src, float* dst, size_t n) {
  size_t done = 0;
  if (kIsa == Isa::kAvx512) done = simd::fp16_to_fp32_avx512(src, dst, n);
  if (kIsa == Isa::kAvx2) done = simd::fp16_to_fp32_avx2(src, dst, n);
  for (size_t i = done; i < n; ++i) dst[i] = fp16_to_fp32(src[i]);
}

void convert_fp32_to_fp16(const float* src, uint16_t* dst, size_t n) {
  size_t done = 0;
  if (kIsa == Isa::kAvx512) done = simd::fp32_to_fp16_avx512(src, dst, n);
  if (kIsa == Isa::kAvx2) done = simd::fp32_to_fp16_avx2(src, dst, n);
  for (size_t i = done; i < n; ++i) dst[i] = fp32_to_fp16(src[i]);
}

void convert_bf16_to_fp32(const uint16_t* src, float* dst, size_t n) {
  size_t done = 0;
  if (kIsa == Isa::kAvx512) done = simd::bf16_to_fp32_avx512(src, dst, n);
  if (kIsa == Isa::kAvx2) done = simd::bf16_to_fp32_avx2(src, dst, n);
  for (size_t i = done; i < n; ++i) dst[i] = bf16_to_fp32(src[i]);
}

void convert_fp32_to_bf16(const float* src, uint16_t* dst, size_t n) {
  size_t done = 0;
  if (kIsa == Isa::kAvx512) done = simd::fp32_to_bf16_avx512(src, dst, n);
  if (kIsa == Isa::kAvx2) done = simd::fp32_to_bf16_avx2(src, dst, n);
  for (size_t i = done; i < n; ++i) dst[i] = fp32_to_bf16(src[i]);
}

void convert_to_fp32(const void* src, DType type, float* dst, size_t n) {
  switch (type) {
    case DType::kFloat32:
      std::memcpy(dst, src, n * sizeof(float));
      return;
    case DType::kFloat16:
      convert_fp16_to_fp32(static_cast<const uint16_t*>(src), dst, n);
      return;
    case DType::kBFloat16:
      convert_bf16_to_fp32(static_cast<const uint16_t*>(src), dst, n);
      return;
  }
}

void convert_from_fp32(const float* src, DType type, void* dst, size_t n) {
  switch (type) {
    case DType::kFloat32:
      std::memcpy(dst, src, n * sizeof(float));
      return;
    case DType::kFloat16:
      convert_fp32_to_fp16(src, static_cast<uint16_t*>(dst), n);
      return;
    case DType::kBFloat16:
      convert_fp32_to_bf16(src, static_cast<uint16_t*>(dst), n);
      return;
  }
}

}  // namespace strata
