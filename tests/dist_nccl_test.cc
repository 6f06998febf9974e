// NcclCommunicator. Without a CUDA build, libnccl.so.2 or a GPU, connect()
// must say so (FailedPrecondition); with 2 GPUs, forked ranks (one GPU each)
// check every collective on device memory, and a rank that dies is named
// by the watchdog within the timeout. CUDA is only touched in the children:
// a process must not fork after initialising it.
#include <chrono>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "dist/communicator.h"
#include "dist/net.h"
#include "dist_test_util.h"
#include "gpu/cuda_info.h"
#include "gtest/gtest.h"

#if defined(STRATA_HAVE_CUDA)
#include <cuda_runtime.h>
#endif

namespace strata::dist {
namespace {

using std::chrono::milliseconds;
using testing::loopback_rank;
using testing::run_ranks;

// The number of CUDA devices, probed in a child process.
int gpu_count() {
  auto counted = run_ranks(1, [](int) -> absl::Status {
    auto info = gpu::probe_cuda();
    return absl::AbortedError(std::to_string(info.devices.size()));
  });
  return std::stoi(std::string(counted[0].message()));
}

TEST(Nccl, WithoutTheBackendConnectSaysWhy) {
  if (gpu_count() > 0) GTEST_SKIP() << "a GPU is present: the multi-GPU tests cover NCCL";
  auto results = run_ranks(1, [](int) -> absl::Status {
    CommOptions opts;
    opts.backend = Backend::kNccl;
    auto comm = connect(loopback_rank(0, 1, 1), opts);
    return comm.ok() ? absl::InternalError("NCCL connected without a GPU") : comm.status();
  });
  EXPECT_TRUE(absl::IsFailedPrecondition(results[0])) << results[0];
  EXPECT_NE(results[0].message().find("NCCL"), std::string::npos) << results[0];
}

#if defined(STRATA_HAVE_CUDA)

#define RETURN_IF_ERROR(expr) \
  do {                        \
    absl::Status s_ = (expr); \
    if (!s_.ok()) return s_;  \
  } while (0)

absl::Status cuda(cudaError_t e, const char* what) {
  return e == cudaSuccess ? absl::OkStatus()
                          : absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(e)));
}

// Device buffer from host values and back (the test's only syncs).
struct DeviceFloats {
  float* ptr = nullptr;
  size_t n = 0;
  absl::Status set(const std::vector<float>& v) {
    if (ptr == nullptr) {
      n = std::max<size_t>(v.size(), 1);
      RETURN_IF_ERROR(cuda(cudaMalloc(&ptr, n * sizeof(float)), "cudaMalloc"));
    }
    return cuda(cudaMemcpy(ptr, v.data(), v.size() * sizeof(float), cudaMemcpyHostToDevice), "H2D");
  }
  absl::StatusOr<std::vector<float>> get(size_t count, size_t offset = 0) {
    std::vector<float> v(count);
    RETURN_IF_ERROR(cuda(cudaDeviceSynchronize(), "sync"));
    RETURN_IF_ERROR(cuda(
        cudaMemcpy(v.data(), ptr + offset, count * sizeof(float), cudaMemcpyDeviceToHost), "D2H"));
    return v;
  }
  ~DeviceFloats() { cudaFree(ptr); }
};

absl::Status expect_eq(const std::vector<float>& got, const std::vector<float>& want,
                       const std::string& what) {
  if (got == want) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": got [", absl::StrJoin(got, ","), "] want [",
                                          absl::StrJoin(want, ","), "]"));
}

