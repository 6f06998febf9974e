#include "core/parse.h"

#include <cstdint>
#include <limits>
#include <string>

#include "gtest/gtest.h"

namespace strata {
namespace {

TEST(ParseByteSize, Units) {
  EXPECT_EQ(*parse_byte_size("4096", "--x"), 4096u);
  EXPECT_EQ(*parse_byte_size("128K", "--x"), 128u << 10);
  EXPECT_EQ(*parse_byte_size("1m", "--x"), 1u << 20);
  EXPECT_EQ(*parse_byte_size("1.5 GiB", "--x"), 3ull << 29);
  EXPECT_EQ(*parse_byte_size("2TB", "--x"), 2ull << 40);
  EXPECT_EQ(*parse_byte_size("1e9", "--x"), 1000000000u);
  EXPECT_EQ(*parse_byte_size("7B", "--x"), 7u);
}

TEST(ParseByteSize, RejectsHostileText) {
  for (const std::string& bad : std::initializer_list<std::string>{
           "", ".", "-1", "nan", "inf", "1e99", "1..2", "1Q", "G", "1e", "0", "0.4", "99999999T",
           std::string(5000, '9'), "1\xff"}) {
    auto r = parse_byte_size(bad, "--host-mem");
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find("--host-mem"), std::string::npos);
    EXPECT_LT(r.status().message().size(), 300u) << "the message quotes at most 64 bytes";
  }
}

TEST(ParseByteSize, Bounds) {
  EXPECT_TRUE(parse_byte_size("0", "--x", 0).ok());
  EXPECT_FALSE(parse_byte_size("1K", "--x", 1, 1000).ok());
  EXPECT_NE(parse_byte_size("1K", "--x", 1, 1000).status().message().find("maximum"),
            std::string::npos);
}

// A max that a double cannot hold exactly (2^64 - 1 rounds up to 2^64) must
// not let 2^64 through: converting it to uint64_t is undefined.
TEST(ParseByteSize, NothingAtOrAbove2To64EvenWithTheLargestMax) {
  constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();
  for (const char* big : {"16777216T", "18446744073709551616", "16777217T"}) {
    auto r = parse_byte_size(big, "--x", 1, kMax);
    ASSERT_FALSE(r.ok()) << big << " gave " << *r;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(*parse_byte_size("16777215T", "--x", 1, kMax), uint64_t{16777215} << 40);
}

TEST(ParseDouble, FiniteAndInRange) {
  EXPECT_DOUBLE_EQ(*parse_double("1e-3", "--lr"), 1e-3);
  EXPECT_DOUBLE_EQ(*parse_double("-2.5", "--x"), -2.5);
  for (const char* bad : {"", "nan", "inf", "-inf", "1e999", "0x10", "1,5", " 1", "1 "}) {
    EXPECT_FALSE(parse_double(bad, "--x").ok()) << bad;
  }
  const DoubleRange positive{.min = 0, .min_inclusive = false};
  EXPECT_FALSE(parse_double("0", "--temperature", positive).ok());
  auto r = parse_double("-1", "--temperature", positive);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("> 0"), std::string::npos) << r.status().message();
  EXPECT_TRUE(parse_double("0.7", "--temperature", positive).ok());
}

TEST(ParseInt, WholeNumbersInRange) {
  EXPECT_EQ(*parse_int("42", "--steps", 1), 42);
  EXPECT_EQ(*parse_int("-1", "--x"), -1);
  for (const char* bad : {"", "1.5", "1e3", "abc", "99999999999999999999", "4x"}) {
    EXPECT_FALSE(parse_int(bad, "--steps").ok()) << bad;
  }
  EXPECT_FALSE(parse_int("0", "--steps", 1).ok());
}

}  // namespace
}  // namespace strata
