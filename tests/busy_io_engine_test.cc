// BusyIoEngine over the thread-pool engine: requests go through unchanged
// (the data round-trips), reads and writes are timed apart and together,
// the busy time lies within the wall time it spans, detached requests are
// timed until their callback, and a request the engine refuses leaves
// nothing in flight.
#include "offload/busy_io_engine.h"

#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>

#include "core/trace.h"
#include "gtest/gtest.h"
#include "swap/aligned_buffer.h"

namespace strata::offload {
namespace {

class BusyIoEngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           ("busy_io_" + std::to_string(getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
    swap::IoEngineOptions o;
    o.kind = swap::IoEngineKind::kThreads;
    o.allow_buffered = true;  // TempDir may be tmpfs
    o.block_size = 64 << 10;
    auto e = swap::make_io_engine(o);
    ASSERT_TRUE(e.ok()) << e.status();
    inner_ = std::move(*e);
    busy_ = std::make_unique<BusyIoEngine>(inner_.get());
    auto f = busy_->open((dir_ / "a.bin").string(), {.create = true});
    ASSERT_TRUE(f.ok()) << f.status();
    file_ = *f;
  }
  void TearDown() override {
    busy_.reset();
    inner_.reset();
    std::filesystem::remove_all(dir_);
  }

  std::filesystem::path dir_;
  std::unique_ptr<swap::IoEngine> inner_;
  std::unique_ptr<BusyIoEngine> busy_;
  swap::FileId file_ = -1;
};

TEST_F(BusyIoEngineTest, TimesReadsAndWritesWithinTheirWallTime) {
  const size_t n = 4 << 20;
  swap::AlignedBuffer out(n), in(n);
  for (size_t i = 0; i < n; ++i) out.data()[i] = static_cast<char>(i * 7);
  EXPECT_EQ(busy_->name(), "threads");

  const int64_t t0 = monotonic_ns();
  ASSERT_TRUE(busy_->write(file_, 0, out.data(), n).ok());
  const int64_t t1 = monotonic_ns();
  const IoBusyTimes w = busy_->busy();
  EXPECT_GT(w.write_ns, 0);
  EXPECT_EQ(w.read_ns, 0);
  EXPECT_EQ(w.any_ns, w.write_ns);
  EXPECT_LE(w.write_ns, t1 - t0);

  ASSERT_TRUE(busy_->read(file_, 0, in.data(), n).ok());
  const int64_t t2 = monotonic_ns();
  EXPECT_EQ(std::memcmp(out.data(), in.data(), n), 0);
  const IoBusyTimes r = busy_->busy();
  EXPECT_EQ(r.write_ns, w.write_ns);
  EXPECT_GT(r.read_ns, 0);
  EXPECT_LE(r.read_ns, t2 - t1);
  EXPECT_EQ(r.any_ns, r.read_ns + r.write_ns);  // they never overlapped

  // Nothing in flight: the counters stand still.
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  const IoBusyTimes idle = busy_->busy();
  EXPECT_EQ(idle.any_ns, r.any_ns);
}

TEST_F(BusyIoEngineTest, DetachedRequestsCountUntilTheirCallback) {
  const size_t n = 1 << 20;
  swap::AlignedBuffer out(n);
  std::atomic<int> done{0};
  const int64_t t0 = monotonic_ns();
  for (int i = 0; i < 4; ++i) {
    auto t = busy_->submit({.op = swap::IoOp::kWrite,
                            .file = file_,
                            .offset = i * n,
                            .buffer = out.data(),
                            .length = n,
                            .on_complete = [&](const absl::Status& s) {
                              EXPECT_TRUE(s.ok()) << s;
                              done.fetch_add(1);
                            }});
    ASSERT_TRUE(t.ok()) << t.status();
  }
  ASSERT_TRUE(busy_->drain().ok());
  const int64_t t1 = monotonic_ns();
  EXPECT_EQ(done.load(), 4);
  const IoBusyTimes b = busy_->busy();
  EXPECT_GT(b.write_ns, 0);
  EXPECT_LE(b.write_ns, t1 - t0);  // four requests in flight together count once
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_EQ(busy_->busy().write_ns, b.write_ns);
}

TEST_F(BusyIoEngineTest, ARefusedRequestLeavesNothingInFlight) {
  swap::AlignedBuffer buf(4096);
  auto t =
      busy_->submit({.op = swap::IoOp::kRead, .file = 12345, .buffer = buf.data(), .length = 4096});
  EXPECT_FALSE(t.ok());
  // The refused request counted only the submit() call that refused it.
  const IoBusyTimes b = busy_->busy();
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_EQ(busy_->busy().read_ns, b.read_ns);
  EXPECT_EQ(busy_->busy().any_ns, b.any_ns);
  EXPECT_LT(b.any_ns, 5'000'000);
}

}  // namespace
}  // namespace strata::offload
