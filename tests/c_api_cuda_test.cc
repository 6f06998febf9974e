// The C API with CUDA device bindings (STRATA_DEVICE_CUDA): params and grads
// in device memory give the same params, bit for bit, as the same run over
// host bindings, in this process and through stratad. Skipped without a GPU.
#include <cuda_runtime.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "strata/strata.h"
#include "tests/stratad_test_util.h"

namespace {

constexpr const char* kConfig = R"({
  "train_micro_batch_size_per_gpu": 4,
  "gradient_accumulation_steps": 1,
  "optimizer": {"type": "AdamW", "params": {"lr": 0.05, "weight_decay": 0.01}},
  "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}
})";
constexpr size_t kNumel = 4096;
constexpr int kSteps = 4;

std::vector<float> start_values() {
  std::vector<float> v(kNumel);
  for (size_t i = 0; i < kNumel; ++i) v[i] = std::cos(0.01f * static_cast<float>(i));
  return v;
}

// kSteps of f(w) = sum(w^2) over host bindings; returns w.
std::vector<float> train_on_host() {
  strata_optimizer* opt = nullptr;
  EXPECT_EQ(strata_optimizer_create(kConfig, nullptr, &opt), STRATA_STATUS_OK)
      << strata_last_error();
  std::vector<float> w(kNumel), g(kNumel), init = start_values();
  strata_group_hparams hp;
  int group = -1, p = -1;
  EXPECT_EQ(strata_group_defaults(opt, &hp), STRATA_STATUS_OK);
  EXPECT_EQ(strata_add_group(opt, &hp, &group), STRATA_STATUS_OK);
  strata_param_desc d = {"w", kNumel, 0, group, STRATA_BINDING_HOST, w.data(), g.data()};
  EXPECT_EQ(strata_add_param(opt, &d, &p), STRATA_STATUS_OK) << strata_last_error();
  EXPECT_EQ(strata_finalize(opt), STRATA_STATUS_OK) << strata_last_error();
  EXPECT_EQ(strata_set_value(opt, p, init.data(), kNumel), STRATA_STATUS_OK);
  for (int step = 0; step < kSteps; ++step) {
    EXPECT_EQ(strata_begin_step(opt, NAN, nullptr), STRATA_STATUS_OK) << strata_last_error();
    for (size_t i = 0; i < kNumel; ++i) g[i] = 2 * w[i];
    EXPECT_EQ(strata_grad_ready(opt, 0), STRATA_STATUS_OK) << strata_last_error();
    EXPECT_EQ(strata_finish_step(opt, nullptr), STRATA_STATUS_OK) << strata_last_error();
  }
  strata_optimizer_destroy(opt);
  return w;
}

bool have_gpu() {
  int devices = 0;
  return cudaGetDeviceCount(&devices) == cudaSuccess && devices > 0;
}

// kSteps of f(w) = sum(w^2) over device bindings, in this process or, with
// a session, through stratad at `socket`; returns w.
std::vector<float> train_on_device(const char* session = nullptr, const std::string& socket = {}) {
  strata_options options;
  EXPECT_EQ(strata_options_init(&options), STRATA_STATUS_OK);
  options.device = STRATA_DEVICE_CUDA;
  options.daemon_session = session;
  if (!socket.empty()) options.daemon_socket = socket.c_str();
  strata_optimizer* opt = nullptr;
  EXPECT_EQ(strata_optimizer_create(kConfig, &options, &opt), STRATA_STATUS_OK)
      << strata_last_error();
  if (opt == nullptr) return {};
  float* w = nullptr;
  float* g = nullptr;
  EXPECT_EQ(cudaMalloc(&w, kNumel * sizeof(float)), cudaSuccess);
  EXPECT_EQ(cudaMalloc(&g, kNumel * sizeof(float)), cudaSuccess);
  strata_group_hparams hp;
  int group = -1, p = -1;
  EXPECT_EQ(strata_group_defaults(opt, &hp), STRATA_STATUS_OK);
  EXPECT_EQ(strata_add_group(opt, &hp, &group), STRATA_STATUS_OK);
  strata_param_desc d = {"w", kNumel, 0, group, STRATA_BINDING_DEVICE, w, g};
  EXPECT_EQ(strata_add_param(opt, &d, &p), STRATA_STATUS_OK) << strata_last_error();
  EXPECT_EQ(strata_finalize(opt), STRATA_STATUS_OK) << strata_last_error();
  const std::vector<float> init = start_values();
  EXPECT_EQ(strata_set_value(opt, p, init.data(), kNumel), STRATA_STATUS_OK) << strata_last_error();
  EXPECT_EQ(strata_wait_params(opt, 0), STRATA_STATUS_OK) << strata_last_error();

  std::vector<float> host(kNumel), grad(kNumel);
  for (int step = 0; step < kSteps; ++step) {
    EXPECT_EQ(strata_begin_step(opt, NAN, nullptr), STRATA_STATUS_OK) << strata_last_error();
    // The "backward": read w, write 2w into the device grad, synchronously.
    EXPECT_EQ(cudaMemcpy(host.data(), w, kNumel * sizeof(float), cudaMemcpyDeviceToHost),
              cudaSuccess);
    for (size_t i = 0; i < kNumel; ++i) grad[i] = 2 * host[i];
    EXPECT_EQ(cudaMemcpy(g, grad.data(), kNumel * sizeof(float), cudaMemcpyHostToDevice),
              cudaSuccess);
    EXPECT_EQ(strata_grad_ready(opt, 0), STRATA_STATUS_OK) << strata_last_error();
    EXPECT_EQ(strata_finish_step(opt, nullptr), STRATA_STATUS_OK) << strata_last_error();
    EXPECT_EQ(strata_wait_params(opt, 0), STRATA_STATUS_OK) << strata_last_error();
  }
  EXPECT_EQ(cudaMemcpy(host.data(), w, kNumel * sizeof(float), cudaMemcpyDeviceToHost),
            cudaSuccess);
  strata_optimizer_destroy(opt);
  cudaFree(w);
  cudaFree(g);
  EXPECT_NE(host[0], init[0]);  // it trained
  return host;
}

TEST(CApiCudaTest, DeviceBindingsTrainAsHostBindings) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  EXPECT_EQ(train_on_device(), train_on_host());
}

// Through stratad (options.daemon_session): the session's arena is pinned
// and crossed by the device copies; the params end as in-process.
TEST(CApiCudaTest, DeviceBindingsThroughStratadTrainAsInProcess) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  const std::filesystem::path dir = std::filesystem::path(::testing::TempDir()) /
                                    ("c_api_cuda_daemon_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  {
    strata::testing::StratadProcess d(dir);
    EXPECT_EQ(train_on_device("cuda_dev", d.socket()), train_on_device());
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
