// Behaviour every Device must share (CUDA semantics), run on SimDevice and,
// when this build has CUDA and the machine a GPU, on CudaDevice.
#include <atomic>
#include <chrono>
#include <cmath>
#include <memory>
#include <thread>
#include <vector>

#include "gpu/device.h"
#include "gpu/sim_device.h"
#include "gtest/gtest.h"

namespace strata::gpu {
namespace {

class DeviceConformance : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (GetParam() == "sim") {
      device_ = std::make_unique<SimDevice>();
      return;
    }
    auto cuda = make_cuda_device(0);
    if (!cuda.ok()) GTEST_SKIP() << "no CUDA device: " << cuda.status().message();
    device_ = std::move(*cuda);
  }
  std::unique_ptr<Device> device_;
};

TEST_P(DeviceConformance, CopiesRoundTripInStreamOrder) {
  Device& dev = *device_;
  auto stream = dev.create_stream();
  ASSERT_TRUE(stream.ok());
  std::vector<float> host(1 << 16), back(1 << 16, 0.f);
  for (size_t i = 0; i < host.size(); ++i) host[i] = static_cast<float>(i) * 0.5f;
  void* d = *dev.allocate(host.size() * 4);
  void* d2 = *dev.allocate(host.size() * 4);
  ASSERT_TRUE(dev.copy_to_device(d, host.data(), host.size() * 4, *stream).ok());
  ASSERT_TRUE(dev.copy_on_device(d2, d, host.size() * 4, *stream).ok());
  ASSERT_TRUE(dev.copy_to_host(back.data(), d2, host.size() * 4, *stream).ok());
  ASSERT_TRUE(dev.synchronize_stream(*stream).ok());
  EXPECT_EQ(back, host);
  EXPECT_EQ(dev.stats().h2d_bytes, host.size() * 4);
  EXPECT_EQ(dev.stats().d2h_bytes, host.size() * 4);
}

// Both devices count the same calls: a host wait per synchronize_*, a
// device-wide synchronisation for synchronize(), allocate() and free().
TEST_P(DeviceConformance, SyncCountersCountTheSynchronisingCalls) {
  Device& dev = *device_;
  StreamId s = *dev.create_stream();
  EventId e = *dev.create_event();
  const SyncCounters before = dev.sync_counters();
  void* d = *dev.allocate(4096);
  ASSERT_TRUE(dev.record_event(e, s).ok());
  ASSERT_TRUE(dev.wait_event(s, e).ok());
  EXPECT_TRUE(dev.query_event(e).ok());
  ASSERT_TRUE(dev.synchronize_event(e).ok());
  ASSERT_TRUE(dev.synchronize_stream(s).ok());
  ASSERT_TRUE(dev.synchronize().ok());
  dev.free(d);
  dev.free(nullptr);  // not a call to the allocator
  const SyncCounters after = dev.sync_counters();
  EXPECT_EQ(after.host_syncs - before.host_syncs, 3u);
  EXPECT_EQ(after.device_syncs - before.device_syncs, 3u);  // synchronize, allocate, free
  EXPECT_EQ(after.allocations - before.allocations, 1u);
  EXPECT_EQ(after.frees - before.frees, 1u);
}

TEST_P(DeviceConformance, EventsOrderWorkAcrossStreams) {
  Device& dev = *device_;
  StreamId producer = *dev.create_stream(), consumer = *dev.create_stream();
  EventId ready = *dev.create_event();
  EXPECT_TRUE(*dev.query_event(ready));  // never recorded: complete
  std::atomic<int> stage{0};
  int observed = -1;
  ASSERT_TRUE(dev.launch_host_function(
                     producer, [] { std::this_thread::sleep_for(std::chrono::milliseconds(20)); })
                  .ok());
  ASSERT_TRUE(dev.launch_host_function(producer, [&] { stage = 1; }).ok());
  ASSERT_TRUE(dev.record_event(ready, producer).ok());
  ASSERT_TRUE(dev.wait_event(consumer, ready).ok());
  ASSERT_TRUE(dev.launch_host_function(consumer, [&] { observed = stage.load(); }).ok());
  ASSERT_TRUE(dev.synchronize_stream(consumer).ok());
  EXPECT_EQ(observed, 1);
  EXPECT_TRUE(*dev.query_event(ready));
  ASSERT_TRUE(dev.synchronize_event(ready).ok());
  EXPECT_FALSE(dev.query_event(12345).ok());
}

