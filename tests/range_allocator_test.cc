#include "offload/range_allocator.h"

#include <gtest/gtest.h>

namespace strata::offload {
namespace {

TEST(RangeAllocatorTest, BestFitSplitsAndCoalesces) {
  RangeAllocator r(1000);
  const auto a = r.allocate(100, 1);
  const auto b = r.allocate(200, 1);
  const auto c = r.allocate(100, 1);
  ASSERT_TRUE(a && b && c);
  EXPECT_EQ(*a, 0u);
  EXPECT_EQ(*b, 100u);
  EXPECT_EQ(*c, 300u);
  EXPECT_EQ(r.used_bytes(), 400u);
  EXPECT_EQ(r.blocks(), 3u);
  // Free ranges now: [100, 300) of 200 after freeing b, and the tail of 600.
  EXPECT_EQ(r.free(*b), 200u);
  EXPECT_EQ(r.free_ranges(), 2u);
  // Best fit takes the 200-byte hole, not the larger tail.
  const auto d = r.allocate(150, 1);
  ASSERT_TRUE(d);
  EXPECT_EQ(*d, 100u);
  EXPECT_EQ(r.free(*d), 150u);
  EXPECT_EQ(r.free(*a), 100u);
  EXPECT_EQ(r.free(*c), 100u);
  // Everything merged back into one range.
  EXPECT_EQ(r.free_ranges(), 1u);
  EXPECT_EQ(r.largest_free_bytes(), 1000u);
  EXPECT_EQ(r.used_bytes(), 0u);
  EXPECT_EQ(r.peak_bytes(), 400u);
}

TEST(RangeAllocatorTest, HighEndTakesTheTopOfTheBestFitRange) {
  RangeAllocator r(1000);
  const auto a = r.allocate(100, 1, /*high_end=*/true);
  ASSERT_TRUE(a);
  EXPECT_EQ(*a, 900u);  // the top of the one range
  const auto b = r.allocate(100, 64, /*high_end=*/true);
  ASSERT_TRUE(b);
  EXPECT_EQ(*b, 768u);                // [768, 868): aligned down, below a
  const auto c = r.allocate(100, 1);  // low end as before
  ASSERT_TRUE(c);
  EXPECT_EQ(*c, 0u);
  // Free ranges: [100, 768) and [868, 900); best fit still picks the smallest.
  const auto d = r.allocate(32, 1, /*high_end=*/true);
  ASSERT_TRUE(d);
  EXPECT_EQ(*d, 868u);
  EXPECT_EQ(r.free_ranges(), 1u);
  EXPECT_FALSE(r.allocate(669, 1, /*high_end=*/true));
}

TEST(RangeAllocatorTest, AlignmentLeavesTheHeadFree) {
  RangeAllocator r(8192);
  ASSERT_EQ(r.allocate(10, 1), 0u);
  const auto b = r.allocate(100, 4096);
  ASSERT_TRUE(b);
  EXPECT_EQ(*b, 4096u);
  // Best fit: the tail after the aligned block (3996 bytes) is smaller than
  // the gap before it (4086).
  EXPECT_EQ(r.allocate(100, 1), 4196u);
  // The gap before the aligned block stays usable.
  EXPECT_EQ(r.allocate(4000, 1), 10u);
  // No range holds 4096 bytes at a multiple of 4096 any more.
  EXPECT_FALSE(r.allocate(4096, 4096).has_value());
  EXPECT_EQ(r.used_bytes(), 4210u);
}

TEST(RangeAllocatorTest, ExhaustionAndUnknownFreesChangeNothing) {
  RangeAllocator r(64);
  ASSERT_EQ(r.allocate(64, 1), 0u);
  EXPECT_FALSE(r.allocate(1, 1).has_value());
  EXPECT_EQ(r.free_ranges(), 0u);
  EXPECT_EQ(r.free(5), 0u) << "no block starts there";
  EXPECT_EQ(r.used_bytes(), 64u);
  EXPECT_EQ(r.free(0), 64u);
  EXPECT_EQ(r.free(0), 0u) << "a second free finds nothing";
  EXPECT_EQ(r.largest_free_bytes(), 64u);
}

}  // namespace
}  // namespace strata::offload