absl::Status nccl_collectives(int rank, int world, int port) {
  RETURN_IF_ERROR(cuda(cudaSetDevice(rank), "cudaSetDevice"));
  CommOptions opts;
  opts.backend = Backend::kNccl;
  opts.cuda_device = rank;
  opts.timeout = milliseconds(30000);
  auto comm_or = connect(loopback_rank(rank, world, port), opts);
  if (!comm_or.ok()) return comm_or.status();
  Communicator& c = **comm_or;
  if (!c.device_memory()) return absl::InternalError("NCCL says host memory");
  const float w = world;
  {
    DeviceFloats d;
    RETURN_IF_ERROR(d.set({float(rank + 1), float(-rank)}));
    RETURN_IF_ERROR(c.all_reduce(d.ptr, 2, DType::kFloat32, ReduceOp::kSum));
    auto got = d.get(2);
    RETURN_IF_ERROR(got.status());
    RETURN_IF_ERROR(expect_eq(*got, {w * (w + 1) / 2, -w * (w - 1) / 2}, "all_reduce"));
  }
  for (bool even : {true, false}) {
    std::vector<uint64_t> counts(world);
    for (int i = 0; i < world; ++i) counts[i] = even ? 2 : uint64_t(i + 1);
    uint64_t total = 0, offset = 0;
    for (int i = 0; i < world; ++i) {
      if (i == rank) offset = total;
      total += counts[i];
    }
    std::vector<float> mine(counts[rank]), want;
    for (uint64_t j = 0; j < counts[rank]; ++j) mine[j] = 100.0f * rank + j;
    for (int i = 0; i < world; ++i) {
      for (uint64_t j = 0; j < counts[i]; ++j) want.push_back(100.0f * i + j);
    }
    DeviceFloats send, recv;
    RETURN_IF_ERROR(send.set(mine));
    RETURN_IF_ERROR(recv.set(std::vector<float>(total, -1.0f)));
    RETURN_IF_ERROR(c.all_gather(send.ptr, recv.ptr, counts, DType::kFloat32));
    auto got = recv.get(total);
    RETURN_IF_ERROR(got.status());
    RETURN_IF_ERROR(expect_eq(*got, want, absl::StrCat("all_gather even=", even)));
    std::vector<float> full(total);
    for (uint64_t k = 0; k < total; ++k) full[k] = 1000.0f * rank + k;
    std::vector<float> want_rs(counts[rank]);
    for (uint64_t j = 0; j < counts[rank]; ++j) {
      want_rs[j] = 1000.0f * w * (w - 1) / 2 + w * float(offset + j);
    }
    DeviceFloats rs_in, rs_out;
    RETURN_IF_ERROR(rs_in.set(full));
    RETURN_IF_ERROR(rs_out.set(std::vector<float>(counts[rank], -1.0f)));
    RETURN_IF_ERROR(
        c.reduce_scatter(rs_in.ptr, rs_out.ptr, counts, DType::kFloat32, ReduceOp::kSum));
    auto rs = rs_out.get(counts[rank]);
    RETURN_IF_ERROR(rs.status());
    RETURN_IF_ERROR(expect_eq(*rs, want_rs, absl::StrCat("reduce_scatter even=", even)));
  }
  {
    DeviceFloats b;
    RETURN_IF_ERROR(b.set({float(rank), float(rank)}));
    RETURN_IF_ERROR(c.broadcast(b.ptr, 2, DType::kFloat32, world - 1));
    auto got = b.get(2);
    RETURN_IF_ERROR(got.status());
    RETURN_IF_ERROR(expect_eq(*got, {w - 1, w - 1}, "broadcast"));
  }
  std::vector<double> h = {double(rank), 2.0};
  RETURN_IF_ERROR(c.all_reduce_host(h, ReduceOp::kMax));
  if (h[0] != world - 1 || h[1] != 2.0) return absl::InternalError("all_reduce_host max");
  return c.barrier();
}

