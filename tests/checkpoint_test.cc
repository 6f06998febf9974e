// TrainingEngine checkpoints on SimDevice with the MLP test model: a resumed
// run matches an uninterrupted one bit for bit (host and NVMe offload), and a
// damaged, foreign or half-written checkpoint is refused with a named cause.
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "core/config/ds_config.h"
#include "core/file_util.h"
#include "engine/training_engine.h"
#include "gpu/sim_device.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/mlp_test_model.h"
#include "tests/test_ds_config.h"

namespace strata::engine {
namespace {

namespace fs = std::filesystem;
using test_models::MlpTestModel;

constexpr int kLayers = 3;

class CheckpointFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) / ("checkpoint_" + std::to_string(getpid()) + "_" +
                                             std::to_string(reinterpret_cast<uintptr_t>(this)));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // fp16 with a warm-up LR schedule (so the restored iteration matters),
  // optimizer offloaded to the host or to NVMe under dir_.
  config::DsConfig make_config(bool nvme) {
    const std::string offload =
        nvme ? "{\"device\": \"nvme\", \"nvme_path\": \"" + (dir_ / "swap").string() + "\"}"
             : "{\"device\": \"cpu\"}";
    const std::string json =
        "{\"train_micro_batch_size_per_gpu\": 32, \"gradient_accumulation_steps\": 2, "
        "\"optimizer\": {\"type\": \"AdamW\", \"params\": {\"lr\": 0.01}}, "
        "\"scheduler\": {\"type\": \"WarmupLR\", \"params\": {\"warmup_num_steps\": 10}}, "
        "\"fp16\": {\"enabled\": true, \"initial_scale_power\": 10}, "
        "\"strata\": {\"overlap\": \"sync\", \"prefetch_window_bytes\": 4096}, "
        "\"zero_optimization\": {\"stage\": 2, \"offload_optimizer\": " +
        offload + "}}";
    return strata::testing::parse_test_config(json);
  }

  std::unique_ptr<TrainingEngine> make_engine(MlpTestModel* model, bool nvme = false) {
    EngineOptions o;
    o.allow_buffered_io = true;  // TempDir may be tmpfs
    auto e = TrainingEngine::create(make_config(nvme), model, &device_, std::move(o));
    EXPECT_TRUE(e.ok()) << e.status();
    return e.ok() ? std::move(*e) : nullptr;
  }

  static std::vector<float> all(TrainingEngine& e, StateKind kind) {
    std::vector<float> out;
    for (int l = 0; l < kLayers; ++l) {
      for (int p = 0; p < 2; ++p) {
        auto v = e.read_fp32(l, p, kind);
        EXPECT_TRUE(v.ok()) << v.status();
        if (v.ok()) out.insert(out.end(), v->begin(), v->end());
      }
    }
    return out;
  }

  static std::vector<double> train(TrainingEngine& e, int steps) {
    std::vector<double> losses;
    for (int s = 0; s < steps; ++s) {
      auto st = e.train_step();
      EXPECT_TRUE(st.ok()) << st.status();
      if (!st.ok()) break;
      losses.push_back(st->loss);
    }
    return losses;
  }

  // A checkpoint of a fresh engine trained `steps` steps, at ckpt().
  void save_after(int steps) {
    MlpTestModel model;
    auto e = make_engine(&model);
    ASSERT_NE(e, nullptr);
    train(*e, steps);
    ASSERT_TRUE(e->save_checkpoint(ckpt()).ok());
  }

  std::string ckpt() const { return (dir_ / "ckpt").string(); }

  fs::path dir_;
  gpu::SimDevice device_;
};

class CheckpointTest : public CheckpointFixture, public ::testing::WithParamInterface<bool> {};

