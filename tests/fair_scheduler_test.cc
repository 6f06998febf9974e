// daemon::FairScheduler (deficit round robin across sessions) and
// daemon::plan_pools / OptimizerPools (one pool per NUMA node) on fake
// topologies.
#include "daemon/fair_scheduler.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "daemon/optimizer_pools.h"

namespace strata::daemon {
namespace {

void spin_for(std::chrono::microseconds d) {
  const auto end = std::chrono::steady_clock::now() + d;
  while (std::chrono::steady_clock::now() < end) {
  }
}

// Two sessions keep jobs queued for `seconds`; returns the bytes each got.
// Session A's jobs cost `cost_a` bytes and take `cost_a` ns of work, B's
// likewise, so fairness in bytes is fairness in pool time. Each session
// submits from one thread, one job at a time, as a stratad connection does.
// The anticipation is longer than stratad's default so that a loaded test
// machine's scheduling delays (a session's thread not back within 3 ms) do not
// decide the shares: what is tested is the scheduler's accounting.
std::pair<uint64_t, uint64_t> contend(uint64_t cost_a, uint64_t cost_b, double seconds) {
  FairScheduler sched(std::chrono::milliseconds(50));
  const auto a = sched.add_session(), b = sched.add_session();
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> done_a{0}, done_b{0};
  auto worker = [&](FairScheduler::SessionId id, uint64_t cost, std::atomic<uint64_t>* done) {
    while (!stop.load()) {
      EXPECT_TRUE(sched
                      .run(id, cost,
                           [&] {
                             spin_for(std::chrono::microseconds(cost / 1000));
                             return absl::OkStatus();
                           })
                      .ok());
      done->fetch_add(cost);
    }
  };
  std::thread ta(worker, a, cost_a, &done_a), tb(worker, b, cost_b, &done_b);
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop.store(true);
  ta.join();
  tb.join();
  EXPECT_EQ(sched.charged_bytes(a), done_a.load());
  return {done_a.load(), done_b.load()};
}

TEST(FairScheduler, EqualSessionsShareWithinTenPercent) {
  const auto [a, b] = contend(2'000'000, 2'000'000, 1.0);
  ASSERT_GT(a + b, 0u);
  const double share = double(a) / double(a + b);
  std::printf("equal jobs: A %.1f%%, B %.1f%% of the pool\n", 100 * share, 100 * (1 - share));
  EXPECT_NEAR(share, 0.5, 0.05);  // each within 10% of its half
}

TEST(FairScheduler, SmallJobsGetTheSameBytesAsLargeOnes) {
  // A's buckets are 4x B's: B runs about 4 jobs per A job, same bytes.
  const auto [a, b] = contend(4'000'000, 1'000'000, 1.0);
  const double share = double(a) / double(a + b);
  std::printf("4:1 jobs: A %.1f%%, B %.1f%% of the pool\n", 100 * share, 100 * (1 - share));
  EXPECT_NEAR(share, 0.5, 0.05);
}

TEST(FairScheduler, OneJobAtATimeAndAloneRunsAtOnce) {
  FairScheduler sched;
  const auto a = sched.add_session();
  std::atomic<int> running{0}, peak{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t) {
    ts.emplace_back([&] {
      for (int i = 0; i < 50; ++i) {
        ASSERT_TRUE(sched
                        .run(a, 1000,
                             [&] {
                               peak.store(std::max(peak.load(), ++running));
                               --running;
                               return absl::OkStatus();
                             })
                        .ok());
      }
    });
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ(peak.load(), 1);
  EXPECT_EQ(sched.charged_bytes(a), 4u * 50 * 1000);
}

TEST(FairScheduler, ASessionThatDoesNotComeBackStallsNoOne) {
  // B is owed the pool (A ran a large job) and is anticipated after its
  // job, but never submits again: A's jobs still run, after the anticipation.
  FairScheduler sched(std::chrono::milliseconds(20));
  const auto a = sched.add_session(), b = sched.add_session();
  auto ok = [] { return absl::OkStatus(); };
  ASSERT_TRUE(sched.run(a, 1'000'000, ok).ok());
  ASSERT_TRUE(sched.run(b, 1, ok).ok());
  std::thread t([&] {
    for (int i = 0; i < 3; ++i) EXPECT_TRUE(sched.run(a, 1'000'000, ok).ok());
  });
  t.join();  // a hang here is the bug
  EXPECT_EQ(sched.charged_bytes(a), 4'000'000u);
  EXPECT_EQ(sched.active_sessions(), 0);
}

TEST(FairScheduler, JobStatusAndRemovedSessionsAreCancelled) {
  FairScheduler sched;
  const auto a = sched.add_session();
  EXPECT_EQ(sched.run(a, 1, [] { return absl::DataLossError("x"); }).code(),
            absl::StatusCode::kDataLoss);
  sched.remove_session(a);
  EXPECT_EQ(sched.run(a, 1, [] { return absl::OkStatus(); }).code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(sched.session_count(), 0);
}

Topology two_nodes() {
  Topology t;
  t.pus = 12;
  t.numa_nodes = {{.os_index = 0, .memory_bytes = 1 << 30, .cpus = {0, 1, 2, 3, 4, 5, 6, 7}},
                  {.os_index = 1, .memory_bytes = 1 << 30, .cpus = {8, 9, 10, 11}}};
  return t;
}

TEST(OptimizerPools, OnePoolPerNodeInProportionToCpus) {
  auto plans = plan_pools(two_nodes(), 0);
  ASSERT_EQ(plans.size(), 2u);
  EXPECT_EQ(plans[0].node, 0);
  EXPECT_EQ(plans[0].threads, 8);
  EXPECT_EQ(plans[1].node, 1);
  EXPECT_EQ(plans[1].threads, 4);
  EXPECT_EQ(plans[1].cpus, (std::vector<int>{8, 9, 10, 11}));
  plans = plan_pools(two_nodes(), 6);
  ASSERT_EQ(plans.size(), 2u);
  EXPECT_EQ(plans[0].threads + plans[1].threads, 6);
  EXPECT_EQ(plans[0].threads, 4);
  plans = plan_pools(two_nodes(), 1);  // fewer threads than nodes
  ASSERT_EQ(plans.size(), 1u);
  EXPECT_EQ(plans[0].threads, 1);
}

TEST(OptimizerPools, OneNodeOrNoTopologyIsOnePool) {
  Topology one;
  one.numa_nodes = {{.os_index = 0, .cpus = {0, 1}}};
  auto plans = plan_pools(one, 0);
  ASSERT_EQ(plans.size(), 1u);
  EXPECT_EQ(plans[0].threads, 2);
  plans = plan_pools(Topology{.pus = 3}, 0);
  ASSERT_EQ(plans.size(), 1u);
  EXPECT_EQ(plans[0].threads, 3);
  EXPECT_EQ(plan_pools(one, 5)[0].threads, 5);
}

TEST(OptimizerPools, SessionsArePinnedToTheLeastLoadedPool) {
  OptimizerPools pools(two_nodes(), 4);
  ASSERT_EQ(pools.size(), 2);
  EXPECT_EQ(pools.pick(), 0);
  EXPECT_EQ(pools.pick(), 1);
  EXPECT_EQ(pools.pick(), 0);
  pools.release(0);
  pools.release(0);
  EXPECT_EQ(pools.pick(), 0);  // node 0: 0 sessions again, node 1: 1
  EXPECT_EQ(pools.pool(1).plan.node, 1);
}

}  // namespace
}  // namespace strata::daemon
