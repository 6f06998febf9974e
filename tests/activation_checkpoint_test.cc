// Gpt2ModelOptions::checkpoint_activations: gpt2-tiny trained a few steps
// through TrainingEngine with and without it gives the same losses,
// gradients, parameters and optimizer states bit for bit (fp32 in device
// memory, and fp16 with the optimizer offloaded to the host), and the
// activations kept between forward and backward shrink to the block inputs
// plus one block's recompute space.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "core/config/ds_config.h"
#include "engine/training_engine.h"
#include "gpu/sim_device.h"
#include "gtest/gtest.h"
#include "model/gpt2_config.h"
#include "model/gpt2_model.h"
#include "model/text_corpus.h"
#include "tests/test_ds_config.h"

namespace strata::model {
namespace {

constexpr int64_t kB = 2, kT = 32;
constexpr int kSteps = 3;

config::DsConfig make_config(const std::string& extra) {
  const std::string json = R"({"train_micro_batch_size_per_gpu": 2,
    "gradient_accumulation_steps": 2, "gradient_clipping": 1.0,
    "optimizer": {"type": "AdamW", "params": {"lr": 3e-3, "weight_decay": 0.01}},
    "strata": {"overlap": "sync"})" +
                           extra + "}";
  return strata::testing::parse_test_config(json);
}

// What one run leaves to compare: per step the loss and every accumulated
// gradient; at the end every param, master and Adam state.
struct Run {
  std::vector<double> loss;
  std::vector<std::vector<float>> grads;  // step-major, then layer, then param
  std::vector<std::vector<float>> final_state;
  Gpt2ActivationMemory memory;
};

Run train(const config::DsConfig& cfg, bool checkpoint) {
  Run r;
  auto mc = gpt2_config_by_name("gpt2-tiny");
  EXPECT_TRUE(mc.ok()) << mc.status();
  if (!mc.ok()) return r;
  std::string text;
  for (int i = 0; i < 300; ++i)
    text += "pack my box with five dozen liquor jugs " + std::to_string(i);
  auto source = ByteCorpus::from_text(text, "test", {.micro_batch = kB, .seq_len = kT});
  EXPECT_TRUE(source.ok()) << source.status();
  if (!source.ok()) return r;
  auto model = make_gpt2_model(
      {.config = *mc, .micro_batch = kB, .seq_len = kT, .checkpoint_activations = checkpoint},
      source->get());
  EXPECT_TRUE(model.ok()) << model.status();
  if (!model.ok()) return r;
  gpu::SimDevice device;
  auto engine = engine::TrainingEngine::create(cfg, model->get(), &device);
  EXPECT_TRUE(engine.ok()) << engine.status();
  if (!engine.ok()) return r;
  engine::TrainingEngine& e = **engine;
  const int layers = (*model)->num_layers();
  for (int s = 0; s < kSteps; ++s) {
    auto st = e.train_step();
    EXPECT_TRUE(st.ok()) << st.status();
    if (!st.ok()) return r;
    EXPECT_FALSE(st->skipped);
    r.loss.push_back(st->loss);
    for (int l = 0; l < layers; ++l) {
      for (size_t p = 0; p < (*model)->layer_params(l).size(); ++p) {
        auto g = e.read_fp32(l, static_cast<int>(p), engine::StateKind::kGradAccum);
        EXPECT_TRUE(g.ok()) << g.status();
        r.grads.push_back(g.ok() ? *g : std::vector<float>{});
      }
    }
  }
  // An evaluation forward after training reads the same weights both ways.
  auto val = e.evaluate(2);
  EXPECT_TRUE(val.ok()) << val.status();
  r.loss.push_back(val.ok() ? *val : -1);
  for (int l = 0; l < layers; ++l) {
    for (size_t p = 0; p < (*model)->layer_params(l).size(); ++p) {
      const int pi = static_cast<int>(p);
      auto param = e.read_param(l, pi);
      EXPECT_TRUE(param.ok()) << param.status();
      r.final_state.push_back(param.ok() ? *param : std::vector<float>{});
      for (auto kind :
           {engine::StateKind::kMaster, engine::StateKind::kExpAvg, engine::StateKind::kExpAvgSq}) {
        auto v = e.read_fp32(l, pi, kind);
        EXPECT_TRUE(v.ok()) << v.status();
        r.final_state.push_back(v.ok() ? *v : std::vector<float>{});
      }
    }
  }
  auto mem = gpt2_activation_memory(**model);
  EXPECT_TRUE(mem.ok()) << mem.status();
  if (mem.ok()) r.memory = *mem;
  return r;
}

// Bitwise: vectors of float compare with ==, which would also pass -0 vs 0
// and fail NaN; memcmp is exact.
void expect_bitwise(const std::vector<std::vector<float>>& a,
                    const std::vector<std::vector<float>>& b, const char* what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(a[i].size(), b[i].size()) << what << " " << i;
    EXPECT_EQ(std::memcmp(a[i].data(), b[i].data(), a[i].size() * sizeof(float)), 0)
        << what << " tensor " << i << " differs";
  }
}

