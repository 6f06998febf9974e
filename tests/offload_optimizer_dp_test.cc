// OffloadOptimizer across data-parallel ranks (ranks as threads, Gloo over
// loopback, SimDevice each) as a framework drives it: kHost and kDevice
// bindings, two groups, a param smaller than the world (an empty slice),
// each rank reporting its buckets in another order. 2 and 3 ranks with
// per-rank gradients equal one rank given their mean (ZeRO stage 1 and 2,
// optimizer on cpu and nvme); every rank's params agree bit for bit; each
// rank's states are its slice; the misuse errors.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "engine/offload_optimizer.h"
#include "gpu/sim_device.h"
#include "gtest/gtest.h"
#include "tests/dp_test_util.h"

namespace strata::engine {
namespace {

using strata::testing::parse_config_at;
using strata::testing::run_ranks;

constexpr int kParams = 4;
constexpr uint64_t kSizes[kParams] = {2, 37, 1000, 20000};
constexpr int kBuckets[kParams] = {0, 0, 1, 2};
constexpr int kGroups[kParams] = {0, 0, 1, 1};
constexpr int kNumBuckets = 3;
constexpr int kDeviceParam = 2;  // bound in device memory; the others in host memory
constexpr int kGas = 2;

// loss_r,k = sum 0.5 * c(r, k) * (w - t)^2 on rank r, micro-batch k.
float coef(int rank, int micro) { return 1.0f + 0.25f * micro + 0.5f * rank; }

struct RankRun {
  std::vector<std::vector<float>> master_slices;  // per param
  std::vector<std::vector<float>> params;         // whole compute params (fp32)
  std::vector<ParamSlice> slices;
  std::vector<double> norms;
  uint64_t fp32_host_bytes = 0;
};

class OffloadOptimizerDpTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           ("offload_optimizer_dp_" + std::to_string(getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Rank r's stage-2 optimizer over one kHost param "w" (its values `w`, its
  // gradient `g`, both the caller's), finalized and given w's values.
  absl::StatusOr<std::unique_ptr<OffloadOptimizer>> one_param_optimizer(dist::Communicator* comm,
                                                                        int r,
                                                                        gpu::SimDevice* device,
                                                                        std::vector<float>* w,
                                                                        std::vector<float>* g) {
    OffloadOptimizerOptions o;
    o.comm = comm;
    o.allow_buffered_io = true;
    STRATA_ASSIGN_OR_RETURN(auto opt,
                            OffloadOptimizer::create(config(2, 2, false, r), device, std::move(o)));
    opt->add_group({});
    STRATA_RETURN_IF_ERROR(opt->add_param({.name = "w",
                                           .numel = w->size(),
                                           .binding = ParamBinding::kHost,
                                           .param = w->data(),
                                           .grad = g->data()})
                               .status());
    STRATA_RETURN_IF_ERROR(opt->finalize());
    STRATA_RETURN_IF_ERROR(opt->set_value(0, w->data()));
    return opt;
  }

  config::DsConfig config(int world, int stage, bool nvme, int rank,
                          const std::string& extra = "") {
    const std::string offload =
        nvme ? absl::StrCat("{\"device\": \"nvme\", \"nvme_path\": \"", (dir_ / "swap").string(),
                            std::to_string(rank), "\"}")
             : std::string("{\"device\": \"cpu\"}");
    return parse_config_at(
        absl::StrCat(
            "{\"train_micro_batch_size_per_gpu\": 1, \"gradient_accumulation_steps\": ", kGas,
            ", \"gradient_clipping\": 0.5, \"optimizer\": {\"type\": \"AdamW\", "
            "\"params\": {\"lr\": 0.01, \"weight_decay\": 0.1}}, "
            "\"zero_optimization\": {\"stage\": ",
            stage, ", \"offload_optimizer\": ", offload,
            "}, \"strata\": {\"overlap\": \"sync\", \"prefetch_window_bytes\": 4096}", extra, "}"),
        world);
  }

  // `steps` steps on rank `rank` of `world` (comm null: one rank, given the
  // mean of `mean_of` ranks' gradients).
  absl::Status train(int rank, int world, int mean_of, dist::Communicator* comm, int stage,
                     bool nvme, int steps, RankRun* out) {
    gpu::SimDevice device;
    OffloadOptimizerOptions o;
    o.use_schedule = false;
    o.allow_buffered_io = true;
    o.comm = comm;
    STRATA_ASSIGN_OR_RETURN(auto opt, OffloadOptimizer::create(config(world, stage, nvme, rank),
                                                               &device, std::move(o)));
    opt->add_group({.lr = 0.01, .weight_decay = 0.1});
    opt->add_group({.lr = 0.003, .beta1 = 0.8});
    std::vector<std::vector<float>> w(kParams), t(kParams), g(kParams);
    STRATA_ASSIGN_OR_RETURN(gpu::StreamId stream, device.create_stream());
    void* dev_param = nullptr;
    void* dev_grad = nullptr;
    for (int p = 0; p < kParams; ++p) {
      w[p].resize(kSizes[p]);
      t[p].resize(kSizes[p]);
      g[p].resize(kSizes[p]);
      for (uint64_t i = 0; i < kSizes[p]; ++i) {
        w[p][i] = std::sin(0.37f * static_cast<float>(i + 11 * p)) * 0.8f;
        t[p][i] = std::cos(0.11f * static_cast<float>(i + 7 * p)) * 0.5f;
      }
      ParamDesc d{.name = absl::StrCat("p", p),
                  .numel = kSizes[p],
                  .bucket = kBuckets[p],
                  .group = kGroups[p],
                  .binding = ParamBinding::kHost,
                  .param = w[p].data(),
                  .grad = g[p].data()};
      if (p == kDeviceParam) {
        STRATA_ASSIGN_OR_RETURN(dev_param, device.allocate(kSizes[p] * 4));
        STRATA_ASSIGN_OR_RETURN(dev_grad, device.allocate(kSizes[p] * 4));
        d.binding = ParamBinding::kDevice;
        d.param = dev_param;
        d.grad = dev_grad;
      }
      STRATA_ASSIGN_OR_RETURN(ParamHandle h, opt->add_param(d));
      if (h != p) return absl::InternalError("handles out of order");
    }
    STRATA_RETURN_IF_ERROR(opt->finalize());
    for (int p = 0; p < kParams; ++p) STRATA_RETURN_IF_ERROR(opt->set_value(p, w[p].data()));

    for (int s = 0; s < steps; ++s) {
      STRATA_RETURN_IF_ERROR(opt->begin_step().status());
      for (int k = 0; k < kGas; ++k) {
        if (k > 0) STRATA_RETURN_IF_ERROR(opt->wait_grads());
        for (int p = 0; p < kParams; ++p) {
          for (uint64_t i = 0; i < kSizes[p]; ++i) {
            const float d = w[p][i] - t[p][i];
            if (comm != nullptr) {
              g[p][i] = coef(rank, k) * d;
            } else {
              // One rank: the ranks' mean, each rank's term as that rank computes it.
              float sum = 0;
              for (int r = 0; r < mean_of; ++r) sum += coef(r, k) * d;
              g[p][i] = sum / static_cast<float>(mean_of);
            }
          }
        }
        STRATA_RETURN_IF_ERROR(device.copy_to_device(dev_grad, g[kDeviceParam].data(),
                                                     kSizes[kDeviceParam] * 4, stream));
        STRATA_RETURN_IF_ERROR(device.synchronize_stream(stream));
        // Each rank reports its buckets in another order.
        for (int j = 0; j < kNumBuckets; ++j) {
          STRATA_RETURN_IF_ERROR(opt->grad_ready((kNumBuckets - 1 - j + rank) % kNumBuckets));
        }
      }
      STRATA_ASSIGN_OR_RETURN(OptimizerStepResult r, opt->finish_step());
      out->norms.push_back(r.grad_norm);
      if (auto ev = opt->params_ready(kBuckets[kDeviceParam]); ev.has_value()) {
        STRATA_RETURN_IF_ERROR(device.wait_event(stream, *ev));
      }
      STRATA_RETURN_IF_ERROR(
          device.copy_to_host(w[kDeviceParam].data(), dev_param, kSizes[kDeviceParam] * 4, stream));
      STRATA_RETURN_IF_ERROR(device.synchronize_stream(stream));
    }
    for (int p = 0; p < kParams; ++p) {
      STRATA_ASSIGN_OR_RETURN(std::vector<float> m, opt->read_state(p, StateKind::kMaster));
      STRATA_ASSIGN_OR_RETURN(std::vector<float> v, opt->read_param(p));
      if (v != w[p]) return absl::InternalError(absl::StrCat("binding of p", p, " is stale"));
      out->master_slices.push_back(std::move(m));
      out->params.push_back(std::move(v));
      out->slices.push_back(opt->param_slice(p));
    }
    const RoleBytes& hr = opt->placement().host_roles;
    const RoleBytes& nr = opt->placement().nvme_roles;
    out->fp32_host_bytes =
        hr.grad32 + hr.master + hr.exp_avg + hr.exp_avg_sq + nr.master + nr.exp_avg + nr.exp_avg_sq;
    device.destroy_stream(stream);
    device.free(dev_param);
    device.free(dev_grad);
    return absl::OkStatus();
  }

  void expect_equivalent(int world, int stage, bool nvme) {
    SCOPED_TRACE(absl::StrCat("world ", world, " stage ", stage, nvme ? " nvme" : " cpu"));
    constexpr int kSteps = 20;
    RankRun one;
    ASSERT_TRUE(train(0, 1, world, nullptr, stage, nvme, kSteps, &one).ok());
    std::vector<RankRun> many(world);
    const std::vector<absl::Status> st = run_ranks(world, [&](int r, dist::Communicator* comm) {
      return train(r, world, world, comm, stage, nvme, kSteps, &many[r]);
    });
    for (int r = 0; r < world; ++r) ASSERT_TRUE(st[r].ok()) << "rank " << r << ": " << st[r];
    for (int s = 0; s < kSteps; ++s) {
      for (int r = 0; r < world; ++r) EXPECT_EQ(many[r].norms[s], many[0].norms[s]);
      EXPECT_NEAR(many[0].norms[s], one.norms[s], 1e-5 * one.norms[s]) << "step " << s;
    }
    for (int p = 0; p < kParams; ++p) {
      std::vector<float> whole;
      uint64_t next = 0;
      for (int r = 0; r < world; ++r) {
        const ParamSlice sl = many[r].slices[p];
        EXPECT_EQ(sl.offset, next) << "p" << p << " rank " << r;
        EXPECT_EQ(many[r].master_slices[p].size(), sl.numel);
        next += sl.numel;
        whole.insert(whole.end(), many[r].master_slices[p].begin(), many[r].master_slices[p].end());
        EXPECT_EQ(many[r].params[p], many[0].params[p]) << "p" << p << " rank " << r;
      }
      ASSERT_EQ(whole.size(), kSizes[p]);
      for (uint64_t i = 0; i < kSizes[p]; ++i) {
        EXPECT_NEAR(whole[i], one.master_slices[p][i],
                    1e-5 * std::max(1e-2f, std::fabs(one.master_slices[p][i])))
            << "p" << p << "[" << i << "]";
        EXPECT_EQ(many[0].params[p][i], whole[i]) << "fp32 params are the gathered masters";
      }
    }
    // A param smaller than the world leaves the last ranks an empty slice.
    if (world == 3) EXPECT_EQ(many[2].slices[0].numel, 0u);
    for (int r = 0; r < world; ++r) {
      EXPECT_LE(many[r].fp32_host_bytes, one.fp32_host_bytes / world + 16 * 4096) << r;
    }
  }

  std::filesystem::path dir_;
};

TEST_F(OffloadOptimizerDpTest, Stage1TwoRanksEqualOneRank) { expect_equivalent(2, 1, false); }
TEST_F(OffloadOptimizerDpTest, Stage2ThreeRanksEqualOneRank) { expect_equivalent(3, 2, false); }
TEST_F(OffloadOptimizerDpTest, Stage2NvmeThreeRanksEqualOneRank) { expect_equivalent(3, 2, true); }
TEST_F(OffloadOptimizerDpTest, Stage1NvmeTwoRanksEqualOneRank) { expect_equivalent(2, 1, true); }
// Stage 3 with the framework's own params (kHost / kDevice): they stay whole
// (only the store's kStore params are sliced), as stage 2 treats them.
TEST_F(OffloadOptimizerDpTest, Stage3BoundParamsTwoRanksEqualOneRank) {
  expect_equivalent(2, 3, false);
}

TEST_F(OffloadOptimizerDpTest, MisuseAcrossRanks) {
  const std::vector<absl::Status> st = run_ranks(2, [&](int r, dist::Communicator* comm) {
    gpu::SimDevice device;
    // The delayed update is refused across ranks.
    OffloadOptimizerOptions dpu;
    dpu.comm = comm;
    auto created = OffloadOptimizer::create(
        parse_config_at(
            "{\"train_micro_batch_size_per_gpu\": 1, \"optimizer\": {\"type\": \"AdamW\"}, "
            "\"zero_optimization\": {\"stage\": 2, \"offload_optimizer\": {\"device\": "
            "\"cpu\"}}, \"strata\": {\"delayed_param_update\": true}}",
            2),
        &device, std::move(dpu));
    if (created.ok() || created.status().code() != absl::StatusCode::kInvalidArgument ||
        created.status().message().find("delayed_param_update") == std::string::npos) {
      return absl::InternalError(
          absl::StrCat("delayed update not refused: ", created.status().ToString()));
    }
    // A bucket reported twice without wait_grads in between.
    std::vector<float> w(10, 1.0f), g(10, 0.5f);
    STRATA_ASSIGN_OR_RETURN(auto opt, one_param_optimizer(comm, r, &device, &w, &g));
    if (opt->world_size() != 2 || opt->rank() != r) return absl::InternalError("rank info");
    STRATA_RETURN_IF_ERROR(opt->begin_step().status());
    STRATA_RETURN_IF_ERROR(opt->grad_ready(0));
    const absl::Status twice = opt->grad_ready(0);
    if (twice.code() != absl::StatusCode::kFailedPrecondition ||
        twice.message().find("wait_grads") == std::string::npos) {
      return absl::InternalError(absl::StrCat("second grad_ready: ", twice.ToString()));
    }
    STRATA_RETURN_IF_ERROR(opt->wait_grads());
    STRATA_RETURN_IF_ERROR(opt->grad_ready(0));
    return opt->finish_step().status();
  });
  for (int r = 0; r < 2; ++r) EXPECT_TRUE(st[r].ok()) << "rank " << r << ": " << st[r];
}

// A rank that abandons the step after every bucket of its micro-batch was
// reduced: the others learn it in their next micro-batch (a second one) or
// at finish_step, and the next step runs in lockstep.
TEST_F(OffloadOptimizerDpTest, AbandoningAfterTheLastReductionReachesTheOthers) {
  for (const bool at_finish : {true, false}) {
    std::vector<std::vector<float>> weights(2);
    const std::vector<absl::Status> st = run_ranks(2, [&](int r, dist::Communicator* comm) {
      gpu::SimDevice device;
      std::vector<float> w(10, 1.0f), g(10, 0.25f * (r + 1));
      STRATA_ASSIGN_OR_RETURN(auto opt, one_param_optimizer(comm, r, &device, &w, &g));
      STRATA_RETURN_IF_ERROR(opt->begin_step().status());
      STRATA_RETURN_IF_ERROR(opt->grad_ready(0));
      absl::Status failed;
      if (r == 1) {
        // Long enough for the bucket's reduction to finish first.
        std::this_thread::sleep_for(std::chrono::milliseconds(300));
        failed = opt->abort_step(absl::InternalError("framework failed"));
        if (failed.message() != "framework failed") {
          return absl::InternalError(absl::StrCat("rank 1: ", failed.ToString()));
        }
      } else {
        if (!at_finish) {
          // The next round's agreement runs on the reduction thread: this
          // micro-batch's reductions fail, and finish_step says so.
          STRATA_RETURN_IF_ERROR(opt->wait_grads());
          STRATA_RETURN_IF_ERROR(opt->grad_ready(0));
        }
        failed = opt->finish_step().status();
        if (failed.code() != absl::StatusCode::kAborted) {
          return absl::InternalError(absl::StrCat("rank 0: ", failed.ToString()));
        }
        STRATA_RETURN_IF_ERROR(opt->abort_step(failed).code() == absl::StatusCode::kAborted
                                   ? absl::OkStatus()
                                   : absl::InternalError("abort_step changed the error"));
      }
      for (int s = 0; s < 2; ++s) {
        STRATA_RETURN_IF_ERROR(opt->begin_step().status());
        STRATA_RETURN_IF_ERROR(opt->grad_ready(0));
        STRATA_RETURN_IF_ERROR(opt->finish_step().status());
      }
      weights[r] = w;
      return absl::OkStatus();
    });
    for (int r = 0; r < 2; ++r) {
      EXPECT_TRUE(st[r].ok()) << (at_finish ? "at finish_step" : "next micro-batch") << ", rank "
                              << r << ": " << st[r];
    }
    EXPECT_EQ(weights[0], weights[1]);
    EXPECT_NE(weights[0], std::vector<float>(10, 1.0f));
  }
}

// A communicator whose collectives take device memory (NCCL's kind): the
// optimizer reduces in host memory and refuses it. Only what create() asks.
class DeviceMemoryComm final : public dist::Communicator {
 public:
  int rank() const override { return 0; }
  int world_size() const override { return 2; }
  dist::Backend backend() const override { return dist::Backend::kNccl; }
  bool device_memory() const override { return true; }
  absl::Status all_reduce(void*, uint64_t, DType, dist::ReduceOp) override { return unused(); }
  absl::Status all_gather(const void*, void*, std::span<const uint64_t>, DType) override {
    return unused();
  }
  absl::Status reduce_scatter(const void*, void*, std::span<const uint64_t>, DType,
                              dist::ReduceOp) override {
    return unused();
  }
  absl::Status broadcast(void*, uint64_t, DType, int) override { return unused(); }
  absl::Status barrier() override { return unused(); }
  absl::Status all_reduce_host(std::span<double>, dist::ReduceOp) override { return unused(); }

 private:
  static absl::Status unused() { return absl::InternalError("not called by create()"); }
};

TEST_F(OffloadOptimizerDpTest, RefusesADeviceMemoryCommunicator) {
  gpu::SimDevice device;
  DeviceMemoryComm comm;
  OffloadOptimizerOptions o;
  o.comm = &comm;
  auto created = OffloadOptimizer::create(config(2, 2, false, 0), &device, std::move(o));
  ASSERT_FALSE(created.ok());
  EXPECT_EQ(created.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(created.status().message().find("Gloo"), std::string::npos) << created.status();
}

}  // namespace
}  // namespace strata::engine
