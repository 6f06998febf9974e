// GlooCommunicator across real ranks: forked processes on loopback TCP,
// each collective against a hand-computed expectation, then the failure
// paths (rank 0 never comes, a rank dies, a rank stalls).
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <numeric>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/dtype.h"
#include "dist/communicator.h"
#include "dist/net.h"
#include "dist_test_util.h"
#include "gtest/gtest.h"

namespace strata::dist {
namespace {

using std::chrono::milliseconds;
using testing::loopback_rank;
using testing::run_ranks;

template <typename T>
absl::Status expect_eq(const std::vector<T>& got, const std::vector<T>& want,
                       const std::string& what) {
  if (got == want) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": got [", absl::StrJoin(got, ","), "] want [",
                                          absl::StrJoin(want, ","), "]"));
}

absl::StatusOr<std::unique_ptr<Communicator>> join(int rank, int world, int port,
                                                   milliseconds timeout = milliseconds(20000)) {
  CommOptions opts;
  opts.timeout = timeout;
  return connect(loopback_rank(rank, world, port), opts);
}

#define RETURN_IF_ERROR(expr) \
  do {                        \
    absl::Status s_ = (expr); \
    if (!s_.ok()) return s_;  \
  } while (0)

// Every collective, each against values computed by hand from the rank.
absl::Status all_collectives(Communicator& c) {
  const int w = c.world_size();
  const int r = c.rank();
  if (c.backend() != Backend::kGloo || c.device_memory()) {
    return absl::InternalError("gloo communicator reports device memory");
  }
  {  // fp32 sum and max, in place.
    std::vector<float> v = {float(r + 1), float(10 * r), -float(r)};
    RETURN_IF_ERROR(c.all_reduce(v.data(), v.size(), DType::kFloat32, ReduceOp::kSum));
    const float s = w * (w + 1) / 2.0f;
    RETURN_IF_ERROR(expect_eq(v, {s, 10 * (s - w), -(s - w)}, "all_reduce fp32 sum"));
    std::vector<float> m = {float(r), -float(r), 5};
    RETURN_IF_ERROR(c.all_reduce(m.data(), m.size(), DType::kFloat32, ReduceOp::kMax));
    RETURN_IF_ERROR(expect_eq(m, {float(w - 1), 0.0f, 5.0f}, "all_reduce fp32 max"));
  }
  {  // fp16 / bf16: small integers are exact in both.
    std::vector<uint16_t> h = {fp32_to_fp16(float(r)), fp32_to_fp16(1.5f)};
    RETURN_IF_ERROR(c.all_reduce(h.data(), h.size(), DType::kFloat16, ReduceOp::kSum));
    RETURN_IF_ERROR(expect_eq(h, {fp32_to_fp16(w * (w - 1) / 2.0f), fp32_to_fp16(1.5f * w)},
                              "all_reduce fp16 sum"));
    std::vector<uint16_t> b = {fp32_to_bf16(float(-r)), fp32_to_bf16(float(r * r))};
    RETURN_IF_ERROR(c.all_reduce(b.data(), b.size(), DType::kBFloat16, ReduceOp::kMax));
    RETURN_IF_ERROR(expect_eq(b, {fp32_to_bf16(0.0f), fp32_to_bf16(float((w - 1) * (w - 1)))},
                              "all_reduce bf16 max"));
  }
  {  // A NaN on one rank survives max.
    std::vector<float> n = {r == w - 1 ? NAN : 1.0f};
    RETURN_IF_ERROR(c.all_reduce(n.data(), 1, DType::kFloat32, ReduceOp::kMax));
    if (!std::isnan(n[0])) return absl::InternalError("max dropped a NaN");
  }
  {  // Several Gloo segments (1 MiB each).
    std::vector<float> big(600'000);
    for (size_t i = 0; i < big.size(); ++i) big[i] = float(i % 1000) + r;
    RETURN_IF_ERROR(c.all_reduce(big.data(), big.size(), DType::kFloat32, ReduceOp::kSum));
    for (size_t i = 0; i < big.size(); ++i) {
      const float want = w * float(i % 1000) + w * (w - 1) / 2.0f;
      if (big[i] != want) {
        return absl::InternalError(
            absl::StrCat("big all_reduce [", i, "] = ", big[i], " want ", want));
      }
    }
  }
  {  // Host doubles.
    std::vector<double> d = {0.5 * r, double(r)};
    RETURN_IF_ERROR(c.all_reduce_host(d, ReduceOp::kSum));
    RETURN_IF_ERROR(expect_eq(d, {0.25 * w * (w - 1), w * (w - 1) / 2.0}, "all_reduce_host sum"));
    std::vector<double> e = {double(-r), 7.0};
    RETURN_IF_ERROR(c.all_reduce_host(e, ReduceOp::kMax));
    RETURN_IF_ERROR(expect_eq(e, {0.0, 7.0}, "all_reduce_host max"));
  }
  // Uneven counts, one rank with none: {2, 0, 3, 1, ...}.
  std::vector<uint64_t> counts(w);
  for (int i = 0; i < w; ++i) counts[i] = i == 1 ? 0 : uint64_t(i % 3 + 2);
  const uint64_t total = std::accumulate(counts.begin(), counts.end(), uint64_t{0});
  std::vector<uint64_t> offset(w, 0);
  for (int i = 1; i < w; ++i) offset[i] = offset[i - 1] + counts[i - 1];
  {  // all_gather: rank i contributes 100 i + j.
    std::vector<float> send(counts[r]);
    for (uint64_t j = 0; j < counts[r]; ++j) send[j] = 100.0f * r + j;
    std::vector<float> want;
    for (int i = 0; i < w; ++i) {
      for (uint64_t j = 0; j < counts[i]; ++j) want.push_back(100.0f * i + j);
    }
    std::vector<float> recv(total, -1.0f);
    RETURN_IF_ERROR(c.all_gather(send.data(), recv.data(), counts, DType::kFloat32));
    RETURN_IF_ERROR(expect_eq(recv, want, "all_gather"));
    std::vector<float> inplace(total, -1.0f);
    std::copy(send.begin(), send.end(), inplace.begin() + offset[r]);
    RETURN_IF_ERROR(
        c.all_gather(inplace.data() + offset[r], inplace.data(), counts, DType::kFloat32));
    RETURN_IF_ERROR(expect_eq(inplace, want, "all_gather in place"));
    std::vector<uint16_t> hsend(counts[r]);
    std::vector<uint16_t> hwant;
    for (uint64_t j = 0; j < counts[r]; ++j) hsend[j] = fp32_to_bf16(float(r * 10 + j));
    for (int i = 0; i < w; ++i) {
      for (uint64_t j = 0; j < counts[i]; ++j) hwant.push_back(fp32_to_bf16(float(i * 10 + j)));
    }
    std::vector<uint16_t> hrecv(total);
    RETURN_IF_ERROR(c.all_gather(hsend.data(), hrecv.data(), counts, DType::kBFloat16));
    RETURN_IF_ERROR(expect_eq(hrecv, hwant, "all_gather bf16"));
  }
  {  // reduce_scatter: element k of send is 1000 rank + k on every rank.
    std::vector<float> send(total);
    for (uint64_t k = 0; k < total; ++k) send[k] = 1000.0f * r + k;
    std::vector<float> recv(counts[r], -1.0f);
    std::vector<float> want_sum(counts[r]), want_max(counts[r]);
    for (uint64_t j = 0; j < counts[r]; ++j) {
      const uint64_t k = offset[r] + j;
      want_sum[j] = 1000.0f * w * (w - 1) / 2 + float(w) * k;
      want_max[j] = 1000.0f * (w - 1) + k;
    }
    RETURN_IF_ERROR(
        c.reduce_scatter(send.data(), recv.data(), counts, DType::kFloat32, ReduceOp::kSum));
    RETURN_IF_ERROR(expect_eq(recv, want_sum, "reduce_scatter sum"));
    RETURN_IF_ERROR(
        c.reduce_scatter(send.data(), recv.data(), counts, DType::kFloat32, ReduceOp::kMax));
    RETURN_IF_ERROR(expect_eq(recv, want_max, "reduce_scatter max"));
    // In place: the result lands at this rank's place in send.
    RETURN_IF_ERROR(c.reduce_scatter(send.data(), send.data() + offset[r], counts, DType::kFloat32,
                                     ReduceOp::kSum));
    std::vector<float> mine(send.begin() + offset[r], send.begin() + offset[r] + counts[r]);
    RETURN_IF_ERROR(expect_eq(mine, want_sum, "reduce_scatter in place"));
    std::vector<uint16_t> hsend(total, fp32_to_fp16(0.5f));
    std::vector<uint16_t> hrecv(counts[r]);
    RETURN_IF_ERROR(
        c.reduce_scatter(hsend.data(), hrecv.data(), counts, DType::kFloat16, ReduceOp::kSum));
    RETURN_IF_ERROR(expect_eq(hrecv, std::vector<uint16_t>(counts[r], fp32_to_fp16(0.5f * w)),
                              "reduce_scatter fp16"));
  }
  {  // broadcast from the last rank.
    std::vector<float> b(4, float(r));
    RETURN_IF_ERROR(c.broadcast(b.data(), b.size(), DType::kFloat32, w - 1));
    RETURN_IF_ERROR(expect_eq(b, std::vector<float>(4, float(w - 1)), "broadcast"));
  }
  RETURN_IF_ERROR(c.barrier());
  {  // Bad arguments are refused before any traffic, and leave it usable.
    std::vector<uint64_t> wrong(w + 1, 1);
    std::vector<float> x(w + 1);
    if (!absl::IsInvalidArgument(c.all_gather(x.data(), x.data(), wrong, DType::kFloat32))) {
      return absl::InternalError("all_gather took counts for the wrong world size");
    }
    if (!absl::IsInvalidArgument(c.broadcast(x.data(), 1, DType::kFloat32, w))) {
      return absl::InternalError("broadcast took a root outside the world");
    }
  }
  return c.barrier();
}

class GlooWorld : public ::testing::TestWithParam<int> {};

TEST_P(GlooWorld, EveryCollectiveMatchesHandComputedValues) {
  const int world = GetParam();
  auto port = pick_free_port();
  ASSERT_TRUE(port.ok()) << port.status();
  auto results = run_ranks(world, [&](int rank) -> absl::Status {
    auto comm = join(rank, world, *port);
    if (!comm.ok()) return comm.status();
    if ((*comm)->rank() != rank || (*comm)->world_size() != world) {
      return absl::InternalError("rank / world size not as given");
    }
    return all_collectives(**comm);
  });
  for (int r = 0; r < world; ++r)
    EXPECT_TRUE(results[r].ok()) << "rank " << r << ": " << results[r];
}

INSTANTIATE_TEST_SUITE_P(Worlds, GlooWorld, ::testing::Values(2, 3, 4));

// Ranks may also be threads of one process (each with its own communicator),
// as engine tests that want several ranks without forking do.
TEST(GlooThreads, RanksAsThreadsOfOneProcess) {
  auto port = pick_free_port();
  ASSERT_TRUE(port.ok());
  constexpr int kWorld = 3;
  std::vector<absl::Status> results(kWorld);
  std::vector<std::thread> threads;
  for (int r = 0; r < kWorld; ++r) {
    threads.emplace_back([&, r] {
      auto comm = join(r, kWorld, *port);
      results[r] = comm.ok() ? all_collectives(**comm) : comm.status();
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < kWorld; ++r)
    EXPECT_TRUE(results[r].ok()) << "rank " << r << ": " << results[r];
}

TEST(GlooLocal, WorldOfOneCopiesOrDoesNothing) {
  CommOptions opts;
  auto comm = connect(loopback_rank(0, 1, 1), opts);
  ASSERT_TRUE(comm.ok()) << comm.status();
  Communicator& c = **comm;
  EXPECT_EQ(c.world_size(), 1);
  std::vector<float> v = {1, 2, 3};
  ASSERT_TRUE(c.all_reduce(v.data(), 3, DType::kFloat32, ReduceOp::kSum).ok());
  EXPECT_EQ(v, (std::vector<float>{1, 2, 3}));
  std::vector<float> out(3);
  const uint64_t counts[] = {3};
  ASSERT_TRUE(c.all_gather(v.data(), out.data(), counts, DType::kFloat32).ok());
  EXPECT_EQ(out, v);
  std::vector<float> rs(3);
  ASSERT_TRUE(c.reduce_scatter(v.data(), rs.data(), counts, DType::kFloat32, ReduceOp::kMax).ok());
  EXPECT_EQ(rs, v);
  std::vector<double> d = {4.0};
  ASSERT_TRUE(c.all_reduce_host(d, ReduceOp::kSum).ok());
  EXPECT_EQ(d[0], 4.0);
  EXPECT_TRUE(c.barrier().ok());
  EXPECT_TRUE(absl::IsInvalidArgument(c.broadcast(v.data(), 3, DType::kFloat32, 1)));
}

TEST(GlooRendezvous, RankZeroNeverComingTimesOutNamingTheAddress) {
  auto port = pick_free_port();
  ASSERT_TRUE(port.ok());
  const auto start = std::chrono::steady_clock::now();
  auto comm = join(1, 2, *port, milliseconds(2000));
  const auto took = std::chrono::steady_clock::now() - start;
  ASSERT_FALSE(comm.ok());
  EXPECT_TRUE(absl::IsUnavailable(comm.status())) << comm.status();
  EXPECT_NE(comm.status().message().find(absl::StrCat("127.0.0.1:", *port)), std::string::npos)
      << comm.status();
  EXPECT_GE(took, milliseconds(1900));
  EXPECT_LT(took, milliseconds(4000));
}

TEST(GlooRendezvous, RanksThatNeverJoinAreNamed) {
  auto port = pick_free_port();
  ASSERT_TRUE(port.ok());
  auto results = run_ranks(1, [&](int) -> absl::Status {
    return join(0, 3, *port, milliseconds(1500)).status();  // ranks 1 and 2 never come
  });
  EXPECT_TRUE(absl::IsDeadlineExceeded(results[0])) << results[0];
  EXPECT_NE(results[0].message().find("rank 1, rank 2 have not joined"), std::string::npos)
      << results[0];
}

TEST(GlooRendezvous, BadRankInfoIsInvalidArgument) {
  CommOptions opts;
  EXPECT_TRUE(absl::IsInvalidArgument(connect(loopback_rank(2, 2, 1234), opts).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(connect(loopback_rank(0, 2, 0), opts).status()));
}

// A rank that dies while the others are in a collective: they fail well
// within the timeout, naming it; later calls repeat the first error.
void expect_death_is_named(int world, int dying, bool reduce_scatter) {
  auto port = pick_free_port();
  ASSERT_TRUE(port.ok());
  const milliseconds timeout(10000);
  auto results = run_ranks(world, [&](int rank) -> absl::Status {
    auto comm = join(rank, world, *port, timeout);
    if (!comm.ok()) return comm.status();
    std::vector<float> v(1000, 1.0f);
    RETURN_IF_ERROR((*comm)->all_reduce(v.data(), v.size(), DType::kFloat32, ReduceOp::kSum));
    if (rank == dying) {
      std::this_thread::sleep_for(milliseconds(200));  // the others are waiting by now
      _exit(3);
    }
    const auto start = std::chrono::steady_clock::now();
    std::vector<uint64_t> counts(world, v.size() / world);
    std::vector<float> out(counts[0]);
    absl::Status s =
        reduce_scatter
            ? (*comm)->reduce_scatter(v.data(), out.data(), counts, DType::kFloat32, ReduceOp::kSum)
            : (*comm)->all_reduce(v.data(), v.size(), DType::kFloat32, ReduceOp::kSum);
    const auto took = std::chrono::steady_clock::now() - start;
    if (s.ok()) return absl::InternalError("the collective succeeded without a rank");
    if (took > milliseconds(5000)) {
      return absl::InternalError(
          absl::StrCat("took ", took / milliseconds(1), " ms: ", s.message()));
    }
    absl::Status again = (*comm)->barrier();
    if (again.ok() || again.code() != s.code()) {
      return absl::InternalError(absl::StrCat("after the failure: ", again.ToString()));
    }
    return s;
  });
  for (int r = 0; r < world; ++r) {
    if (r == dying) continue;
    EXPECT_TRUE(absl::IsUnavailable(results[r])) << "rank " << r << ": " << results[r];
    EXPECT_NE(results[r].message().find(absl::StrCat("rank ", dying)), std::string::npos)
        << "rank " << r << ": " << results[r];
  }
}

TEST(GlooFailure, DeadRankIsNamedByTheOthers) { expect_death_is_named(3, 2, false); }

TEST(GlooFailure, DeadRankZeroIsNamedByTheOthers) { expect_death_is_named(3, 0, false); }

TEST(GlooFailure, DeadRankInTheReduceScatterRingIsNamed) { expect_death_is_named(4, 1, true); }

TEST(GlooFailure, RankClosingItsCommunicatorEarlyIsNamed) {
  auto port = pick_free_port();
  ASSERT_TRUE(port.ok());
  auto results = run_ranks(2, [&](int rank) -> absl::Status {
    auto comm = join(rank, 2, *port, milliseconds(10000));
    if (!comm.ok()) return comm.status();
    RETURN_IF_ERROR((*comm)->barrier());
    if (rank == 1) {
      comm->reset();  // leaves (goodbye), then lingers as a live process
      std::this_thread::sleep_for(milliseconds(2000));
      return absl::OkStatus();
    }
    std::vector<float> v(10, 1.0f);
    return (*comm)->all_reduce(v.data(), v.size(), DType::kFloat32, ReduceOp::kSum);
  });
  EXPECT_TRUE(absl::IsUnavailable(results[0])) << results[0];
  EXPECT_NE(results[0].message().find("rank 1"), std::string::npos) << results[0];
  EXPECT_NE(results[0].message().find("closed its communicator"), std::string::npos) << results[0];
  EXPECT_TRUE(results[1].ok()) << results[1];
}

TEST(GlooFailure, StalledRankMakesTheOthersTimeOut) {
  auto port = pick_free_port();
  ASSERT_TRUE(port.ok());
  const milliseconds timeout(1500);
  auto results = run_ranks(2, [&](int rank) -> absl::Status {
    auto comm = join(rank, 2, *port, timeout);
    if (!comm.ok()) return comm.status();
    if (rank == 1) {
      std::this_thread::sleep_for(milliseconds(4000));
      return absl::OkStatus();
    }
    std::vector<float> v(10, 1.0f);
    const auto start = std::chrono::steady_clock::now();
    absl::Status s = (*comm)->all_reduce(v.data(), v.size(), DType::kFloat32, ReduceOp::kSum);
    const auto took = std::chrono::steady_clock::now() - start;
    if (took < milliseconds(1400) || took > milliseconds(3900)) {
      return absl::InternalError(
          absl::StrCat("took ", took / milliseconds(1), " ms: ", s.message()));
    }
    return s;
  });
  EXPECT_TRUE(absl::IsDeadlineExceeded(results[0])) << results[0];
  EXPECT_NE(results[0].message().find("stalled"), std::string::npos) << results[0];
  EXPECT_TRUE(results[1].ok()) << results[1];
}

}  // namespace
}  // namespace strata::dist
