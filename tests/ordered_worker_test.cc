// OrderedWorker: jobs run one at a time in submission order; the first
// error drops the jobs behind it and is returned (once) by drain().
#include "engine/ordered_worker.h"

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace strata::engine {
namespace {

TEST(OrderedWorkerTest, RunsJobsInOrderOneAtATime) {
  OrderedWorker w;
  std::vector<int> order;  // only the worker thread appends
  std::atomic<int> running{0};
  std::atomic<int> max_running{0};
  for (int i = 0; i < 200; ++i) {
    w.submit([&, i] {
      const int now = ++running;
      max_running = std::max(max_running.load(), now);
      if (i % 50 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));
      order.push_back(i);
      --running;
      return absl::OkStatus();
    });
  }
  ASSERT_TRUE(w.drain().ok());
  ASSERT_EQ(order.size(), 200u);
  for (int i = 0; i < 200; ++i) EXPECT_EQ(order[i], i);
  EXPECT_EQ(max_running.load(), 1);
}

TEST(OrderedWorkerTest, FirstErrorDropsLaterJobsAndIsReturnedOnce) {
  OrderedWorker w;
  std::atomic<int> ran{0};
  w.submit([&] {
    ++ran;
    return absl::OkStatus();
  });
  w.submit([&] {
    ++ran;
    return absl::DataLossError("job 2 failed");
  });
  w.submit([&] {
    ++ran;
    return absl::InternalError("job 3 must not run");
  });
  const absl::Status s = w.drain();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(std::string(s.message()), "job 2 failed");
  EXPECT_EQ(ran.load(), 2);
  // The error is cleared: the worker takes new jobs.
  w.submit([&] {
    ++ran;
    return absl::OkStatus();
  });
  EXPECT_TRUE(w.drain().ok());
  EXPECT_EQ(ran.load(), 3);
}

TEST(OrderedWorkerTest, DestructorRunsWhatWasSubmitted) {
  std::atomic<int> ran{0};
  {
    OrderedWorker w;
    for (int i = 0; i < 10; ++i) {
      w.submit([&] {
        ++ran;
        return absl::OkStatus();
      });
    }
  }
  EXPECT_EQ(ran.load(), 10);
}

}  // namespace
}  // namespace strata::engine
