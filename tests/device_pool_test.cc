#include "offload/device_pool.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <map>
#include <random>
#include <thread>
#include <vector>

#include "gpu/sim_device.h"
#include "gtest/gtest.h"

namespace strata::offload {
namespace {

constexpr uint64_t kUnit = DevicePool::kAlignment;

class DevicePoolTest : public ::testing::Test {
 protected:
  std::unique_ptr<DevicePool> make(uint64_t bytes) {
    auto pool = DevicePool::create(&device_, bytes);
    EXPECT_TRUE(pool.ok()) << pool.status();
    return pool.ok() ? std::move(*pool) : nullptr;
  }
  uint64_t offset(const DevicePool& pool, void* p) {
    return static_cast<char*>(p) - static_cast<char*>(pool.base());
  }

  gpu::SimDevice device_{{.capacity_bytes = 64 << 20, .costs = {.enabled = false}}};
};

TEST_F(DevicePoolTest, TakesItsRegionFromTheDeviceOnceAndGivesItBack) {
  const gpu::SyncCounters before = device_.sync_counters();
  {
    auto pool = make(1000);  // rounded up to 4 units
    ASSERT_NE(pool, nullptr);
    EXPECT_EQ(pool->capacity(), 4 * kUnit);
    EXPECT_EQ(device_.stats().used_bytes, 4 * kUnit);
    std::vector<void*> blocks;
    for (int i = 0; i < 100; ++i) {
      auto p = pool->allocate(100);
      ASSERT_TRUE(p.ok()) << p.status();
      pool->free(*p);
    }
    EXPECT_EQ(device_.sync_counters().allocations, before.allocations + 1);
    EXPECT_EQ(device_.sync_counters().frees, before.frees);
  }
  EXPECT_EQ(device_.sync_counters().frees, before.frees + 1);
  EXPECT_EQ(device_.stats().used_bytes, 0u);
}

TEST_F(DevicePoolTest, BlocksAreAlignedRoundedAndDisjoint) {
  auto pool = make(64 * kUnit);
  std::map<uint64_t, uint64_t> taken;  // offset -> rounded size
  for (uint64_t bytes : {1, 255, 256, 257, 1000, 4096, 3, 511}) {
    auto p = pool->allocate(bytes);
    ASSERT_TRUE(p.ok()) << p.status();
    EXPECT_EQ(reinterpret_cast<uintptr_t>(*p) % kUnit, 0u) << bytes;
    taken.emplace(offset(*pool, *p), DevicePool::block_bytes(bytes));
  }
  uint64_t end = 0, total = 0;
  for (auto [off, size] : taken) {
    EXPECT_GE(off, end) << "blocks overlap";
    end = off + size;
    total += size;
  }
  EXPECT_LE(end, pool->capacity());
  EXPECT_EQ(pool->stats().used_bytes, total);
  EXPECT_EQ(pool->stats().blocks, taken.size());
  EXPECT_EQ(DevicePool::block_bytes(257), 2 * kUnit);
}

TEST_F(DevicePoolTest, FreeCoalescesWithBothNeighbours) {
  // Blocks of 2 of 8 units are large: they stack down from the top, a highest.
  auto pool = make(8 * kUnit);
  void* a = *pool->allocate(2 * kUnit);
  void* b = *pool->allocate(2 * kUnit);
  void* c = *pool->allocate(2 * kUnit);
  void* d = *pool->allocate(2 * kUnit);
  EXPECT_EQ(pool->stats().free_ranges, 0u);  // exactly full
  pool->free(a);
  pool->free(c);
  EXPECT_EQ(pool->stats().free_ranges, 2u);
  EXPECT_EQ(pool->stats().largest_free_bytes, 2 * kUnit);
  pool->free(b);  // joins a and c: one range of 6 units
  EXPECT_EQ(pool->stats().free_ranges, 1u);
  EXPECT_EQ(pool->stats().largest_free_bytes, 6 * kUnit);
  auto big = pool->allocate(6 * kUnit);
  ASSERT_TRUE(big.ok()) << big.status();
  EXPECT_EQ(*big, c);  // the range from c's start to a's end
  pool->free(*big);
  pool->free(d);
  const DevicePoolStats s = pool->stats();
  EXPECT_EQ(s.free_ranges, 1u);
  EXPECT_EQ(s.largest_free_bytes, s.capacity_bytes);
  EXPECT_EQ(s.used_bytes, 0u);
  EXPECT_EQ(s.peak_bytes, 8 * kUnit);
}

TEST_F(DevicePoolTest, BestFitKeepsTheLargeRangeWhole) {
  // Blocks under 5 units are small in 40: placed from the bottom; `top`
  // (large) fills [10,40) from the top.
  auto pool = make(40 * kUnit);
  void* a = *pool->allocate(kUnit);
  void* keep1 = *pool->allocate(kUnit);
  void* b = *pool->allocate(4 * kUnit);
  void* keep2 = *pool->allocate(kUnit);
  void* top = *pool->allocate(30 * kUnit);
  EXPECT_EQ(offset(*pool, top), 10 * kUnit);
  // Free ranges: [0,1) one unit, [2,6) four units, [7,10) three units.
  pool->free(a);
  pool->free(b);
  auto small = pool->allocate(kUnit);  // best fit: the one-unit hole, not the four
  ASSERT_TRUE(small.ok());
  EXPECT_EQ(*small, a);
  auto three = pool->allocate(3 * kUnit);  // the three-unit tail
  ASSERT_TRUE(three.ok());
  EXPECT_EQ(offset(*pool, *three), 7 * kUnit);
  auto four = pool->allocate(4 * kUnit);  // the four-unit range is still whole
  ASSERT_TRUE(four.ok()) << four.status();
  EXPECT_EQ(*four, b);
  (void)keep1;
  (void)keep2;
}

// Large blocks stack down from the top, small ones up from the bottom, so a
// small block left behind does not cut the span the large ones need.
TEST_F(DevicePoolTest, LargeBlocksGoToTheTopSmallOnesToTheBottom) {
  auto pool = make(64 * kUnit);  // large: at least 8 units
  void* small1 = *pool->allocate(kUnit);
  void* large1 = *pool->allocate(20 * kUnit);
  void* large2 = *pool->allocate(8 * kUnit);
  void* small2 = *pool->allocate(2 * kUnit);
  EXPECT_EQ(offset(*pool, small1), 0u);
  EXPECT_EQ(offset(*pool, large1), 44 * kUnit);
  EXPECT_EQ(offset(*pool, large2), 36 * kUnit);
  EXPECT_EQ(offset(*pool, small2), kUnit);
  // Only large2 and small2 stay: the free space is [0,1) and [3,36), [44,64)
  // instead of a small block splitting the middle.
  pool->free(small1);
  pool->free(large1);
  EXPECT_EQ(pool->stats().largest_free_bytes, 33 * kUnit);
  auto big = pool->allocate(33 * kUnit);
  ASSERT_TRUE(big.ok()) << big.status();
  EXPECT_EQ(offset(*pool, *big), 3 * kUnit);
}

TEST_F(DevicePoolTest, FragmentationRefusesWhatTheFreeTotalWouldHold) {
  auto pool = make(4 * kUnit);
  std::vector<void*> blocks;
  for (int i = 0; i < 4; ++i) blocks.push_back(*pool->allocate(kUnit));
  pool->free(blocks[0]);
  pool->free(blocks[2]);
  auto two = pool->allocate(2 * kUnit);  // 2 units free, but not side by side
  ASSERT_FALSE(two.ok());
  EXPECT_EQ(two.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(two.status().message().find("largest free range 256"), absl::string_view::npos)
      << two.status();
  EXPECT_EQ(pool->stats().failed_allocations, 1u);
  EXPECT_EQ(pool->stats().used_bytes, 2 * kUnit);  // the failure changed nothing
  pool->free(blocks[1]);                           // now [0,3) is one range
  EXPECT_TRUE(pool->allocate(2 * kUnit).ok());
}

TEST_F(DevicePoolTest, ExhaustionAndBadRequests) {
  auto pool = make(2 * kUnit);
  EXPECT_TRUE(pool->allocate(2 * kUnit).ok());
  auto more = pool->allocate(1);
  ASSERT_FALSE(more.ok());
  EXPECT_EQ(more.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(more.status().message().find("0 free"), absl::string_view::npos) << more.status();
  EXPECT_EQ(pool->allocate(0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DevicePool::create(nullptr, 1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DevicePool::create(&device_, 0).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(DevicePoolTest, APoolLargerThanTheDeviceFailsWithTheDevicesError) {
  gpu::SimDevice tiny({.capacity_bytes = 1 << 20, .costs = {.enabled = false}});
  auto pool = DevicePool::create(&tiny, 2 << 20);
  ASSERT_FALSE(pool.ok());
  EXPECT_EQ(pool.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(pool.status().message().find("device pool of 2097152 bytes"), absl::string_view::npos)
      << pool.status();
}

TEST_F(DevicePoolTest, FreeOfAForeignPointerStops) {
  auto pool = make(16 * kUnit);  // a small block: at 0, the next unit inside the pool
  void* p = *pool->allocate(kUnit);
  EXPECT_DEATH(pool->free(static_cast<char*>(p) + kUnit), "did not hand out");
  int outside = 0;
  EXPECT_DEATH(pool->free(&outside), "outside the pool");
}

// Random allocate/free against a model of which bytes are taken: blocks never
// overlap, the accounting matches, and once all is freed the pool is one
// range again (coalescing is complete).
TEST_F(DevicePoolTest, RandomOperationsKeepBlocksDisjointAndCoalesceFully) {
  const uint64_t units = 256;
  auto pool = make(units * kUnit);
  for (uint32_t seed = 1; seed <= 5; ++seed) {
    std::mt19937 rng(seed);
    std::map<uint64_t, uint64_t> live;  // offset -> rounded size
    uint64_t used = 0;
    for (int op = 0; op < 3000; ++op) {
      if (!live.empty() && rng() % 2 == 0) {
        auto it = live.begin();
        std::advance(it, rng() % live.size());
        pool->free(static_cast<char*>(pool->base()) + it->first);
        used -= it->second;
        live.erase(it);
        continue;
      }
      const uint64_t bytes = 1 + rng() % (8 * kUnit);
      auto p = pool->allocate(bytes);
      if (!p.ok()) {
        EXPECT_GT(DevicePool::block_bytes(bytes), pool->stats().largest_free_bytes);
        continue;
      }
      const uint64_t off = offset(*pool, *p), size = DevicePool::block_bytes(bytes);
      auto next = live.lower_bound(off);
      if (next != live.end()) {
        ASSERT_LE(off + size, next->first) << "seed " << seed << " op " << op;
      }
      if (next != live.begin()) {
        ASSERT_LE(std::prev(next)->first + std::prev(next)->second, off)
            << "seed " << seed << " op " << op;
      }
      live.emplace(off, size);
      used += size;
      ASSERT_EQ(pool->stats().used_bytes, used);
    }
    for (auto [off, size] : live) pool->free(static_cast<char*>(pool->base()) + off);
    const DevicePoolStats s = pool->stats();
    EXPECT_EQ(s.used_bytes, 0u);
    EXPECT_EQ(s.free_ranges, 1u) << "seed " << seed;
    EXPECT_EQ(s.largest_free_bytes, units * kUnit);
  }
}

// allocate() and free() from several threads at once: no block is handed out
// twice (each thread writes its tag through its blocks and reads it back).
TEST_F(DevicePoolTest, ConcurrentUseHandsOutEachBlockOnce) {
  auto pool = make(1024 * kUnit);
  std::vector<std::thread> threads;
  std::atomic<int> errors{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t + 1);
      std::vector<std::pair<uint8_t*, uint64_t>> mine;
      for (int op = 0; op < 2000; ++op) {
        if (!mine.empty() && rng() % 2 == 0) {
          auto [p, n] = mine.back();
          mine.pop_back();
          if (std::any_of(p, p + n, [&](uint8_t v) { return v != t + 1; })) ++errors;
          pool->free(p);
          continue;
        }
        const uint64_t n = 1 + rng() % (4 * kUnit);
        auto p = pool->allocate(n);
        if (!p.ok()) continue;
        auto* bytes = static_cast<uint8_t*>(*p);
        std::fill(bytes, bytes + n, static_cast<uint8_t>(t + 1));
        mine.emplace_back(bytes, n);
      }
      for (auto [p, n] : mine) pool->free(p);
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(pool->stats().used_bytes, 0u);
  EXPECT_EQ(pool->stats().free_ranges, 1u);
}

}  // namespace
}  // namespace strata::offload

namespace strata::offload {
namespace {

// Unaligned sizes replaced one at a time, as the store's churn does.
TEST_F(DevicePoolTest, ChurnOfUnalignedSizesNeverHandsOutABlockTwice) {
  const std::vector<uint64_t> sizes = {800, 960000, 2400, 320000, 1280000, 3200};
  auto pool = make(12 * 2 * 1280000);
  std::vector<void*> blocks;
  for (int i = 0; i < 12; ++i) blocks.push_back(*pool->allocate(sizes[i % sizes.size()]));
  std::mt19937 rng(1);
  for (int op = 0; op < 20000; ++op) {
    const size_t k = rng() % blocks.size();
    pool->free(blocks[k]);
    auto p = pool->allocate(sizes[rng() % sizes.size()]);
    ASSERT_TRUE(p.ok()) << "op " << op << ": " << p.status();
    blocks[k] = *p;
    ASSERT_EQ(pool->stats().blocks, blocks.size()) << "op " << op;
  }
}

}  // namespace
}  // namespace strata::offload