// World 1 still goes through NCCL (device buffers): init without a store,
// every collective an identity, the host calls through the watchdog path.
TEST(Nccl, OneRankOnOneGpu) {
  const int gpus = gpu_count();
  if (gpus < 1) GTEST_SKIP() << "needs a CUDA device, found none";
  auto results = run_ranks(
      1,
      [](int) -> absl::Status {
        CommOptions opts;
        opts.backend = Backend::kNccl;
        opts.timeout = milliseconds(30000);
        auto comm_or = connect(loopback_rank(0, 1, 1), opts);
        if (!comm_or.ok()) return comm_or.status();
        Communicator& c = **comm_or;
        if (!c.device_memory() || c.backend() != Backend::kNccl) {
          return absl::InternalError("not an NCCL communicator");
        }
        DeviceFloats d, out;
        RETURN_IF_ERROR(d.set({1, 2, 3}));
        RETURN_IF_ERROR(out.set({0, 0, 0}));
        RETURN_IF_ERROR(c.all_reduce(d.ptr, 3, DType::kFloat32, ReduceOp::kSum));
        const uint64_t counts[] = {3};
        RETURN_IF_ERROR(c.all_gather(d.ptr, out.ptr, counts, DType::kFloat32));
        auto got = out.get(3);
        RETURN_IF_ERROR(got.status());
        RETURN_IF_ERROR(expect_eq(*got, {1, 2, 3}, "one-rank all_gather"));
        RETURN_IF_ERROR(out.set({0, 0, 0}));
        RETURN_IF_ERROR(c.reduce_scatter(d.ptr, out.ptr, counts, DType::kFloat32, ReduceOp::kMax));
        got = out.get(3);
        RETURN_IF_ERROR(got.status());
        RETURN_IF_ERROR(expect_eq(*got, {1, 2, 3}, "one-rank reduce_scatter"));
        std::vector<double> h = {2.5, -1.0};
        RETURN_IF_ERROR(c.all_reduce_host(h, ReduceOp::kSum));
        if (h[0] != 2.5 || h[1] != -1.0) return absl::InternalError("all_reduce_host changed");
        return c.barrier();
      },
      std::chrono::seconds(120));
  EXPECT_TRUE(results[0].ok()) << results[0];
}

TEST(Nccl, EveryCollectiveOnTwoGpus) {
  const int gpus = gpu_count();
  if (gpus < 2) GTEST_SKIP() << "needs 2 CUDA devices, found " << gpus;
  auto port = pick_free_port();
  ASSERT_TRUE(port.ok());
  auto results = run_ranks(
      2, [&](int rank) { return nccl_collectives(rank, 2, *port); }, std::chrono::seconds(120));
  for (int r = 0; r < 2; ++r) EXPECT_TRUE(results[r].ok()) << "rank " << r << ": " << results[r];
}

TEST(Nccl, DeadRankIsNamedByTheWatchdog) {
  const int gpus = gpu_count();
  if (gpus < 2) GTEST_SKIP() << "needs 2 CUDA devices, found " << gpus;
  auto port = pick_free_port();
  ASSERT_TRUE(port.ok());
  auto results = run_ranks(
      2,
      [&](int rank) -> absl::Status {
        cudaSetDevice(rank);
        CommOptions opts;
        opts.backend = Backend::kNccl;
        opts.cuda_device = rank;
        opts.timeout = milliseconds(5000);
        auto comm = connect(loopback_rank(rank, 2, *port), opts);
        if (!comm.ok()) return comm.status();
        RETURN_IF_ERROR((*comm)->barrier());
        if (rank == 1) _exit(3);
        const auto start = std::chrono::steady_clock::now();
        std::vector<double> v = {1.0};
        absl::Status s = (*comm)->all_reduce_host(v, ReduceOp::kSum);
        if (std::chrono::steady_clock::now() - start > milliseconds(15000)) {
          return absl::InternalError(absl::StrCat("too slow: ", s.ToString()));
        }
        return s;
      },
      std::chrono::seconds(60));
  EXPECT_FALSE(results[0].ok());
  EXPECT_NE(results[0].message().find("rank 1"), std::string::npos) << results[0];
}

#endif  // STRATA_HAVE_CUDA

}  // namespace
}  // namespace strata::dist
