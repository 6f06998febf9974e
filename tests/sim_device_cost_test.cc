// SimDevice's cost model: each charge is applied where CUDA would apply it,
// and the sync counters count the calls. Charges are set large (20 ms and
// more) so that a busy 2-core machine cannot blur them: times are checked
// from below against the model, from above only against a charge of 100 ms
// or more, and ordering (did the call wait for the stream?) is checked with
// events, not with clocks.
#include <chrono>
#include <vector>

#include "core/trace.h"
#include "gpu/sim_device.h"
#include "gtest/gtest.h"

namespace strata::gpu {
namespace {

constexpr double kCharge = 0.020;  // seconds

double seconds_since(int64_t t0) { return (monotonic_ns() - t0) * 1e-9; }

// Only the costs a test names are charged.
SimDeviceCosts only(SimDeviceCosts c) {
  c.enabled = true;
  return c;
}
SimDeviceCosts none() {
  return {
      .host_sync_us = 0, .allocate_us = 0, .free_us = 0, .pageable_fraction = 1, .launch_us = 0};
}

TEST(SimDeviceCosts, DefaultsAreOnWithThePublicFigures) {
  const SimDeviceCosts c;
  EXPECT_TRUE(c.enabled);
  EXPECT_GE(c.host_sync_us, 5);
  EXPECT_LE(c.host_sync_us, 10);
  EXPECT_GE(c.allocate_us, 10);
  EXPECT_GE(c.free_us, 10);
  EXPECT_LE(c.pageable_fraction, 0.5);
  EXPECT_GE(c.launch_us, 3);
  EXPECT_LE(c.launch_us, 5);
}

// Host mode (the C API's and Python's host device, stratad's sessions)
// stands in for no GPU: data moves, nothing is charged.
TEST(SimDeviceCosts, HostModeChargesNothingAndMovesData) {
  const SimDeviceOptions o = host_mode_options();
  EXPECT_FALSE(o.costs.enabled);
  EXPECT_TRUE(o.move_data);
  EXPECT_EQ(o.copy_latency_us, 0);
  EXPECT_GE(o.h2d_gb_per_s, 1e6);
  EXPECT_GE(o.d2h_gb_per_s, 1e6);
  EXPECT_EQ(o.capacity_bytes, uint64_t{1} << 30);
  EXPECT_EQ(host_mode_options(uint64_t{1} << 50).capacity_bytes, uint64_t{1} << 50);
}

TEST(SimDeviceCosts, EachHostSynchronisationCostsARoundTrip) {
  // Larger than kCharge: the calls that must not be charged are timed from
  // above against it.
  constexpr double kSync = 0.2;
  SimDeviceCosts c = none();
  c.host_sync_us = kSync * 1e6;
  SimDevice dev({.costs = only(c)});
  StreamId s = *dev.create_stream();
  EventId e = *dev.create_event();
  ASSERT_TRUE(dev.record_event(e, s).ok());
  const SyncCounters before = dev.sync_counters();

  int64_t t0 = monotonic_ns();
  ASSERT_TRUE(dev.synchronize_stream(s).ok());
  EXPECT_GE(seconds_since(t0), kSync);
  t0 = monotonic_ns();
  ASSERT_TRUE(dev.synchronize_event(e).ok());
  EXPECT_GE(seconds_since(t0), kSync);
  t0 = monotonic_ns();
  ASSERT_TRUE(dev.synchronize().ok());
  EXPECT_GE(seconds_since(t0), kSync);

  const SyncCounters after = dev.sync_counters();
  EXPECT_EQ(after.host_syncs - before.host_syncs, 3u);
  EXPECT_EQ(after.device_syncs - before.device_syncs, 1u);  // synchronize() only
  // Work that does not wait on the host is not charged or counted.
  t0 = monotonic_ns();
  ASSERT_TRUE(dev.record_event(e, s).ok());
  ASSERT_TRUE(dev.wait_event(s, e).ok());
  (void)dev.query_event(e);
  EXPECT_LT(seconds_since(t0), kSync);
  EXPECT_EQ(dev.sync_counters().host_syncs, after.host_syncs);
}

// cudaMalloc / cudaFree wait for every stream: after allocate() returns, work
// queued before it has finished; with the cost model off it has not.
TEST(SimDeviceCosts, AllocateAndFreeSynchroniseTheWholeDevice) {
  for (bool charged : {true, false}) {
    SimDeviceCosts c = none();
    c.allocate_us = c.free_us = kCharge * 1e6;
    c.enabled = charged;
    SimDevice dev({.costs = c});
    StreamId busy = *dev.create_stream();
    EventId done = *dev.create_event();
    void* kept = *dev.allocate(1024);
    const SyncCounters before = dev.sync_counters();

    // From before the launch: the kernel's modelled time starts when it is
    // enqueued, which may be well before a clock read after it.
    int64_t t0 = monotonic_ns();
    ASSERT_TRUE(dev.launch_timed_compute(busy, 0.3).ok());
    ASSERT_TRUE(dev.record_event(done, busy).ok());
    auto p = dev.allocate(4096);
    ASSERT_TRUE(p.ok());
    const double took = seconds_since(t0);
    EXPECT_EQ(*dev.query_event(done), charged) << (charged ? "charged" : "free");
    if (charged) EXPECT_GE(took, 0.3 + kCharge);

    t0 = monotonic_ns();
    ASSERT_TRUE(dev.launch_timed_compute(busy, 0.3).ok());
    ASSERT_TRUE(dev.record_event(done, busy).ok());
    dev.free(*p);
    EXPECT_EQ(*dev.query_event(done), charged);
    if (charged) EXPECT_GE(seconds_since(t0), 0.3 + kCharge);

    // Counted either way.
    const SyncCounters after = dev.sync_counters();
    EXPECT_EQ(after.allocations - before.allocations, 1u);
    EXPECT_EQ(after.frees - before.frees, 1u);
    EXPECT_EQ(after.device_syncs - before.device_syncs, 2u);
    EXPECT_EQ(after.host_syncs, before.host_syncs);
    ASSERT_TRUE(dev.synchronize().ok());
    dev.free(kept);
  }
}

// Copies from or to memory that was not registered run at pageable_fraction
// of the link; a range inside a registered region counts as pinned.
TEST(SimDeviceCosts, PageableCopiesAreSlowerThanPinnedOnes) {
  SimDeviceCosts c = none();
  c.pageable_fraction = 0.2;
  SimDevice dev({.h2d_gb_per_s = 1.0,
                 .d2h_gb_per_s = 1.0,
                 .copy_latency_us = 0,
                 .move_data = false,
                 .costs = only(c)});
  StreamId s = *dev.create_stream();
  const size_t bytes = 50'000'000;  // 50 ms pinned, 250 ms pageable
  std::vector<char> pinned(2 * bytes), pageable(bytes);
  ASSERT_TRUE(dev.register_host_memory(pinned.data(), pinned.size()).ok());
  void* d = *dev.allocate(bytes);
  auto time_copy = [&](bool to_device, void* host) {
    const int64_t t0 = monotonic_ns();
    EXPECT_TRUE(
        (to_device ? dev.copy_to_device(d, host, bytes, s) : dev.copy_to_host(host, d, bytes, s))
            .ok());
    EXPECT_TRUE(dev.synchronize_stream(s).ok());
    return seconds_since(t0);
  };
  for (bool to_device : {true, false}) {
    const double slow = time_copy(to_device, pageable.data());
    const double fast = time_copy(to_device, pinned.data() + bytes / 2);  // inside the region
    EXPECT_GE(slow, bytes / 0.2e9) << (to_device ? "H2D" : "D2H");
    EXPECT_GE(fast, bytes / 1e9);
    EXPECT_LT(fast, bytes / 0.2e9) << "a registered range must copy at the pinned rate";
  }
  // Straddling the registered region's end: not all of it is pinned.
  const double straddle = time_copy(true, pinned.data() + pinned.size() - bytes / 2);
  EXPECT_GE(straddle, bytes / 0.2e9);
  ASSERT_TRUE(dev.unregister_host_memory(pinned.data()).ok());
  EXPECT_GE(time_copy(true, pinned.data()), bytes / 0.2e9);
}

TEST(SimDeviceCosts, EveryLaunchPaysTheOverheadOnTheComputeEngine) {
  constexpr double kLaunch = 0.1;  // large: issuing is timed from above against it
  SimDeviceCosts c = none();
  c.launch_us = kLaunch * 1e6;
  SimDevice dev({.costs = only(c)});
  StreamId s = *dev.create_stream();
  void* x = *dev.allocate(64 * sizeof(float));
  void* out = *dev.allocate(256);
  int64_t t0 = monotonic_ns();
  ASSERT_TRUE(dev.scale(x, DType::kFloat32, 64, 2.0f, s).ok());
  ASSERT_TRUE(dev.cast(x, DType::kFloat32, x, DType::kFloat32, 64, s).ok());
  ASSERT_TRUE(dev.squared_norm(x, DType::kFloat32, 64, static_cast<float*>(out),
                               reinterpret_cast<int32_t*>(static_cast<char*>(out) + 128), s)
                  .ok());
  ASSERT_TRUE(dev.launch_timed_compute(s, 0).ok());
  const double issued = seconds_since(t0);
  ASSERT_TRUE(dev.synchronize_stream(s).ok());
  EXPECT_LT(issued, kLaunch) << "launches stay asynchronous for the caller";
  EXPECT_GE(seconds_since(t0), 4 * kLaunch);
  // Launches on two streams share the compute engine, so their overheads add up.
  StreamId s2 = *dev.create_stream();
  t0 = monotonic_ns();
  ASSERT_TRUE(dev.launch_timed_compute(s, 0).ok());
  ASSERT_TRUE(dev.launch_timed_compute(s2, 0).ok());
  ASSERT_TRUE(dev.synchronize().ok());
  EXPECT_GE(seconds_since(t0), 2 * kLaunch);
}

// With the cost model off nothing is charged, and the counters still count.
TEST(SimDeviceCosts, OffChargesNothingButStillCounts) {
  SimDeviceCosts c;  // the defaults, scaled up so a charge could not hide
  c.enabled = false;
  c.host_sync_us = c.allocate_us = c.free_us = c.launch_us = 1e6;
  SimDevice dev({.costs = c});
  StreamId s = *dev.create_stream();
  const int64_t t0 = monotonic_ns();
  void* p = *dev.allocate(4096);
  ASSERT_TRUE(dev.scale(p, DType::kFloat32, 16, 1.0f, s).ok());
  ASSERT_TRUE(dev.synchronize_stream(s).ok());
  ASSERT_TRUE(dev.synchronize().ok());
  dev.free(p);
  EXPECT_LT(seconds_since(t0), 0.5);
  const SyncCounters n = dev.sync_counters();
  EXPECT_EQ(n.host_syncs, 2u);
  EXPECT_EQ(n.device_syncs, 3u);  // synchronize, allocate, free
  EXPECT_EQ(n.allocations, 1u);
  EXPECT_EQ(n.frees, 1u);
}

}  // namespace
}  // namespace strata::gpu
