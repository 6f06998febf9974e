// launch_local: environment per rank, failure of one rank stops the rest
// and is named, signals are forwarded; and a real job: this test binary
// relaunched as 3 ranks that all-reduce through connect().
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "dist/communicator.h"
#include "dist/launcher.h"
#include "gtest/gtest.h"

namespace strata::dist {
namespace {

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

std::vector<std::string> sh(const std::string& script) { return {"/bin/sh", "-c", script}; }

TEST(Launcher, AllRanksSucceedingIsOk) {
  // Each rank checks its own environment and fails loudly if it is wrong.
  absl::Status s = launch_local(
      3,
      sh("test \"$WORLD_SIZE\" = 3 && test \"$LOCAL_WORLD_SIZE\" = 3 && "
         "test \"$RANK\" = \"$LOCAL_RANK\" && test \"$RANK\" -ge 0 && test \"$RANK\" -lt 3 && "
         "test \"$MASTER_ADDR\" = 127.0.0.1 && test \"$MASTER_PORT\" -gt 0 && "
         "test \"$EXTRA\" = yes"),
      LaunchOptions{.extra_env = {"EXTRA=yes"}});
  EXPECT_TRUE(s.ok()) << s;
}

TEST(Launcher, FailingRankIsNamedAndTheOthersStopped) {
  const auto start = Clock::now();
  absl::Status s = launch_local(3, sh("if [ \"$RANK\" = 1 ]; then exit 3; fi; exec sleep 30"),
                                LaunchOptions{.grace = milliseconds(2000)});
  EXPECT_TRUE(absl::IsAborted(s)) << s;
  EXPECT_NE(s.message().find("rank 1"), std::string::npos) << s;
  EXPECT_NE(s.message().find("exited with status 3"), std::string::npos) << s;
  EXPECT_LT(Clock::now() - start, milliseconds(5000));  // SIGTERM ended the sleepers
}

TEST(Launcher, RankKilledBySignalIsNamed) {
  absl::Status s = launch_local(2, sh("if [ \"$RANK\" = 0 ]; then kill -9 $$; fi; exec sleep 30"));
  EXPECT_TRUE(absl::IsAborted(s)) << s;
  EXPECT_NE(s.message().find("rank 0"), std::string::npos) << s;
  EXPECT_NE(s.message().find("signal 9"), std::string::npos) << s;
}

TEST(Launcher, RanksIgnoringSigtermAreKilledAfterTheGrace) {
  const auto start = Clock::now();
  absl::Status s = launch_local(
      2, sh("if [ \"$RANK\" = 1 ]; then exit 1; fi; trap '' TERM; while :; do sleep 0.1; done"),
      LaunchOptions{.grace = milliseconds(500)});
  EXPECT_TRUE(absl::IsAborted(s)) << s;
  EXPECT_NE(s.message().find("rank 1"), std::string::npos) << s;
  EXPECT_LT(Clock::now() - start, milliseconds(5000));
}

TEST(Launcher, MissingCommandIsNamed) {
  absl::Status s = launch_local(1, {"/nonexistent/strata-no-such-binary"});
  EXPECT_TRUE(absl::IsAborted(s)) << s;
  EXPECT_NE(s.message().find("status 127"), std::string::npos) << s;
}

TEST(Launcher, BadArgumentsAreRefused) {
  EXPECT_TRUE(absl::IsInvalidArgument(launch_local(0, sh("true"))));
  EXPECT_TRUE(absl::IsInvalidArgument(launch_local(2, {})));
}

TEST(Launcher, InterruptIsForwardedToEveryRank) {
  std::thread interrupter([] {
    std::this_thread::sleep_for(milliseconds(300));
    kill(getpid(), SIGINT);
  });
  const auto start = Clock::now();
  absl::Status s = launch_local(2, sh("exec sleep 30"));
  interrupter.join();
  EXPECT_TRUE(absl::IsCancelled(s)) << s;
  EXPECT_LT(Clock::now() - start, milliseconds(5000));
}

// Runs as a rank when the launcher started this binary (RANK is set).
TEST(LauncherChild, AllReduceThroughConnect) {
  if (std::getenv("STRATA_DIST_LAUNCHER_CHILD") == nullptr) {
    GTEST_SKIP() << "runs only as a rank of Launcher.RealJobOfThreeRanks";
  }
  auto info = rank_info_from_env();
  ASSERT_TRUE(info.ok()) << info.status();
  CommOptions opts;
  opts.timeout = milliseconds(20000);
  auto comm = connect(*info, opts);
  ASSERT_TRUE(comm.ok()) << comm.status();
  std::vector<double> v = {double(info->rank), 1.0};
  ASSERT_TRUE((*comm)->all_reduce_host(v, ReduceOp::kSum).ok());
  const int w = info->world_size;
  EXPECT_EQ(v[0], w * (w - 1) / 2.0);
  EXPECT_EQ(v[1], double(w));
}

TEST(Launcher, RealJobOfThreeRanks) {
  absl::Status s =
      launch_local(3, {"/proc/self/exe", "--gtest_filter=LauncherChild.AllReduceThroughConnect"},
                   LaunchOptions{.extra_env = {"STRATA_DIST_LAUNCHER_CHILD=1"}});
  EXPECT_TRUE(s.ok()) << s;
}

}  // namespace
}  // namespace strata::dist
