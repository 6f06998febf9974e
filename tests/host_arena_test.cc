#include "offload/host_arena.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "gpu/sim_device.h"
#include "gtest/gtest.h"

namespace strata::offload {
namespace {

std::unique_ptr<HostArena> make_arena(uint64_t bytes, gpu::Device* pin = nullptr) {
  auto arena = HostArena::create({.capacity_bytes = bytes, .pin_device = pin});
  EXPECT_TRUE(arena.ok()) << arena.status();
  return arena.ok() ? std::move(*arena) : nullptr;
}

TEST(HostArena, BlocksAreAlignedDisjointAndWritable) {
  auto arena = make_arena(64 << 20);
  ASSERT_NE(arena, nullptr);
  std::vector<HostBlock> blocks;
  for (uint64_t bytes : {1ull, 4096ull, 5000ull, 1ull << 20, 3ull << 20}) {
    auto b = arena->allocate(bytes);
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_EQ(reinterpret_cast<uintptr_t>(b->data) % 4096, 0u);
    EXPECT_GE(b->bytes, bytes);
    std::memset(b->data, static_cast<int>(blocks.size() + 1), b->bytes);
    blocks.push_back(*b);
  }
  for (size_t i = 0; i < blocks.size(); ++i) {
    auto* p = static_cast<unsigned char*>(blocks[i].data);
    EXPECT_EQ(p[0], i + 1);
    EXPECT_EQ(p[blocks[i].bytes - 1], i + 1) << "blocks overlap";
  }
  auto big = arena->allocate(2 << 20, 2 << 20);
  ASSERT_TRUE(big.ok());
  EXPECT_EQ(big->offset % (2 << 20), 0u);
  for (const HostBlock& b : blocks) arena->free(b);
  arena->free(*big);
  HostArenaStats s = arena->stats();
  EXPECT_EQ(s.used_bytes, 0u);
  EXPECT_EQ(s.blocks, 0u);
  EXPECT_EQ(s.largest_free_bytes, arena->capacity()) << "free blocks must coalesce";
}

TEST(HostArena, FullArenaSaysWhatIsFree) {
  auto arena = make_arena(8 << 20);
  ASSERT_NE(arena, nullptr);
  auto a = arena->allocate(6 << 20);
  ASSERT_TRUE(a.ok());
  auto b = arena->allocate(4 << 20);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(b.status().message().find("largest free block"), absl::string_view::npos);
}

TEST(HostArena, RandomAllocFreeDoesNotFragment) {
  auto arena = make_arena(256 << 20);
  ASSERT_NE(arena, nullptr);
  std::mt19937 rng(7);
  std::vector<HostBlock> live;
  for (int i = 0; i < 5000; ++i) {
    if (!live.empty() && (rng() % 2 == 0 || live.size() > 40)) {
      size_t k = rng() % live.size();
      arena->free(live[k]);
      live.erase(live.begin() + static_cast<long>(k));
    } else {
      auto b = arena->allocate(4096 * (1 + rng() % 512));
      ASSERT_TRUE(b.ok()) << b.status();
      live.push_back(*b);
    }
  }
  for (const HostBlock& b : live) arena->free(b);
  EXPECT_EQ(arena->stats().largest_free_bytes, arena->capacity());
}

TEST(HostArena, ConcurrentUse) {
  auto arena = make_arena(128 << 20);
  ASSERT_NE(arena, nullptr);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 500; ++i) {
        auto b = arena->allocate(4096 * (1 + (i + t) % 64));
        ASSERT_TRUE(b.ok());
        static_cast<char*>(b->data)[0] = static_cast<char>(t);
        arena->free(*b);
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(arena->stats().used_bytes, 0u);
}

TEST(HostArena, MemfdIsShareableByOffset) {
  auto arena = make_arena(16 << 20);
  ASSERT_NE(arena, nullptr);
  auto b = arena->allocate(8192);
  ASSERT_TRUE(b.ok());
  std::memcpy(b->data, "strata", 7);
  // A second mapping of the same fd (as a stratad client would) sees the bytes.
  void* other = mmap(nullptr, arena->capacity(), PROT_READ, MAP_SHARED, arena->fd(), 0);
  ASSERT_NE(other, MAP_FAILED);
  EXPECT_STREQ(static_cast<const char*>(other) + b->offset, "strata");
  munmap(other, arena->capacity());
}

TEST(HostArena, PinsThroughTheDevice) {
  gpu::SimDevice dev;
  auto arena = make_arena(4 << 20, &dev);
  ASSERT_NE(arena, nullptr);
  EXPECT_TRUE(arena->pinned());
  // Already registered: a second registration of the same base is refused.
  EXPECT_FALSE(dev.register_host_memory(arena->base(), 4096).ok());
  arena.reset();
  EXPECT_TRUE(dev.register_host_memory(nullptr, 0).ok()) << "unpinned on destruction";
}

TEST(HostArena, RefusesMoreThanTheMachineHas) {
  auto arena = HostArena::create({.capacity_bytes = uint64_t{1} << 50});
  ASSERT_FALSE(arena.ok());
  EXPECT_EQ(arena.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(arena.status().message().find("usable"), absl::string_view::npos)
      << arena.status().message();
  EXPECT_FALSE(HostArena::create({.capacity_bytes = 0}).ok());
}

}  // namespace
}  // namespace strata::offload
