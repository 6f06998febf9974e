#include "tools/train_bench.h"

#include <stdlib.h>

#include <cerrno>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/memory_bandwidth.h"
#include "core/status.h"
#include "engine/training_engine.h"
#include "gpu/sim_device.h"
#include "model/gpt2_config.h"
#include "model/gpt2_model.h"
#include "model/text_corpus.h"
#include "nlohmann/json.hpp"

namespace strata::tools {
namespace {

uint64_t mix(uint64_t z) {  // splitmix64's finaliser
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// Each row is an arithmetic progression modulo the vocabulary with a start
// and stride drawn from (seed, batch, row): learnable, so the loss moves, and
// every token id of the vocabulary occurs (the whole embedding is exercised).
class SyntheticTokens final : public model::TokenSource {
 public:
  SyntheticTokens(int64_t b, int64_t t, int64_t vocab, uint64_t seed)
      : b_(b), t_(t), vocab_(vocab), seed_(seed) {}
  void train_batch(int64_t index, int32_t* inputs, int32_t* targets) override {
    fill(2 * index, inputs, targets);
  }
  void val_batch(int64_t index, int32_t* inputs, int32_t* targets) override {
    fill(2 * index + 1, inputs, targets);
  }

 private:
  void fill(int64_t key, int32_t* inputs, int32_t* targets) const {
    for (int64_t r = 0; r < b_; ++r) {
      const uint64_t h = mix(seed_ ^ mix(static_cast<uint64_t>(key * b_ + r) + 1));
      const int64_t start = static_cast<int64_t>(h % static_cast<uint64_t>(vocab_));
      const int64_t stride = 1 + static_cast<int64_t>((h >> 32) % 7);
      for (int64_t i = 0; i < t_; ++i) {
        inputs[r * t_ + i] = static_cast<int32_t>((start + i * stride) % vocab_);
        targets[r * t_ + i] = static_cast<int32_t>((start + (i + 1) * stride) % vocab_);
      }
    }
  }
  int64_t b_, t_, vocab_;
  uint64_t seed_;
};

// A folder made for the run and removed with everything in it.
class TempDir {
 public:
  absl::Status create(const std::string& parent) {
    std::string tmpl = parent + "/strata-bench-train-XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) {
      return errno_status(errno, absl::StrCat("creating a swap folder under ", parent,
                                              "; pass --nvme-path DIR on a writable drive"));
    }
    path_ = tmpl;
    return absl::OkStatus();
  }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::vector<TrainBenchPlacement> all_placements() {
  std::vector<TrainBenchPlacement> out;
  for (auto mode : {config::OverlapMode::kSync, config::OverlapMode::kOverlap}) {
    for (auto dev : {config::OffloadDevice::kNone, config::OffloadDevice::kCpu,
                     config::OffloadDevice::kNvme}) {
      out.push_back({dev, mode});
    }
  }
  return out;
}

// One placement, start to end; failures go into the result.
absl::Status run_placement(const TrainBenchOptions& o, const model::Gpt2Config& mc,
                           model::TokenSource* source, const TrainBenchPlacement& pl,
                           const std::string& nvme_path, TrainBenchResult* r) {
  STRATA_ASSIGN_OR_RETURN(config::DsConfig cfg, train_bench_ds_config(o, pl, nvme_path));
  STRATA_ASSIGN_OR_RETURN(
      auto net, model::make_gpt2_model({.config = mc,
                                        .micro_batch = o.micro_batch,
                                        .seq_len = o.seq_len,
                                        .seed = o.seed,
                                        .checkpoint_activations = o.checkpoint_activations},
                                       source));
  gpu::SimDevice device({.capacity_bytes = o.gpu_mem, .move_data = true});
  engine::EngineOptions eo;
  eo.allow_buffered_io = true;  // tmpfs and overlay filesystems have no O_DIRECT
  eo.fuse_gradient_pass = o.fuse_gradient_pass;
  STRATA_ASSIGN_OR_RETURN(auto engine,
                          engine::TrainingEngine::create(cfg, net.get(), &device, std::move(eo)));
  r->tokens_per_step = o.micro_batch * o.seq_len;
  double timed = 0, grad_seconds = 0, opt_seconds = 0;
  uint64_t opt_bytes = 0;
  r->bytes_moved_per_step.assign(offload::kTierCount, 0.0);
  for (int64_t i = 1; i <= o.steps; ++i) {
    STRATA_ASSIGN_OR_RETURN(engine::StepStats st, engine->train_step(),
                            absl::StrCat("training step ", i));
    ++r->steps;
    if (i == 1) {
      r->first_step_seconds = st.step_seconds;
      r->first_loss = st.loss;
    } else {
      timed += st.step_seconds;
      grad_seconds += st.grad_seconds;
      opt_seconds += st.optimizer_seconds;
      opt_bytes += st.optimizer_bytes;
      for (int t = 0; t < offload::kTierCount; ++t) {
        r->bytes_moved_per_step[t] += static_cast<double>(st.bytes_in[t] + st.bytes_out[t]);
      }
    }
    r->last_loss = st.loss;
    r->skipped_steps += st.skipped ? 1 : 0;
  }
  const double n = static_cast<double>(o.steps - 1);
  r->mean_step_seconds = timed / n;
  r->tokens_per_second = r->mean_step_seconds > 0 ? r->tokens_per_step / r->mean_step_seconds : 0;
  for (double& b : r->bytes_moved_per_step) b /= n;
  r->grad_seconds_per_step = grad_seconds / n;
  r->optimizer_seconds_per_step = opt_seconds / n;
  r->optimizer_gb_per_s = opt_seconds > 0 ? static_cast<double>(opt_bytes) / opt_seconds / 1e9 : 0;
  STRATA_ASSIGN_OR_RETURN(model::Gpt2ActivationMemory mem, model::gpt2_activation_memory(*net));
  r->saved_activation_bytes = mem.saved_bytes;
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<config::DsConfig> train_bench_ds_config(const TrainBenchOptions& o,
                                                       const TrainBenchPlacement& pl,
                                                       const std::string& nvme_path) {
  nlohmann::json offload = {{"device", std::string(config::to_string(pl.offload))}};
  if (pl.offload == config::OffloadDevice::kNvme) offload["nvme_path"] = nvme_path;
  nlohmann::json j = {
      {"train_micro_batch_size_per_gpu", o.micro_batch},
      {"gradient_accumulation_steps", 1},
      {"gradient_clipping", 1.0},
      {"optimizer", {{"type", "AdamW"}, {"params", {{"lr", 3e-4}, {"weight_decay", 0.01}}}}},
      {"zero_optimization", {{"stage", 2}, {"offload_optimizer", offload}}},
      {"strata", {{"overlap", std::string(config::to_string(pl.overlap))}}}};
  if (o.dtype == "fp16") {
    j["fp16"] = {{"enabled", true}, {"loss_scale", 0}, {"initial_scale_power", 8}};
  } else if (o.dtype == "bf16") {
    j["bf16"] = {{"enabled", true}};
  } else if (o.dtype != "fp32") {
    return absl::InvalidArgumentError(
        absl::StrCat("dtype '", o.dtype, "' is not one of fp16, bf16, fp32"));
  }
  std::vector<std::string> warnings;
  return config::parse_ds_config(j.dump(), "strata bench train", &warnings);
}

absl::Status validate_train_bench_options(const TrainBenchOptions& o) {
  if (o.steps < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("steps ", o.steps,
                     ": need at least 2 (the first step is not timed); use --steps 2 or more"));
  }
  if (o.micro_batch < 1 || o.seq_len < 1) {
    return absl::InvalidArgumentError("micro batch and sequence length must be at least 1");
  }
  STRATA_ASSIGN_OR_RETURN(model::Gpt2Config mc, model::gpt2_config_by_name(o.model));
  if (o.seq_len > mc.seq_len) {
    return absl::InvalidArgumentError(absl::StrCat("--seq-len ", o.seq_len, " is longer than ",
                                                   mc.name, " allows; use at most ", mc.seq_len));
  }
  if (o.dtype != "fp16" && o.dtype != "bf16" && o.dtype != "fp32") {
    return absl::InvalidArgumentError(
        absl::StrCat("dtype '", o.dtype, "' is not one of fp16, bf16, fp32"));
  }
  if (!o.nvme_path.empty()) {
    // Missing is fine (created); anything else must be a usable directory.
    std::error_code ec;
    const std::filesystem::file_status st = std::filesystem::status(o.nvme_path, ec);
    if (ec && ec != std::errc::no_such_file_or_directory) {
      return absl::InvalidArgumentError(
          absl::StrCat("--nvme-path ", o.nvme_path.substr(0, 200), ": ", ec.message()));
    }
    if (std::filesystem::exists(st) && !std::filesystem::is_directory(st)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--nvme-path ", o.nvme_path, " is not a directory; give a folder for the swap files"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<TrainBenchSummary> run_train_bench(
    const TrainBenchOptions& o, const std::function<void(const TrainBenchResult&)>& on_result) {
  STRATA_RETURN_IF_ERROR(validate_train_bench_options(o));
  STRATA_ASSIGN_OR_RETURN(model::Gpt2Config mc, model::gpt2_config_by_name(o.model));
  TrainBenchSummary s;
  std::unique_ptr<model::TokenSource> source;
  if (o.data.empty()) {
    source = std::make_unique<SyntheticTokens>(o.micro_batch, o.seq_len, mc.vocab_size, o.seed);
    s.data = "synthetic";
  } else {
    mc.vocab_size = model::kGpt2ByteVocab;
    STRATA_ASSIGN_OR_RETURN(
        source, model::load_byte_corpus(
                    o.data, {.micro_batch = o.micro_batch, .seq_len = o.seq_len, .seed = o.seed}));
    s.data = o.data;
  }
  s.model = mc.name;
  s.params = model::gpt2_param_count(mc);
  s.vocab = mc.vocab_size;

  const std::vector<TrainBenchPlacement> placements =
      o.placements.empty() ? all_placements() : o.placements;
  TempDir temp;
  std::string nvme = o.nvme_path;
  bool any_nvme = false;
  for (const auto& p : placements) any_nvme |= p.offload == config::OffloadDevice::kNvme;
  if (any_nvme) {
    std::error_code ec;
    const std::string parent =
        nvme.empty() ? std::filesystem::temp_directory_path(ec).string() : nvme;
    STRATA_RETURN_IF_ERROR(temp.create(parent.empty() ? "/tmp" : parent));
    nvme = temp.path();
  }
  // Validate every config before running anything.
  for (const auto& p : placements)
    STRATA_RETURN_IF_ERROR(train_bench_ds_config(o, p, nvme).status());

  // Before the placements, while no model holds memory; 448 MiB of arrays
  // (well beyond the last-level cache).
  STRATA_ASSIGN_OR_RETURN(BandwidthResult stream,
                          measure_adam_stream({.elements = size_t{16} << 20, .repeats = 3}),
                          "measuring the Adam-like memory stream");
  s.stream_gb_per_s = stream.gb_per_s;
  for (const auto& p : placements) {
    TrainBenchResult r;
    r.placement = p;
    if (absl::Status st = run_placement(o, mc, source.get(), p, nvme, &r); !st.ok()) {
      r = TrainBenchResult{.placement = p, .error = std::string(st.message())};
    }
    if (on_result) on_result(r);
    s.results.push_back(std::move(r));
  }
  for (TrainBenchResult& r : s.results) {
    if (!r.error.empty() || r.placement.offload == config::OffloadDevice::kNone) continue;
    for (const TrainBenchResult& base : s.results) {
      if (base.error.empty() && base.placement.offload == config::OffloadDevice::kNone &&
          base.placement.overlap == r.placement.overlap && base.mean_step_seconds > 0) {
        r.overhead_fraction =
            (r.mean_step_seconds - base.mean_step_seconds) / base.mean_step_seconds;
      }
    }
  }
  return s;
}

}  // namespace strata::tools
