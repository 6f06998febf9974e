// model/checkpoint_export: a checkpoint of the MLP test model (no GPT-2
// model recorded) exported under strata's names holds exactly the engine's
// fp32 master weights (and their bf16 rounding); Hugging Face names are
// refused without a recorded model; the output is never one of the
// checkpoint's own files; a damaged tensor leaves no file behind.
#include "model/checkpoint_export.h"

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/file_util.h"
#include "core/safetensors.h"
#include "engine/training_engine.h"
#include "gpu/sim_device.h"
#include "gtest/gtest.h"
#include "tests/cli_test_util.h"
#include "tests/mlp_test_model.h"
#include "tests/test_ds_config.h"

namespace strata::model {
namespace {

namespace fs = std::filesystem;
using strata::testing::ScratchDir;
using strata::testing::slurp;
using test_models::MlpTestModel;

class CheckpointExportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    engine::EngineOptions o;
    o.allow_buffered_io = true;
    auto e = engine::TrainingEngine::create(
        strata::testing::parse_test_config(
            R"({"train_micro_batch_size_per_gpu": 32, "gradient_accumulation_steps": 1,
                "optimizer": {"type": "AdamW", "params": {"lr": 0.01}},
                "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}})"),
        &model_, &device_, std::move(o));
    ASSERT_TRUE(e.ok()) << e.status();
    engine_ = std::move(*e);
    ASSERT_TRUE(engine_->train_step().ok());
    ASSERT_TRUE(engine_->train_step().ok());
    ASSERT_TRUE(engine_->save_checkpoint(ckpt()).ok());
  }
  std::string ckpt() const { return dir_.path() + "/ckpt"; }

  ScratchDir dir_{"strata_checkpoint_export_test_"};
  MlpTestModel model_;
  gpu::SimDevice device_;
  std::unique_ptr<engine::TrainingEngine> engine_;
};

TEST_F(CheckpointExportTest, ExportsTheMasterWeightsUnderStrataNames) {
  const std::string out = dir_.path() + "/m.safetensors";
  auto r = export_checkpoint(ckpt(), {.to = out});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->names, Gpt2Names::kStrata);
  EXPECT_EQ(r->steps, 2);
  EXPECT_EQ(r->tensors, 6u);
  EXPECT_EQ(r->bytes, fs::file_size(out));
  auto file = safetensors::Reader::open(out);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->metadata().at("strata.steps"), "2");
  for (int l = 0; l < 3; ++l) {
    for (int p = 0; p < 2; ++p) {
      auto want = engine_->read_fp32(l, p, engine::StateKind::kMaster);
      ASSERT_TRUE(want.ok());
      const std::string name = "layer" + std::to_string(l) + (p == 0 ? ".w" : ".b");
      const safetensors::TensorInfo* t = (*file)->find(name);
      ASSERT_NE(t, nullptr) << name;
      std::vector<float> got(t->numel());
      ASSERT_TRUE((*file)->to_fp32(*t, got.data()).ok());
      EXPECT_EQ(got, *want) << name;
    }
  }

  // bf16: the same weights, rounded.
  r = export_checkpoint(ckpt(), {.to = out, .dtype = DType::kBFloat16});
  ASSERT_TRUE(r.ok()) << r.status();
  file = safetensors::Reader::open(out);
  ASSERT_TRUE(file.ok());
  auto want = engine_->read_fp32(1, 0, engine::StateKind::kMaster);
  std::vector<uint16_t> rounded(want->size());
  convert_fp32_to_bf16(want->data(), rounded.data(), want->size());
  std::vector<float> expected(want->size()), got(want->size());
  convert_bf16_to_fp32(rounded.data(), expected.data(), want->size());
  ASSERT_TRUE((*file)->to_fp32(*(*file)->find("layer1.w"), got.data()).ok());
  EXPECT_EQ(got, expected);
}

TEST_F(CheckpointExportTest, RefusesHfNamesWithoutAModelAndItsOwnInputs) {
  const absl::Status hf =
      export_checkpoint(ckpt(), {.to = dir_.path() + "/x", .names = Gpt2Names::kHf}).status();
  EXPECT_EQ(hf.code(), absl::StatusCode::kFailedPrecondition) << hf;
  EXPECT_NE(hf.message().find("--names strata"), std::string::npos) << hf;

  const std::string bin = slurp(ckpt() + "/tensors.bin");
  for (const char* f : {"/tensors.bin", "/meta.json"}) {
    const absl::Status s = export_checkpoint(ckpt(), {.to = ckpt() + f}).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
    EXPECT_NE(s.message().find("an input"), std::string::npos) << s;
  }
  EXPECT_TRUE(slurp(ckpt() + "/tensors.bin") == bin);
  EXPECT_TRUE(engine_->load_checkpoint(ckpt()).ok());
}

TEST_F(CheckpointExportTest, DamagedTensorLeavesNoFile) {
  auto ck = engine::read_checkpoint(ckpt());
  ASSERT_TRUE(ck.ok()) << ck.status();
  {
    std::fstream f(ckpt() + "/tensors.bin", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(ck->params[4].tensors[0].offset + 3));
    f.put('\x7f');
  }
  const std::string out = dir_.path() + "/out/m.safetensors";
  fs::create_directories(dir_.path() + "/out");
  const absl::Status s = export_checkpoint(ckpt(), {.to = out}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_NE(s.message().find("checksum mismatch for tensor layer2.w"), std::string::npos) << s;
  EXPECT_TRUE(fs::is_empty(dir_.path() + "/out"));
}

}  // namespace
}  // namespace strata::model