// Six uninterrupted steps vs three, save, load into a fresh engine and model,
// three more: the same losses for steps 4-6 and the same weights and states,
// bit for bit. The LR warm-up, the loss scale and the micro-batch index (which
// picks the data) all have to be restored for this to hold.
TEST_P(CheckpointTest, ResumedRunIsBitwiseIdentical) {
  const bool nvme = GetParam();
  std::vector<double> ref_loss;
  std::vector<float> ref_master, ref_m, ref_v, ref_param;
  double ref_scale = 0;
  {
    MlpTestModel model;
    auto e = make_engine(&model, nvme);
    ASSERT_NE(e, nullptr);
    ref_loss = train(*e, 6);
    ASSERT_EQ(ref_loss.size(), 6u);
    ref_master = all(*e, StateKind::kMaster);
    ref_m = all(*e, StateKind::kExpAvg);
    ref_v = all(*e, StateKind::kExpAvgSq);
    auto p = e->read_param(2, 0);
    ASSERT_TRUE(p.ok());
    ref_param = *p;
    ref_scale = e->loss_scaler()->scale();
  }
  std::vector<double> first;
  {
    MlpTestModel model;
    auto e = make_engine(&model, nvme);
    ASSERT_NE(e, nullptr);
    first = train(*e, 3);
    const absl::Status s = e->save_checkpoint(ckpt());
    ASSERT_TRUE(s.ok()) << s;
  }
  for (int i = 0; i < 3; ++i) EXPECT_EQ(first[i], ref_loss[i]) << "step " << i + 1;
  EXPECT_TRUE(fs::exists(fs::path(ckpt()) / "meta.json"));
  EXPECT_TRUE(fs::exists(fs::path(ckpt()) / "tensors.bin"));

  MlpTestModel model;
  auto e = make_engine(&model, nvme);
  ASSERT_NE(e, nullptr);
  const absl::Status s = e->load_checkpoint(ckpt());
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(e->steps(), 3);
  for (int i = 3; i < 6; ++i) {
    auto st = e->train_step();
    ASSERT_TRUE(st.ok()) << st.status();
    EXPECT_EQ(st->step, i + 1);
    EXPECT_EQ(st->loss, ref_loss[i]) << "step " << i + 1;
  }
  EXPECT_EQ(all(*e, StateKind::kMaster), ref_master);
  EXPECT_EQ(all(*e, StateKind::kExpAvg), ref_m);
  EXPECT_EQ(all(*e, StateKind::kExpAvgSq), ref_v);
  auto p = e->read_param(2, 0);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(*p, ref_param);
  EXPECT_EQ(e->loss_scaler()->scale(), ref_scale);
}

// An asynchronous save taken after step 3 writes the very files a
// synchronous save at that point writes, although training has moved on to
// step 6 while it was written; and the engine then resumes from it.
TEST_P(CheckpointTest, AsyncSaveWritesTheSnapshotWhileTrainingGoesOn) {
  const bool nvme = GetParam();
  const std::string sync_dir = (dir_ / "sync").string(), async_dir = (dir_ / "async").string();
  MlpTestModel model;
  auto e = make_engine(&model, nvme);
  ASSERT_NE(e, nullptr);
  train(*e, 3);
  ASSERT_TRUE(e->save_checkpoint(sync_dir).ok());
  ASSERT_TRUE(e->save_checkpoint_async(async_dir).ok());
  const std::vector<double> later = train(*e, 3);  // overlaps the write
  ASSERT_EQ(later.size(), 3u);
  const absl::Status s = e->wait_for_checkpoint();
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_TRUE(e->wait_for_checkpoint().ok());  // nothing pending: OK
  auto read = [](const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  for (const char* f : {"tensors.bin", "meta.json"}) {
    const std::string a = read(fs::path(sync_dir) / f), b = read(fs::path(async_dir) / f);
    EXPECT_FALSE(a.empty()) << f;
    EXPECT_TRUE(a == b) << f << " differs between the synchronous and the asynchronous save";
  }
  EXPECT_FALSE(fs::exists(async_dir + ".tmp-" + std::to_string(getpid())));

  MlpTestModel fresh;
  auto resumed = make_engine(&fresh, nvme);
  ASSERT_NE(resumed, nullptr);
  ASSERT_TRUE(resumed->load_checkpoint(async_dir).ok());
  EXPECT_EQ(train(*resumed, 3), later);
}

INSTANTIATE_TEST_SUITE_P(Offload, CheckpointTest, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "Nvme" : "Cpu"; });

using CheckpointErrorTest = CheckpointFixture;

