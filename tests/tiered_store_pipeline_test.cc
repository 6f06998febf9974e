// The TieredStore's NVMe pipeline: write-behind of evicted dirty host copies
// and read-ahead of the trace's next tensors, several tensors in flight at
// once (offload/tiered_store.h), over one swap path and striped over two.
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gpu/sim_device.h"
#include "gtest/gtest.h"
#include "offload/tiered_store.h"
#include "swap/io_config.h"
#include "swap/io_engine.h"
#include "tests/gated_io_engine.h"

namespace strata::offload {
namespace {

using strata::testing::GatedIoEngine;
using ::testing::HasSubstr;

constexpr uint64_t kNumel = 32 * 1024;  // 128 KiB of fp32 per tensor
constexpr uint64_t kBytes = kNumel * 4;

class TieredStorePipelineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           ("tiered_store_pipeline_" + std::to_string(getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override {
    gate_.reset();
    io_.reset();
    std::filesystem::remove_all(dir_);
  }

  // An engine over `dirs` stripe directories, with small blocks so every
  // tensor is many requests, behind a gate.
  void make_io(const std::vector<std::string>& dirs) {
    config::AioConfig aio;
    aio.block_size = 16 * 1024;
    aio.queue_depth = 4;
    auto o = swap::io_engine_options(aio, dirs);
    ASSERT_TRUE(o.ok()) << o.status();
    o->allow_buffered = true;  // tmpfs TempDir on some machines
    auto engine = swap::make_io_engine(*o);
    ASSERT_TRUE(engine.ok()) << engine.status();
    io_ = std::move(*engine);
    gate_ = std::make_unique<GatedIoEngine>(*io_);
  }

  std::unique_ptr<TieredStore> make_store(uint64_t host_tensors, int n,
                                          const std::vector<std::string>& swap_paths) {
    TieredStore::Options o;
    o.device = &device_;
    o.host_budget_bytes = host_tensors * kBytes;
    o.io = gate_.get();
    o.swap_paths = swap_paths;
    o.prefetch_window_bytes = 3 * kBytes;
    auto store = TieredStore::create(o);
    EXPECT_TRUE(store.ok()) << store.status();
    if (!store.ok()) return nullptr;
    for (int i = 0; i < n; ++i) {
      auto id = (*store)->register_tensor(
          {"s" + std::to_string(i), kNumel, DType::kFloat32, TensorRole::kExpAvg, Tier::kNvme});
      EXPECT_TRUE(id.ok()) << id.status();
    }
    EXPECT_TRUE((*store)->finalize().ok());
    return std::move(*store);
  }

  static float value(TensorId id, int version, uint64_t i) {
    return static_cast<float>(id * 100000 + version * 100) + static_cast<float>(i % 97);
  }
  static bool holds(const TensorView& v, TensorId id, int version) {
    const auto* p = static_cast<const float*>(v.data);
    for (uint64_t i = 0; i < kNumel; ++i) {
      if (p[i] != value(id, version, i)) return false;
    }
    return true;
  }
  static void fill(const TensorView& v, TensorId id, int version) {
    auto* p = static_cast<float*>(v.data);
    for (uint64_t i = 0; i < kNumel; ++i) p[i] = value(id, version, i);
  }

  static uint64_t pages_with_data(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    std::vector<char> page(4096);
    uint64_t n = 0;
    while (in.read(page.data(), static_cast<std::streamsize>(page.size()))) {
      for (char c : page) {
        if (c != 0) {
          ++n;
          break;
        }
      }
    }
    return n;
  }

  // One optimizer-like pass: each tensor read, checked, rewritten dirty.
  static void update_all(TieredStore& store, int n, int version) {
    for (TensorId id = 0; id < static_cast<TensorId>(n); ++id) {
      auto v = store.acquire(id, Tier::kHost, version == 1 ? Access::kWrite : Access::kReadWrite);
      ASSERT_TRUE(v.ok()) << v.status();
      if (version > 1) {
        ASSERT_TRUE(holds(*v, id, version - 1)) << "tensor " << id;
      }
      fill(*v, id, version);
      ASSERT_TRUE(store.release(id, Tier::kHost, /*dirty=*/true).ok());
    }
  }

  std::filesystem::path dir_;
  gpu::SimDevice device_{{.copy_latency_us = 0}};
  std::unique_ptr<swap::IoEngine> io_;
  std::unique_ptr<GatedIoEngine> gate_;
};

// Steps with a host tier of 4 tensors over 12: every step writes behind and
// reads ahead most of them, and every read sees the last version written.
TEST_F(TieredStorePipelineTest, DataRoundTripsUnderEvictionPressure) {
  make_io({dir_.string()});
  auto store = make_store(4, 12, {(dir_ / "a.swp").string()});
  ASSERT_NE(store, nullptr);
  for (int version = 1; version <= 5; ++version) {
    store->begin_step();
    update_all(*store, 12, version);
    store->end_step();
  }
  ASSERT_TRUE(store->flush().ok());
  for (TensorId id = 0; id < 12; ++id) {
    auto v = store->acquire(id, Tier::kHost, Access::kRead);
    ASSERT_TRUE(v.ok()) << v.status();
    EXPECT_TRUE(holds(*v, id, 5)) << "tensor " << id;
    ASSERT_TRUE(store->release(id, Tier::kHost, false).ok());
  }
  const StoreStats st = store->stats();
  EXPECT_LE(st.tiers[1].peak_bytes, 4 * kBytes);
  EXPECT_GT(st.tiers[1].prefetches, 0u) << "the trace's next tensors were read ahead";
  EXPECT_GT(st.tiers[2].bytes_in, 0u);
  EXPECT_TRUE(store->background_error().ok()) << store->background_error();
  EXPECT_EQ(gate_->torn_writes(), 0);
}

// Acquires from two threads over disjoint tensors, with random reads and
// writes, while the pipeline moves the rest: every byte read is the last
// written.
TEST_F(TieredStorePipelineTest, ConcurrentAcquiresSeeTheirLastWrites) {
  make_io({dir_.string()});
  constexpr int kN = 16;
  auto store = make_store(5, kN, {(dir_ / "a.swp").string()});
  ASSERT_NE(store, nullptr);
  update_all(*store, kN, 1);
  std::vector<int> version(kN, 1);
  auto worker = [&](int first, uint32_t seed) {
    std::mt19937 rng(seed);
    for (int op = 0; op < 120; ++op) {
      const TensorId id = static_cast<TensorId>(first + 2 * static_cast<int>(rng() % (kN / 2)));
      const bool write = rng() % 2 == 0;
      auto v = store->acquire(id, Tier::kHost, write ? Access::kReadWrite : Access::kRead);
      ASSERT_TRUE(v.ok()) << v.status();
      ASSERT_TRUE(holds(*v, id, version[id])) << "tensor " << id << " op " << op;
      if (write) fill(*v, id, ++version[id]);
      ASSERT_TRUE(store->release(id, Tier::kHost, write).ok());
    }
  };
  std::thread even(worker, 0, 1u);
  std::thread odd(worker, 1, 2u);
  even.join();
  odd.join();
  ASSERT_TRUE(store->flush().ok());
  for (TensorId id = 0; id < kN; ++id) {
    auto v = store->acquire(id, Tier::kHost, Access::kRead);
    ASSERT_TRUE(v.ok()) << v.status();
    EXPECT_TRUE(holds(*v, id, version[id])) << "tensor " << id;
    ASSERT_TRUE(store->release(id, Tier::kHost, false).ok());
  }
  EXPECT_TRUE(store->background_error().ok()) << store->background_error();
}

// Room for a tensor four times the size of the dirty ones that fill the host
// tier: all four are written behind at once, the acquire waits until their
// writes complete (no block is reused before), and nothing is torn.
TEST_F(TieredStorePipelineTest, HostBlocksAreReusedOnlyAfterTheirWritesComplete) {
  make_io({dir_.string()});
  TieredStore::Options o;
  o.host_budget_bytes = 4 * kBytes;
  o.io = gate_.get();
  o.swap_paths = {(dir_ / "a.swp").string()};
  auto created = TieredStore::create(o);
  ASSERT_TRUE(created.ok()) << created.status();
  TieredStore& store = **created;
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(store
                    .register_tensor({"small" + std::to_string(i), kNumel, DType::kFloat32,
                                      TensorRole::kExpAvg, Tier::kNvme})
                    .ok());
  }
  auto big =
      store.register_tensor({"big", 4 * kNumel, DType::kFloat32, TensorRole::kExpAvg, Tier::kNvme});
  ASSERT_TRUE(big.ok());
  ASSERT_TRUE(store.finalize().ok());
  update_all(store, 4, 1);

  gate_->hold_writes(true);
  gate_->reset_counts();
  auto pending = std::async(std::launch::async, [&] {
    auto v = store.acquire(*big, Tier::kHost, Access::kWrite);
    if (v.ok()) std::memset(v->data, 0x5a, v->bytes);  // reuses the freed blocks
    return v.status();
  });
  // All four writes go out together; the acquire waits for them.
  for (int i = 0; i < 200 && gate_->held() < 4; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(gate_->held(), 4);
  EXPECT_EQ(gate_->max_writes_in_flight(), 4);
  EXPECT_EQ(pending.wait_for(std::chrono::milliseconds(100)), std::future_status::timeout)
      << "the acquire went on while its room was still being written";
  for (TensorId id = 0; id < 4; ++id) {
    EXPECT_EQ(store.residency(id, Tier::kHost), Residency::kWriting);
  }
  EXPECT_LE(store.stats().tiers[1].used_bytes, 4 * kBytes);
  gate_->hold_writes(false);
  gate_->release_all();
  ASSERT_TRUE(pending.get().ok());
  EXPECT_EQ(gate_->torn_writes(), 0);
  EXPECT_LE(store.stats().tiers[1].peak_bytes, 4 * kBytes);
  ASSERT_TRUE(store.release(*big, Tier::kHost, true).ok());
  for (TensorId id = 0; id < 4; ++id) {
    auto v = store.acquire(id, Tier::kHost, Access::kRead);
    ASSERT_TRUE(v.ok()) << v.status();
    EXPECT_TRUE(holds(*v, id, 1)) << "tensor " << id;
    ASSERT_TRUE(store.release(id, Tier::kHost, false).ok());
  }
}

// After the trace is recorded, begin_step reads the window's tensors ahead:
// their reads are all in flight at once, and the acquires then find them.
TEST_F(TieredStorePipelineTest, ReadAheadKeepsSeveralTensorsInFlight) {
  make_io({dir_.string()});
  auto store = make_store(6, 12, {(dir_ / "a.swp").string()});
  ASSERT_NE(store, nullptr);
  store->begin_step();
  update_all(*store, 12, 1);
  store->end_step();
  // The host tier now holds the last tensors; the first three are on disk.
  gate_->hold_reads(true);
  gate_->reset_counts();
  store->begin_step();
  for (int i = 0; i < 200 && gate_->held() < 3; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_GE(gate_->max_reads_in_flight(), 3) << "the window is three tensors";
  EXPECT_EQ(store->residency(0, Tier::kHost), Residency::kLoading);
  gate_->hold_reads(false);
  gate_->release_all();
  for (TensorId id = 0; id < 3; ++id) {
    auto v = store->acquire(id, Tier::kHost, Access::kRead);
    ASSERT_TRUE(v.ok()) << v.status();
    EXPECT_TRUE(holds(*v, id, 1));
    ASSERT_TRUE(store->release(id, Tier::kHost, false).ok());
  }
  EXPECT_GE(store->stats().tiers[1].prefetches, 3u);
  for (TensorId id = 3; id < 12; ++id) {
    auto v = store->acquire(id, Tier::kHost, Access::kRead);
    ASSERT_TRUE(v.ok()) << v.status();
    EXPECT_TRUE(holds(*v, id, 1)) << "tensor " << id;
    ASSERT_TRUE(store->release(id, Tier::kHost, false).ok());
  }
  store->end_step();
  EXPECT_TRUE(store->background_error().ok()) << store->background_error();
}

// A write-behind that fails keeps the data (the host copy stays dirty),
// surfaces in background_error() naming the tensor and the swap file, fails
// the acquire that needed the room, and the next try succeeds.
TEST_F(TieredStorePipelineTest, WriteBehindErrorSurfacesWithTheFileNamed) {
  make_io({dir_.string()});
  const std::string swap_path = (dir_ / "a.swp").string();
  auto store = make_store(2, 4, {swap_path});
  ASSERT_NE(store, nullptr);
  update_all(*store, 2, 1);  // s0, s1 dirty on the host
  gate_->fail_writes(true);
  auto v = store->acquire(2, Tier::kHost, Access::kWrite);
  EXPECT_FALSE(v.ok());
  const absl::Status bg = store->background_error();
  EXPECT_FALSE(bg.ok());
  EXPECT_THAT(bg.message(), HasSubstr(swap_path));
  EXPECT_THAT(bg.message(), HasSubstr("write-behind of \"s"));
  EXPECT_THAT(bg.message(), HasSubstr("injected write error"));
  EXPECT_EQ(store->residency(0, Tier::kHost), Residency::kDirty);
  gate_->fail_writes(false);
  v = store->acquire(2, Tier::kHost, Access::kWrite);
  ASSERT_TRUE(v.ok()) << v.status();
  fill(*v, 2, 1);
  ASSERT_TRUE(store->release(2, Tier::kHost, true).ok());
  ASSERT_TRUE(store->flush().ok());
  for (TensorId id = 0; id < 3; ++id) {
    auto r = store->acquire(id, Tier::kHost, Access::kRead);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_TRUE(holds(*r, id, 1)) << "tensor " << id;
    ASSERT_TRUE(store->release(id, Tier::kHost, false).ok());
  }
}

// A delayed update's acquires run on across step boundaries, each step
// cutting the cycle at another tensor, some between end_step and the next
// begin_step, and a skipped step has none: the trace stays (no re-recording,
// no fallback to LRU) and the read-ahead keeps finding the next tensors.
TEST_F(TieredStorePipelineTest, TraceSurvivesACycleCrossingStepBoundaries) {
  make_io({dir_.string()});
  constexpr int kN = 10;
  auto store = make_store(4, kN, {(dir_ / "a.swp").string()});
  ASSERT_NE(store, nullptr);
  update_all(*store, kN, 1);
  std::vector<int> version(kN, 1);
  uint64_t next = 0;  // the stream's next tensor, cyclic
  auto run = [&](int count) {
    for (int i = 0; i < count; ++i, ++next) {
      const TensorId id = static_cast<TensorId>(next % kN);
      auto v = store->acquire(id, Tier::kHost, Access::kReadWrite);
      ASSERT_TRUE(v.ok()) << v.status();
      ASSERT_TRUE(holds(*v, id, version[id])) << "tensor " << id;
      fill(*v, id, ++version[id]);
      ASSERT_TRUE(store->release(id, Tier::kHost, true).ok());
    }
  };
  // Per step: acquires inside it, then between it and the next one. The
  // first step and its tail record 6 of the 10: the cycle grows by the 4
  // that come next.
  const int inside[] = {4, 7, 9, 0, 6, 8, 3, 10, 5, 7, 6, 9};
  const int between[] = {2, 5, 2, 0, 4, 1, 6, 0, 5, 3, 4, 2};
  for (int step = 0; step < 12; ++step) {
    store->begin_step();
    run(inside[step]);
    store->end_step();
    run(between[step]);
  }
  // The read-ahead runs on the mover threads, and on a loaded machine the
  // acquires above may win every race: paced acquires give it the time.
  for (int i = 0; i < 200 && store->stats().tiers[1].prefetches == 0; ++i) {
    run(1);
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  const StoreStats st = store->stats();
  EXPECT_EQ(st.trace_changes, 0u);
  EXPECT_EQ(st.trace_length, static_cast<uint64_t>(kN));
  EXPECT_GT(st.tiers[1].prefetches, 0u);
  EXPECT_TRUE(store->background_error().ok()) << store->background_error();
  ASSERT_TRUE(store->flush().ok());
}

// nvme_path as a list: one swap member file per directory, the store's
// tensors striped over both, each directory holding its share.
TEST_F(TieredStorePipelineTest, StripesOverTwoDirectories) {
  const std::filesystem::path d0 = dir_ / "nvme0", d1 = dir_ / "nvme1";
  std::filesystem::create_directories(d0);
  std::filesystem::create_directories(d1);
  make_io({d0.string(), d1.string()});
  ASSERT_EQ(io_->options().paths.size(), 2u);
  auto store = make_store(4, 12, {(d0 / "s.swp").string(), (d1 / "s.swp").string()});
  ASSERT_NE(store, nullptr);
  for (int version = 1; version <= 3; ++version) {
    store->begin_step();
    update_all(*store, 12, version);
    store->end_step();
  }
  ASSERT_TRUE(store->flush().ok());
  for (TensorId id = 0; id < 12; ++id) {
    auto v = store->acquire(id, Tier::kHost, Access::kRead);
    ASSERT_TRUE(v.ok()) << v.status();
    EXPECT_TRUE(holds(*v, id, 3)) << "tensor " << id;
    ASSERT_TRUE(store->release(id, Tier::kHost, false).ok());
  }
  // 12 tensors of 128 KiB in 16 KiB stripes: half of the data in each file
  // (the files are preallocated, so count the pages that hold data).
  const uint64_t half_pages = 12 * kBytes / 2 / 4096;
  EXPECT_GE(pages_with_data(d0 / "s.swp"), half_pages);
  EXPECT_GE(pages_with_data(d1 / "s.swp"), half_pages);
  EXPECT_TRUE(store->background_error().ok()) << store->background_error();
}

}  // namespace
}  // namespace strata::offload
