#include "core/memory_bandwidth.h"

#include "gtest/gtest.h"

namespace strata {
namespace {

TEST(MemoryBandwidth, SmallRunReportsAllKernels) {
  MemoryBandwidthOptions o;
  o.elements = 1 << 20;
  o.threads = 2;
  o.repeats = 2;
  auto r = measure_memory_bandwidth(o);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->size(), 3u);
  EXPECT_EQ((*r)[0].kernel, "copy");
  EXPECT_EQ((*r)[1].kernel, "triad");
  EXPECT_EQ((*r)[2].kernel, "adam");
  EXPECT_EQ((*r)[2].bytes_per_element, 28u);
  for (const auto& k : *r) {
    EXPECT_GT(k.gb_per_s, 0.1) << k.kernel;
    EXPECT_EQ(k.threads, 2);
    EXPECT_NEAR(k.gb_per_s, k.bytes_per_element * k.elements / k.best_seconds / 1e9, 1e-6);
  }
}

TEST(MemoryBandwidth, RejectsBadOptions) {
  MemoryBandwidthOptions o;
  o.elements = 10;
  EXPECT_EQ(measure_memory_bandwidth(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.elements = 1 << 20;
  o.repeats = 0;
  EXPECT_FALSE(measure_adam_stream(o).ok());
}

}  // namespace
}  // namespace strata