// A flipped byte inside one tensor fails the load, naming that tensor and the
// file, and leaves the engine untouched.
TEST_F(CheckpointErrorTest, CorruptTensorIsNamedAndNothingIsLoaded) {
  save_after(2);
  auto meta_text = read_file((fs::path(ckpt()) / "meta.json").string());
  ASSERT_TRUE(meta_text.ok()) << meta_text.status();
  const auto meta = nlohmann::json::parse(*meta_text);
  const auto& entry = meta.at("params").at(2);  // layer 1, "w"
  ASSERT_EQ(entry.at("layer"), 1);
  ASSERT_EQ(entry.at("name"), "w");
  const uint64_t offset = entry.at("exp_avg").at("offset").get<uint64_t>() + 5;
  {
    std::fstream f(fs::path(ckpt()) / "tensors.bin",
                   std::ios::in | std::ios::out | std::ios::binary);
    ASSERT_TRUE(f.good());
    f.seekg(static_cast<std::streamoff>(offset));
    char c = 0;
    f.read(&c, 1);
    c = static_cast<char>(c ^ 0x40);
    f.seekp(static_cast<std::streamoff>(offset));
    f.write(&c, 1);
  }
  MlpTestModel model;
  auto e = make_engine(&model);
  ASSERT_NE(e, nullptr);
  const std::vector<float> before = all(*e, StateKind::kMaster);
  const absl::Status s = e->load_checkpoint(ckpt());
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_NE(s.message().find("layer1.w.exp_avg"), absl::string_view::npos) << s;
  EXPECT_NE(s.message().find("tensors.bin"), absl::string_view::npos) << s;
  EXPECT_EQ(e->steps(), 0);
  EXPECT_EQ(all(*e, StateKind::kMaster), before);
}

// A leftover DIR.tmp-<pid> from a killed save does not affect loading DIR, nor
// a later save; a save killed between its two renames leaves DIR.old, which
// load falls back to.
TEST_F(CheckpointErrorTest, InterruptedSavesLeaveALoadableCheckpoint) {
  save_after(2);
  const fs::path junk = ckpt() + ".tmp-999999";
  fs::create_directories(junk);
  std::ofstream(junk / "meta.json") << "{ half a file";
  std::ofstream(junk / "tensors.bin") << "junk";
  {
    MlpTestModel model;
    auto e = make_engine(&model);
    ASSERT_NE(e, nullptr);
    const absl::Status s = e->load_checkpoint(ckpt());
    ASSERT_TRUE(s.ok()) << s;
    EXPECT_EQ(e->steps(), 2);
    train(*e, 1);
    const absl::Status s2 = e->save_checkpoint(ckpt());  // replaces the previous one
    ASSERT_TRUE(s2.ok()) << s2;
    EXPECT_FALSE(fs::exists(ckpt() + ".old"));
  }
  fs::rename(ckpt(), ckpt() + ".old");  // killed after moving the previous one aside
  MlpTestModel model;
  auto e = make_engine(&model);
  ASSERT_NE(e, nullptr);
  const absl::Status s = e->load_checkpoint(ckpt());
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(e->steps(), 3);
}

// A checkpoint of a different model is refused, naming the first mismatch;
// missing directories and files are named too.
TEST_F(CheckpointErrorTest, WrongModelAndMissingFilesAreRefused) {
  save_after(1);
  {
    MlpTestModel model({16, 24, 32, 4});
    auto e = make_engine(&model);
    ASSERT_NE(e, nullptr);
    const absl::Status s = e->load_checkpoint(ckpt());
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
    EXPECT_NE(s.message().find("parameter table mismatch at entry 0"), absl::string_view::npos)
        << s;
    EXPECT_NE(s.message().find("layer 0 param 0 (w, 384 elements)"), absl::string_view::npos) << s;
    EXPECT_EQ(e->steps(), 0);
  }
  {
    MlpTestModel model({16, 32, 32, 32, 4});  // one more layer
    auto e = make_engine(&model);
    ASSERT_NE(e, nullptr);
    const absl::Status s = e->load_checkpoint(ckpt());
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
    EXPECT_NE(s.message().find("mismatch at entry 4"), absl::string_view::npos) << s;
  }
  MlpTestModel model;
  auto e = make_engine(&model);
  ASSERT_NE(e, nullptr);
  const absl::Status missing_dir = e->load_checkpoint((dir_ / "nope").string());
  EXPECT_EQ(missing_dir.code(), absl::StatusCode::kNotFound) << missing_dir;
  EXPECT_NE(missing_dir.message().find("nope"), absl::string_view::npos) << missing_dir;

  fs::remove(fs::path(ckpt()) / "tensors.bin");
  const absl::Status missing_file = e->load_checkpoint(ckpt());
  EXPECT_FALSE(missing_file.ok());
  EXPECT_NE(missing_file.message().find("tensors.bin"), absl::string_view::npos) << missing_file;

  std::ofstream(fs::path(ckpt()) / "meta.json") << "{\"format\": \"strata-checkpoint\", "
                                                   "\"format_version\": 99}";
  const absl::Status version = e->load_checkpoint(ckpt());
  EXPECT_EQ(version.code(), absl::StatusCode::kFailedPrecondition) << version;
  EXPECT_NE(version.message().find("format version 99"), absl::string_view::npos) << version;
  EXPECT_EQ(e->steps(), 0);
}

}  // namespace
}  // namespace strata::engine
