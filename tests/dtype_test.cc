// Conversions checked exhaustively over every 16-bit pattern, against
// independent references: the compiler's _Float16 and exact double arithmetic.
#include "core/dtype.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace strata {
namespace {

bool is_nan16(uint16_t h) { return (h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0; }
bool is_nan_bf16(uint16_t h) { return (h & 0x7f80) == 0x7f80 && (h & 0x7f) != 0; }

// fp16 value by its definition, computed in double.
double fp16_reference(uint16_t h) {
  int sign = h >> 15, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  double mag = exp == 0 ? std::ldexp(mant, -24) : std::ldexp(1024 + mant, exp - 25);
  if (exp == 0x1f) mag = mant == 0 ? INFINITY : NAN;
  return sign ? -mag : mag;
}

TEST(DType, NamesRoundTrip) {
  for (DType t : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    auto parsed = parse_dtype(dtype_name(t));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, t);
  }
  EXPECT_EQ(*parse_dtype("BFloat16"), DType::kBFloat16);
  EXPECT_FALSE(parse_dtype("int8").ok());
  EXPECT_EQ(dtype_size(DType::kFloat32), 4u);
  EXPECT_EQ(dtype_size(DType::kBFloat16), 2u);
}

TEST(DType, Fp16ToFp32AllPatterns) {
  std::vector<uint16_t> all(65536);
  for (uint32_t i = 0; i < 65536; ++i) all[i] = static_cast<uint16_t>(i);
  std::vector<float> vec(65536);
  convert_fp16_to_fp32(all.data(), vec.data(), all.size());
  for (uint32_t i = 0; i < 65536; ++i) {
    const uint16_t h = static_cast<uint16_t>(i);
    const float scalar = fp16_to_fp32(h);
    const double ref = fp16_reference(h);
    if (is_nan16(h)) {
      EXPECT_TRUE(std::isnan(scalar)) << std::hex << i;
      EXPECT_EQ(float_bits(scalar) >> 31, i >> 15u);
    } else {
      EXPECT_EQ(static_cast<double>(scalar), ref) << std::hex << i;
      EXPECT_EQ(std::signbit(scalar), (i >> 15) != 0) << std::hex << i;  // -0 kept
    }
    EXPECT_EQ(float_bits(vec[i]), float_bits(scalar)) << "simd differs at 0x" << std::hex << i;
    EXPECT_EQ(float_bits(scalar), float_bits(static_cast<float>(std::bit_cast<_Float16>(h))))
        << "differs from _Float16 at 0x" << std::hex << i;
  }
}

TEST(DType, Fp16RoundTripAllPatterns) {
  for (uint32_t i = 0; i < 65536; ++i) {
    const uint16_t h = static_cast<uint16_t>(i);
    const uint16_t back = fp32_to_fp16(fp16_to_fp32(h));
    if (is_nan16(h)) {
      EXPECT_TRUE(is_nan16(back));
      EXPECT_EQ(back, h | 0x200) << "NaN quietened, payload kept, at 0x" << std::hex << i;
    } else {
      EXPECT_EQ(back, h) << std::hex << i;
    }
  }
}

// Every float between consecutive fp16 values: the two neighbours, the exact
// midpoint (ties to even) and one ulp either side of it.
std::vector<float> fp16_rounding_cases() {
  std::vector<float> cases;
  for (uint32_t i = 0; i < 0x7c00; ++i) {
    for (uint32_t sign : {0u, 0x8000u}) {
      float lo = fp16_to_fp32(static_cast<uint16_t>(i | sign));
      double next = i + 1 < 0x7c00 ? fp16_reference(static_cast<uint16_t>((i + 1) | sign))
                                   : (sign ? -65536.0 : 65536.0);
      float mid = static_cast<float>((static_cast<double>(lo) + next) / 2);  // exact in fp32
      cases.push_back(lo);
      cases.push_back(mid);
      cases.push_back(std::nextafter(mid, 0.0f));
      cases.push_back(std::nextafter(mid, sign ? -INFINITY : INFINITY));
    }
  }
  for (float f : {INFINITY, -INFINITY, NAN, -NAN, 1e30f, -1e30f, 1e-30f, 65519.996f, 65520.0f,
                  std::numeric_limits<float>::denorm_min(), std::numeric_limits<float>::max()}) {
    cases.push_back(f);
  }
  cases.push_back(bits_float(0x7f800001u));  // signalling NaN
  cases.push_back(bits_float(0xffbfffffu));
  std::mt19937 rng(42);
  for (int i = 0; i < 200000; ++i) cases.push_back(bits_float(static_cast<uint32_t>(rng())));
  return cases;
}

TEST(DType, Fp32ToFp16RoundsToNearestEven) {
  const std::vector<float> cases = fp16_rounding_cases();
  std::vector<uint16_t> vec(cases.size());
  convert_fp32_to_fp16(cases.data(), vec.data(), cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    const float f = cases[i];
    const uint16_t scalar = fp32_to_fp16(f);
    EXPECT_EQ(vec[i], scalar) << "simd differs for bits 0x" << std::hex << float_bits(f);
    if (std::isnan(f)) {
      EXPECT_TRUE(is_nan16(scalar));
      continue;
    }
    const uint16_t ref = std::bit_cast<uint16_t>(static_cast<_Float16>(f));
    EXPECT_EQ(scalar, ref) << "bits 0x" << std::hex << float_bits(f);
  }
}

TEST(DType, Bf16ToFp32AllPatterns) {
  std::vector<uint16_t> all(65536);
  for (uint32_t i = 0; i < 65536; ++i) all[i] = static_cast<uint16_t>(i);
  std::vector<float> vec(65536);
  convert_bf16_to_fp32(all.data(), vec.data(), all.size());
  for (uint32_t i = 0; i < 65536; ++i) {
    EXPECT_EQ(float_bits(vec[i]), i << 16) << std::hex << i;
    EXPECT_EQ(float_bits(bf16_to_fp32(static_cast<uint16_t>(i))), i << 16);
    uint16_t back = fp32_to_bf16(bf16_to_fp32(static_cast<uint16_t>(i)));
    if (is_nan_bf16(static_cast<uint16_t>(i))) {
      EXPECT_EQ(back, i | 0x40) << std::hex << i;
    } else {
      EXPECT_EQ(back, i) << std::hex << i;
    }
  }
}

// Reference: the nearer of the two bf16 neighbours by exact double distance, even on ties.
uint16_t bf16_reference(float f) {
  uint32_t u = float_bits(f);
  if (std::isnan(f)) return static_cast<uint16_t>((u >> 16) | 0x40);
  uint16_t down = static_cast<uint16_t>(u >> 16);
  if ((u & 0xffff) == 0) return down;
  uint16_t up = static_cast<uint16_t>(down + 1);
  double dd = std::fabs(static_cast<double>(f) - bf16_to_fp32(down));
  double du = (up & 0x7f80) == 0x7f80 && (up & 0x7f) == 0
                  ? std::fabs(static_cast<double>(f)) - 0  // overflow: compare with 2^128
                  : std::fabs(static_cast<double>(f) - bf16_to_fp32(up));
  if ((up & 0x7fff) == 0x7f80) du = std::fabs(std::ldexp(1.0, 128) - std::fabs(double{f}));
  if (dd < du) return down;
  if (du < dd) return up;
  return (down & 1) ? up : down;
}

TEST(DType, Fp32ToBf16RoundsToNearestEven) {
  std::vector<float> cases;
  for (uint32_t hi = 0; hi < 65536; ++hi) {
    for (uint32_t lo : {0x0000u, 0x0001u, 0x7fffu, 0x8000u, 0x8001u, 0xffffu}) {
      uint32_t u = (hi << 16) | lo;
      if ((u & 0x7fffffffu) > 0x7f800000u && lo != 0) continue;  // NaNs: tested below
      cases.push_back(bits_float(u));
    }
  }
  cases.push_back(bits_float(0x7f800001u));
  cases.push_back(bits_float(0xff812345u));
  cases.push_back(NAN);
  std::vector<uint16_t> vec(cases.size());
  convert_fp32_to_bf16(cases.data(), vec.data(), cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    const uint16_t scalar = fp32_to_bf16(cases[i]);
    EXPECT_EQ(vec[i], scalar) << "simd differs for bits 0x" << std::hex << float_bits(cases[i]);
    EXPECT_EQ(scalar, bf16_reference(cases[i])) << "bits 0x" << std::hex << float_bits(cases[i]);
    if (std::isnan(cases[i])) {
      EXPECT_TRUE(is_nan_bf16(scalar));
    }
  }
}

TEST(DType, OddLengthsUseScalarTail) {
  for (size_t n : {0, 1, 7, 15, 17, 33, 1000}) {
    std::vector<float> src(n), back(n);
    for (size_t i = 0; i < n; ++i) src[i] = static_cast<float>(i) * 0.37f - 3.0f;
    std::vector<uint16_t> h(n);
    convert_fp32_to_fp16(src.data(), h.data(), n);
    convert_fp16_to_fp32(h.data(), back.data(), n);
    for (size_t i = 0; i < n; ++i) {
      EXPECT_EQ(h[i], fp32_to_fp16(src[i]));
      EXPECT_NEAR(back[i], src[i], std::fabs(src[i]) * 1e-3 + 1e-7);
    }
    convert_fp32_to_bf16(src.data(), h.data(), n);
    for (size_t i = 0; i < n; ++i) EXPECT_EQ(h[i], fp32_to_bf16(src[i]));
  }
}

// The any-dtype conversions are the typed ones (fp32: a copy).
TEST(DType, AnyDtypeConversionsAreTheTypedOnes) {
  constexpr size_t n = 37;
  std::vector<float> src(n), back(n), want(n);
  for (size_t i = 0; i < n; ++i) src[i] = static_cast<float>(i) * 0.731f - 9.0f;
  std::vector<uint16_t> h(n), typed(n);
  convert_from_fp32(src.data(), DType::kFloat16, h.data(), n);
  convert_fp32_to_fp16(src.data(), typed.data(), n);
  EXPECT_EQ(h, typed);
  convert_to_fp32(h.data(), DType::kFloat16, back.data(), n);
  convert_fp16_to_fp32(typed.data(), want.data(), n);
  EXPECT_EQ(back, want);
  convert_from_fp32(src.data(), DType::kBFloat16, h.data(), n);
  convert_fp32_to_bf16(src.data(), typed.data(), n);
  EXPECT_EQ(h, typed);
  convert_to_fp32(h.data(), DType::kBFloat16, back.data(), n);
  convert_bf16_to_fp32(typed.data(), want.data(), n);
  EXPECT_EQ(back, want);
  std::vector<float> copy(n);
  convert_from_fp32(src.data(), DType::kFloat32, copy.data(), n);
  EXPECT_EQ(copy, src);
  convert_to_fp32(src.data(), DType::kFloat32, copy.data(), n);
  EXPECT_EQ(copy, src);
}

TEST(DType, ReportsIsa) {
  std::string_view isa = dtype_conversion_isa();
  EXPECT_TRUE(isa == "avx512" || isa == "avx2" || isa == "scalar") << isa;
}

}  // namespace
}  // namespace strata