TEST_P(DeviceConformance, KernelsMatchCoreConversions) {
  Device& dev = *device_;
  StreamId s = *dev.create_stream();
  const size_t n = 1000;
  std::vector<float> host(n);
  for (size_t i = 0; i < n; ++i) host[i] = std::sin(static_cast<float>(i)) * 3.f;
  auto* d32 = static_cast<float*>(*dev.allocate(n * 4));
  auto* d16 = static_cast<uint16_t*>(*dev.allocate(n * 2));
  auto* norm = static_cast<float*>(*dev.allocate(4));
  auto* flag = static_cast<int32_t*>(*dev.allocate(4));
  ASSERT_TRUE(dev.copy_to_device(d32, host.data(), n * 4, s).ok());
  ASSERT_TRUE(dev.scale(d32, DType::kFloat32, n, 0.5f, s).ok());
  ASSERT_TRUE(dev.cast(d32, DType::kFloat32, d16, DType::kFloat16, n, s).ok());
  ASSERT_TRUE(dev.squared_norm(d16, DType::kFloat16, n, norm, flag, s).ok());
  std::vector<uint16_t> half(n);
  float sum_sq = 0;
  int32_t nonfinite = -1;
  ASSERT_TRUE(dev.copy_to_host(half.data(), d16, n * 2, s).ok());
  ASSERT_TRUE(dev.copy_to_host(&sum_sq, norm, 4, s).ok());
  ASSERT_TRUE(dev.copy_to_host(&nonfinite, flag, 4, s).ok());
  ASSERT_TRUE(dev.synchronize_stream(s).ok());
  double expect = 0;
  for (size_t i = 0; i < n; ++i) {
    EXPECT_EQ(half[i], fp32_to_fp16(host[i] * 0.5f));
    expect += double{fp16_to_fp32(half[i])} * fp16_to_fp32(half[i]);
  }
  EXPECT_NEAR(sum_sq, expect, expect * 1e-5);  // fp32 atomics on CUDA
  EXPECT_EQ(nonfinite, 0);
  // An inf anywhere sets the flag.
  uint16_t inf = 0x7c00;
  ASSERT_TRUE(dev.copy_to_device(d16 + 17, &inf, 2, s).ok());
  ASSERT_TRUE(dev.squared_norm(d16, DType::kFloat16, n, norm, flag, s).ok());
  ASSERT_TRUE(dev.copy_to_host(&nonfinite, flag, 4, s).ok());
  ASSERT_TRUE(dev.synchronize_stream(s).ok());
  EXPECT_EQ(nonfinite, 1);
}

// A failure the caller handled (an allocation refused, an event not ready)
// is not reported again by the next kernel's launch check: on CUDA the
// runtime keeps it as the thread's last error until someone clears it.
TEST_P(DeviceConformance, HandledFailuresDoNotFailTheNextKernel) {
  Device& dev = *device_;
  StreamId s = *dev.create_stream();
  const size_t n = 256;
  auto* x = static_cast<float*>(*dev.allocate(n * 4));
  auto* y = static_cast<uint16_t*>(*dev.allocate(n * 2));
  auto huge = dev.allocate(size_t{1} << 60);
  ASSERT_FALSE(huge.ok());
  EXPECT_EQ(huge.status().code(), absl::StatusCode::kResourceExhausted) << huge.status();
  EXPECT_TRUE(dev.scale(x, DType::kFloat32, n, 2.f, s).ok()) << "after a refused allocation";

  EventId busy = *dev.create_event();
  ASSERT_TRUE(dev.launch_host_function(
                     s, [] { std::this_thread::sleep_for(std::chrono::milliseconds(100)); })
                  .ok());
  ASSERT_TRUE(dev.record_event(busy, s).ok());
  auto ready = dev.query_event(busy);
  ASSERT_TRUE(ready.ok()) << ready.status();
  EXPECT_FALSE(*ready);
  StreamId other = *dev.create_stream();
  EXPECT_TRUE(dev.cast(x, DType::kFloat32, y, DType::kFloat16, n, other).ok())
      << "after an event query that was not ready";
  EXPECT_TRUE(dev.synchronize().ok());
}

INSTANTIATE_TEST_SUITE_P(Devices, DeviceConformance, ::testing::Values("sim", "cuda"),
                         [](const auto& info) { return info.param; });

TEST(CudaDevice, MissingGpuIsAClearError) {
  auto cuda = make_cuda_device(0);
  if (cuda.ok()) GTEST_SKIP() << "a GPU is present: " << (*cuda)->name();
  EXPECT_EQ(cuda.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(cuda.status().message().find("--device cpu"), absl::string_view::npos)
      << cuda.status().message();
}

}  // namespace
}  // namespace strata::gpu