void expect_same_training(const config::DsConfig& cfg) {
  const Run plain = train(cfg, false);
  const Run ckpt = train(cfg, true);
  ASSERT_EQ(plain.loss.size(), kSteps + 1u);
  ASSERT_EQ(ckpt.loss.size(), kSteps + 1u);
  for (size_t i = 0; i < plain.loss.size(); ++i) {
    EXPECT_EQ(std::memcmp(&plain.loss[i], &ckpt.loss[i], sizeof(double)), 0)
        << "loss " << i << ": " << plain.loss[i] << " vs " << ckpt.loss[i];
  }
  EXPECT_LT(plain.loss.back(), plain.loss.front());  // it trained
  expect_bitwise(plain.grads, ckpt.grads, "gradient");
  expect_bitwise(plain.final_state, ckpt.final_state, "param/master/state");

  // Saved activations: without checkpointing every block keeps its own
  // intermediate tensors; with it, one set is shared. Both keep the
  // residual stream (n_layer + 1 tensors of B*T*C).
  const int64_t n = kB * kT, c = 128, nh = 4, nl = 4;
  const uint64_t per_block = (11 * n * c + 4 * n + kB * nh * kT) * sizeof(float);
  const uint64_t residual = (nl + 1) * n * c * sizeof(float);
  EXPECT_EQ(plain.memory.saved_bytes, nl * per_block + residual);
  EXPECT_EQ(ckpt.memory.saved_bytes, per_block + residual);
  EXPECT_EQ(plain.memory.total_bytes - ckpt.memory.total_bytes, (nl - 1) * per_block);
  std::printf("saved activations: %llu bytes plain, %llu checkpointed (total %llu / %llu)\n",
              static_cast<unsigned long long>(plain.memory.saved_bytes),
              static_cast<unsigned long long>(ckpt.memory.saved_bytes),
              static_cast<unsigned long long>(plain.memory.total_bytes),
              static_cast<unsigned long long>(ckpt.memory.total_bytes));
}

TEST(ActivationCheckpointTest, Fp32InDeviceMemoryIsBitIdentical) {
  expect_same_training(make_config(""));
}

TEST(ActivationCheckpointTest, Fp16OffloadedIsBitIdentical) {
  expect_same_training(make_config(
      R"(, "fp16": {"enabled": true, "initial_scale_power": 10},
      "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}})"));
}

// `strata plan` predicts the model's buffers from its shape: the figures
// must be the built model's, for several shapes, with and without checkpointing.
TEST(ActivationCheckpointTest, MemoryFromTheShapeEqualsTheBuiltModel) {
  struct NoData final : TokenSource {
    void train_batch(int64_t, int32_t*, int32_t*) override {}
    void val_batch(int64_t, int32_t*, int32_t*) override {}
  } source;
  for (const Gpt2Config& cfg :
       {Gpt2Config{"a", 2, 4, 64, 256, 64}, Gpt2Config{"b", 3, 2, 32, 300, 40}}) {
    for (const bool ckpt : {false, true}) {
      for (const int64_t t : {int64_t{0}, int64_t{16}}) {
        const Gpt2ModelOptions o{
            .config = cfg, .micro_batch = 3, .seq_len = t, .checkpoint_activations = ckpt};
        auto model = make_gpt2_model(o, &source);
        ASSERT_TRUE(model.ok()) << model.status();
        auto built = gpt2_activation_memory(**model);
        ASSERT_TRUE(built.ok());
        const Gpt2ActivationMemory predicted = gpt2_activation_memory_for(o);
        EXPECT_EQ(predicted.saved_bytes, built->saved_bytes) << cfg.name << " " << ckpt << " " << t;
        EXPECT_EQ(predicted.total_bytes, built->total_bytes) << cfg.name << " " << ckpt << " " << t;
      }
    }
  }
}

TEST(ActivationCheckpointTest, MemoryNeedsAGpt2Model) {
  struct NotGpt2 final : engine::Model {
    int num_layers() const override { return 0; }
    std::vector<engine::ParamSpec> layer_params(int) const override { return {}; }
    void init_param(int, int, float*) const override {}
    absl::Status forward(int, const engine::LayerContext&) override { return {}; }
    absl::Status backward(int, const engine::LayerContext&) override { return {}; }
    double loss() const override { return 0; }
  } other;
  EXPECT_EQ(gpt2_activation_memory(other).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace strata::model
