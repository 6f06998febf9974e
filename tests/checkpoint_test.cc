// TrainingEngine checkpoints on SimDevice with the MLP test model: a resumed
// run matches an uninterrupted one bit for bit (host and NVMe offload), and a
// damaged, foreign or half-written checkpoint is refused with a named cause.
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <tuple>
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
  // `sync`: strata.overlap "sync"; otherwise the default mode (overlap).
  config::DsConfig make_config(bool nvme, bool sync = true, const std::string& optimizer = "AdamW",
                               int stage = 2) {
    const std::string offload =
        nvme ? "{\"device\": \"nvme\", \"nvme_path\": \"" + (dir_ / "swap").string() + "\"}"
             : "{\"device\": \"cpu\"}";
    const std::string json =
        "{\"train_micro_batch_size_per_gpu\": 32, \"gradient_accumulation_steps\": 2, "
        "\"optimizer\": {\"type\": \"" +
        optimizer +
        "\", \"params\": {\"lr\": 0.01}}, "
        "\"scheduler\": {\"type\": \"WarmupLR\", \"params\": {\"warmup_num_steps\": 10}}, "
        "\"fp16\": {\"enabled\": true, \"initial_scale_power\": 10}, "
        "\"strata\": {" +
        std::string(sync ? "\"overlap\": \"sync\", " : "") +
        "\"prefetch_window_bytes\": 4096}, "
        "\"zero_optimization\": {\"stage\": " +
        std::to_string(stage) + ", \"offload_optimizer\": " + offload + "}}";
    return strata::testing::parse_test_config(json);
  }

  std::unique_ptr<TrainingEngine> make_engine(MlpTestModel* model, bool nvme = false,
                                              bool sync = true) {
    return make_engine_with(make_config(nvme, sync), model);
  }
  std::unique_ptr<TrainingEngine> make_engine_with(const config::DsConfig& config,
                                                   MlpTestModel* model) {
    EngineOptions o;
    o.allow_buffered_io = true;  // TempDir may be tmpfs
    auto e = TrainingEngine::create(config, model, &device_, std::move(o));
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

// (NVMe offload, sync mode): both placements in the default mode (overlap)
// and in sync mode.
class CheckpointTest : public CheckpointFixture,
                       public ::testing::WithParamInterface<std::tuple<bool, bool>> {
 protected:
  bool nvme() const { return std::get<0>(GetParam()); }
  bool sync() const { return std::get<1>(GetParam()); }
};

// Six uninterrupted steps vs three, save, load into a fresh engine and model,
// three more: the same losses for steps 4-6 and the same weights and states,
// bit for bit. The LR warm-up, the loss scale and the micro-batch index (which
// picks the data) all have to be restored for this to hold.
TEST_P(CheckpointTest, ResumedRunIsBitwiseIdentical) {
  const bool nvme = this->nvme();
  std::vector<double> ref_loss;
  std::vector<float> ref_master, ref_m, ref_v, ref_param;
  double ref_scale = 0;
  {
    MlpTestModel model;
    auto e = make_engine(&model, nvme, sync());
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
    auto e = make_engine(&model, nvme, sync());
    ASSERT_NE(e, nullptr);
    first = train(*e, 3);
    const absl::Status s = e->save_checkpoint(ckpt());
    ASSERT_TRUE(s.ok()) << s;
  }
  for (int i = 0; i < 3; ++i) EXPECT_EQ(first[i], ref_loss[i]) << "step " << i + 1;
  EXPECT_TRUE(fs::exists(fs::path(ckpt()) / "meta.json"));
  EXPECT_TRUE(fs::exists(fs::path(ckpt()) / "tensors.bin"));

  MlpTestModel model;
  auto e = make_engine(&model, nvme, sync());
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
  const bool nvme = this->nvme();
  const std::string sync_dir = (dir_ / "sync").string(), async_dir = (dir_ / "async").string();
  MlpTestModel model;
  auto e = make_engine(&model, nvme, sync());
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
  auto resumed = make_engine(&fresh, nvme, sync());
  ASSERT_NE(resumed, nullptr);
  ASSERT_TRUE(resumed->load_checkpoint(async_dir).ok());
  EXPECT_EQ(train(*resumed, 3), later);
}

INSTANTIATE_TEST_SUITE_P(Offload, CheckpointTest,
                         ::testing::Combine(::testing::Bool(), ::testing::Bool()),
                         [](const auto& info) {
                           return std::string(std::get<0>(info.param) ? "Nvme" : "Cpu") +
                                  (std::get<1>(info.param) ? "Sync" : "Overlap");
                         });

using CheckpointErrorTest = CheckpointFixture;

// User metadata holding bytes that are not UTF-8 (a --vocab path in a
// Latin-1 folder) must not lose the save: nlohmann's dump throws on them.
// The save (synchronous and background) succeeds, the bytes replaced.
TEST_F(CheckpointErrorTest, NonUtf8UserMetadataDoesNotLoseTheSave) {
  MlpTestModel model;
  auto e = make_engine(&model);
  ASSERT_NE(e, nullptr);
  train(*e, 1);
  e->set_checkpoint_user_metadata({{"vocab", "/data/caf\xe9/vocab.json"}});
  const absl::Status sync = e->save_checkpoint(ckpt());
  ASSERT_TRUE(sync.ok()) << sync;
  ASSERT_TRUE(e->save_checkpoint_async((dir_ / "async").string()).ok());
  const absl::Status async = e->wait_for_checkpoint();
  ASSERT_TRUE(async.ok()) << async;
  for (const std::string& dir : {ckpt(), (dir_ / "async").string()}) {
    auto user = TrainingEngine::read_checkpoint_user_metadata(dir);
    ASSERT_TRUE(user.ok()) << user.status();
    EXPECT_EQ(user->value("vocab", "").rfind("/data/caf", 0), 0u) << user->dump();
  }
}

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

  const std::string file = (dir_ / "a_file").string();
  std::ofstream(file) << "x";
  const absl::Status not_dir = e->load_checkpoint(file);
  EXPECT_EQ(not_dir.code(), absl::StatusCode::kInvalidArgument) << not_dir;
  EXPECT_NE(not_dir.message().find("is not a directory"), absl::string_view::npos) << not_dir;

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

// meta.json edited by hand or damaged: wrong JSON types anywhere, counters
// and loss-scaler state that are nonsense, sizes that do not fit tensors.bin
// or the machine. Each load fails with an error naming the file and the key
// (no exception, no bad_alloc) and leaves the engine as it was.
TEST_F(CheckpointErrorTest, DamagedMetaJsonIsRefusedNamingTheKey) {
  save_after(3);
  const std::string meta_path = (fs::path(ckpt()) / "meta.json").string();
  auto text = read_file(meta_path);
  ASSERT_TRUE(text.ok()) << text.status();
  const nlohmann::json good = nlohmann::json::parse(*text);
  ASSERT_EQ(good.at("steps"), 3);
  ASSERT_EQ(good.at("optimizer"), "AdamW");
  ASSERT_EQ(good.at("zero_stage"), 2);
  struct Case {
    std::string pointer;  // JSON pointer of the edited value
    nlohmann::json value;
    std::string key;  // what the message must name
  };
  const uint64_t huge = uint64_t{1} << 50;
  const std::vector<Case> cases = {
      {"/steps", "3", "steps"},
      {"/steps", -1, "steps"},
      {"/steps", nlohmann::json::array(), "steps"},
      {"/steps", 1e300, "steps"},
      {"/optimizer_steps", 4, "optimizer_steps"},
      {"/micro_batches", 2, "micro_batches"},
      {"/lr_schedule_iteration", nullptr, "lr_schedule_iteration"},
      {"/lr_schedule_iteration", 1000, "lr_schedule_iteration"},
      {"/format_version", "1", "format_version"},
      {"/compute_dtype", "fp64", "compute_dtype"},
      {"/optimizer", 5, "optimizer"},
      {"/zero_stage", 7, "zero_stage"},
      {"/tensor_file", "../meta.json", "tensor_file"},
      {"/loss_scaler", "x", "loss_scaler"},
      {"/loss_scaler/scale", 0, "loss_scaler.scale"},
      {"/loss_scaler/scale", -1024, "loss_scaler.scale"},
      {"/loss_scaler/scale", "nan", "loss_scaler.scale"},
      {"/loss_scaler/scale", 1e300, "loss_scaler.scale"},
      {"/loss_scaler/hysteresis", -1, "loss_scaler.hysteresis"},
      {"/loss_scaler/iteration", 99, "loss_scaler.iteration"},
      {"/loss_scaler/last_overflow_iteration", -7, "loss_scaler.last_overflow_iteration"},
      {"/loss_scaler/skipped", -3, "loss_scaler.skipped"},
      {"/loss_scaler/skipped", 1000000, "loss_scaler.skipped"},
      {"/params", nlohmann::json::object(), "params"},
      {"/params/0", 5, "params[0]"},
      {"/params/0/numel", "384", "params[0].numel"},
      {"/params/0/numel", 385, "params[0].master.bytes"},
      {"/params/0/name", 7, "params[0].name"},
      {"/params/0/layer", -1, "params[0].layer"},
      {"/params/1/master", nlohmann::json::array(), "params[1].master"},
      {"/params/1/master/offset", -8, "params[1].master.offset"},
      {"/params/1/master/offset", uint64_t{1} << 40, "params[1].master"},
      {"/params/1/exp_avg/bytes", "128", "params[1].exp_avg.bytes"},
      {"/params/1/exp_avg/xxh3", 12, "params[1].exp_avg.xxh3"},
      {"/params/1/exp_avg/xxh3", "zz", "params[1].exp_avg.xxh3"},
  };
  MlpTestModel model;
  auto e = make_engine(&model);
  ASSERT_NE(e, nullptr);
  const std::vector<float> before = all(*e, StateKind::kMaster);
  for (const Case& c : cases) {
    nlohmann::json bad = good;
    bad[nlohmann::json::json_pointer(c.pointer)] = c.value;
    ASSERT_TRUE(write_file_atomic(meta_path, bad.dump()).ok());
    const absl::Status s = e->load_checkpoint(ckpt());
    EXPECT_FALSE(s.ok()) << c.pointer << " = " << c.value.dump();
    EXPECT_NE(s.message().find("meta.json"), absl::string_view::npos) << s;
    EXPECT_NE(s.message().find(c.key), absl::string_view::npos) << c.pointer << ": " << s;
    EXPECT_EQ(e->steps(), 0);
    EXPECT_EQ(TrainingEngine::read_checkpoint_user_metadata(ckpt()).ok(), false) << c.pointer;
  }

  // A numel of 2^50 with matching byte counts: far past the end of the file
  // (checked before anything is allocated).
  nlohmann::json bad = good;
  for (const char* kind : {"master", "exp_avg", "exp_avg_sq"}) {
    bad["params"][0][kind]["bytes"] = huge * 4;
  }
  bad["params"][0]["compute"]["bytes"] = huge * 2;
  bad["params"][0]["numel"] = huge;
  ASSERT_TRUE(write_file_atomic(meta_path, bad.dump()).ok());
  absl::Status s = e->load_checkpoint(ckpt());
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_NE(s.message().find("run past the end of"), absl::string_view::npos) << s;

  // Nested 100000 deep: refused by the depth-limited parser, not a stack
  // overflow.
  std::string deep = good.dump();
  deep.pop_back();
  deep += ", \"user\": " + std::string(100000, '[') + std::string(100000, ']') + "}";
  ASSERT_TRUE(write_file_atomic(meta_path, deep).ok());
  s = e->load_checkpoint(ckpt());
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_NE(s.message().find("nested"), absl::string_view::npos) << s;

  // Not JSON at all; and the original again loads.
  ASSERT_TRUE(write_file_atomic(meta_path, "{\"format\": ").ok());
  EXPECT_EQ(e->load_checkpoint(ckpt()).code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(all(*e, StateKind::kMaster), before);
  ASSERT_TRUE(write_file_atomic(meta_path, good.dump()).ok());
  s = e->load_checkpoint(ckpt());
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(e->steps(), 3);
}

// A FIFO in place of tensors.bin or meta.json is refused at once, never
// waited on.
TEST_F(CheckpointErrorTest, FifoInPlaceOfAFileIsRefusedNotWaitedOn) {
  save_after(1);
  MlpTestModel model;
  auto e = make_engine(&model);
  ASSERT_NE(e, nullptr);
  for (const char* name : {"tensors.bin", "meta.json"}) {
    const fs::path p = fs::path(ckpt()) / name;
    const fs::path aside = p.string() + ".aside";
    fs::rename(p, aside);
    ASSERT_EQ(::mkfifo(p.c_str(), 0600), 0);
    const absl::Status s = e->load_checkpoint(ckpt());
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_NE(s.message().find(name), absl::string_view::npos) << s;
    EXPECT_NE(s.message().find("not a regular file"), absl::string_view::npos) << s;
    fs::remove(p);
    fs::rename(aside, p);
  }
  EXPECT_TRUE(e->load_checkpoint(ckpt()).ok());
}

// Resuming with another optimizer or ZeRO stage is refused, saying what was
// saved and what runs now; loading only the weights (sampling) is not.
TEST_F(CheckpointErrorTest, ResumeWithAnotherOptimizerOrStageIsRefused) {
  save_after(2);
  {
    MlpTestModel model;
    auto e = make_engine_with(make_config(false, true, "Lion"), &model);
    ASSERT_NE(e, nullptr);
    const absl::Status s = e->load_checkpoint(ckpt());
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
    EXPECT_NE(s.message().find("saved with optimizer AdamW, this run uses Lion"),
              absl::string_view::npos)
        << s;
    EXPECT_EQ(e->steps(), 0);
    const absl::Status w = e->load_checkpoint(ckpt(), TrainingEngine::CheckpointUse::kWeights);
    EXPECT_TRUE(w.ok()) << w;
  }
  MlpTestModel model;
  auto e = make_engine_with(make_config(false, true, "AdamW", 1), &model);
  ASSERT_NE(e, nullptr);
  const absl::Status s = e->load_checkpoint(ckpt());
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("saved with ZeRO stage 2, this run uses stage 1"),
            absl::string_view::npos)
      << s;
}

// A load holds one tensor at a time: the checksums are verified in a
// streaming pass, then the tensors streamed in, so its largest buffer is the
// largest tensor, not the checkpoint (a 13B NVMe run would otherwise need
// ~234 GB to resume).
TEST_F(CheckpointErrorTest, LoadHoldsNoMoreThanTheLargestTensor) {
  save_after(2);
  MlpTestModel model;
  auto e = make_engine(&model);
  ASSERT_NE(e, nullptr);
  const absl::Status s = e->load_checkpoint(ckpt());
  ASSERT_TRUE(s.ok()) << s;
  const TrainingEngine::CheckpointLoadStats& st = e->last_checkpoint_load();
  EXPECT_EQ(st.largest_tensor_bytes, 32u * 32u * 4u);  // layer 1's fp32 w
  EXPECT_EQ(st.tensor_file_bytes, fs::file_size(fs::path(ckpt()) / "tensors.bin"));
  EXPECT_GT(st.peak_buffer_bytes, 0u);
  EXPECT_LE(st.peak_buffer_bytes, st.largest_tensor_bytes);
  EXPECT_LT(st.peak_buffer_bytes * 5, st.tensor_file_bytes);
}

}  // namespace
}  // namespace strata::engine
