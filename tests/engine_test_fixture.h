// The TrainingEngine tests' fixture: a scratch directory, ds_configs built
// from JSON members, engines on one SimDevice with a constant learning rate,
// and readers of every fp32 tensor of the three-layer MlpTestModel.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "core/config/ds_config.h"
#include "engine/training_engine.h"
#include "gpu/sim_device.h"
#include "gtest/gtest.h"
#include "tests/mlp_test_model.h"
#include "tests/test_ds_config.h"

namespace strata::engine {

using test_models::MlpTestModel;

// Constant learning rate; counts applied steps (lr_schedule.cc is tested on its own).
class ConstantLr final : public LrSchedule {
 public:
  explicit ConstantLr(double lr) : lr_(lr) {}
  double lr() const override { return lr_; }
  void advance() override { ++iteration_; }
  int64_t iteration() const override { return iteration_; }
  void set_iteration(int64_t iteration) override { iteration_ = iteration; }

 private:
  double lr_;
  int64_t iteration_ = 0;
};

class TrainingEngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           ("training_engine_" + std::to_string(getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // A ds_config with the given zero / fp16 / extra top-level JSON members.
  config::DsConfig make_config(const std::string& members, int gas = 2) {
    const std::string json =
        "{\"train_micro_batch_size_per_gpu\": 32, \"gradient_accumulation_steps\": " +
        std::to_string(gas) +
        ", \"optimizer\": {\"type\": \"AdamW\", \"params\": {\"lr\": 0.01}}, "
        "\"strata\": {\"overlap\": \"sync\", \"prefetch_window_bytes\": 4096}" +
        (members.empty() ? "" : ", " + members) + "}";
    return strata::testing::parse_test_config(json);
  }

  absl::StatusOr<std::unique_ptr<TrainingEngine>> make_engine(const config::DsConfig& cfg,
                                                              MlpTestModel* model,
                                                              EngineOptions o = {},
                                                              bool constant_lr = true) {
    if (constant_lr) o.lr_schedule = std::make_unique<ConstantLr>(cfg.optimizer.lr);
    o.allow_buffered_io = true;  // TempDir may be tmpfs
    return TrainingEngine::create(cfg, model, &device_, std::move(o));
  }

  std::string nvme_zero() const {
    return "\"zero_optimization\": {\"stage\": 2, \"offload_optimizer\": {\"device\": \"nvme\", "
           "\"nvme_path\": \"" +
           dir_.string() + "\"}}";
  }

  // Every fp32 tensor of the engine, concatenated.
  static std::vector<float> all(TrainingEngine& e, StateKind kind) {
    std::vector<float> out;
    for (int l = 0; l < 3; ++l) {
      for (int p = 0; p < 2; ++p) {
        auto v = e.read_fp32(l, p, kind);
        EXPECT_TRUE(v.ok()) << v.status();
        if (v.ok()) out.insert(out.end(), v->begin(), v->end());
      }
    }
    return out;
  }

  std::filesystem::path dir_;
  gpu::SimDevice device_;
};

inline constexpr const char* kCpuZero =
    "\"zero_optimization\": {\"stage\": 2, \"offload_optimizer\": {\"device\": \"cpu\"}}";
inline constexpr const char* kFp16 = "\"fp16\": {\"enabled\": true, \"initial_scale_power\": 10}";

struct TrainRun {
  std::vector<double> loss;
  std::vector<float> master;
  StepStats last;
  int64_t skipped = 0;
};

}  // namespace strata::engine
