// GPT-2 parameter <-> file mapping and Gpt2Init (contract in gpt2_weights.h).
#include "model/gpt2_weights.h"

#include <algorithm>
#include <cstring>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace strata::model {
namespace {

// The tensors a Hugging Face GPT-2 file may carry that are not parameters:
// the causal-mask buffers of older transformers versions and the tied head.
bool hf_ignored(const std::string& name) {
  return absl::EndsWith(name, ".attn.bias") || absl::EndsWith(name, ".attn.masked_bias") ||
         name == "lm_head.weight";
}

// dst[c][r] = src[r][c] for src of rows x cols.
void transpose(const float* src, float* dst, int64_t rows, int64_t cols) {
  constexpr int64_t kTile = 32;  // keeps both sides of a tile in cache
  for (int64_t r0 = 0; r0 < rows; r0 += kTile) {
    for (int64_t c0 = 0; c0 < cols; c0 += kTile) {
      const int64_t r1 = std::min(rows, r0 + kTile), c1 = std::min(cols, c0 + kTile);
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t c = c0; c < c1; ++c) dst[c * rows + r] = src[r * cols + c];
      }
    }
  }
}

}  // namespace

uint64_t Gpt2WeightSlot::numel() const {
  uint64_t n = 1;
  for (int64_t d : strata_shape) n *= static_cast<uint64_t>(d);
  return n;
}

std::string Gpt2WeightSlot::strata_name() const {
  return absl::StrCat("layer", layer, ".", strata_param);
}

std::string Gpt2WeightSlot::file_name(Gpt2Names names) const {
  return names == Gpt2Names::kHf ? hf_name : strata_name();
}

const std::vector<int64_t>& Gpt2WeightSlot::file_shape(Gpt2Names names) const {
  return names == Gpt2Names::kHf ? hf_shape : strata_shape;
}

std::vector<Gpt2WeightSlot> gpt2_weight_slots(const Gpt2Config& cfg) {
  const int64_t c = cfg.n_embd;
  std::vector<Gpt2WeightSlot> out;
  auto add = [&](int layer, const char* strata, std::string hf, std::vector<int64_t> shape,
                 bool transposed) {
    Gpt2WeightSlot s;
    s.layer = layer;
    s.param = out.empty() || out.back().layer != layer ? 0 : out.back().param + 1;
    s.strata_param = strata;
    s.hf_name = std::move(hf);
    s.strata_shape = shape;
    if (transposed) std::reverse(shape.begin(), shape.end());
    s.hf_shape = std::move(shape);
    s.transposed = transposed;
    out.push_back(std::move(s));
  };
  // Order and names as Gpt2Model::layer_params.
  add(0, "wte", "wte.weight", {cfg.vocab_size, c}, false);
  add(0, "wpe", "wpe.weight", {cfg.seq_len, c}, false);
  for (int i = 0; i < cfg.n_layer; ++i) {
    const int l = i + 1;
    const std::string h = absl::StrCat("h.", i, ".");
    add(l, "ln_1.w", h + "ln_1.weight", {c}, false);
    add(l, "ln_1.b", h + "ln_1.bias", {c}, false);
    add(l, "attn.c_attn.w", h + "attn.c_attn.weight", {3 * c, c}, true);
    add(l, "attn.c_attn.b", h + "attn.c_attn.bias", {3 * c}, false);
    add(l, "attn.c_proj.w", h + "attn.c_proj.weight", {c, c}, true);
    add(l, "attn.c_proj.b", h + "attn.c_proj.bias", {c}, false);
    add(l, "ln_2.w", h + "ln_2.weight", {c}, false);
    add(l, "ln_2.b", h + "ln_2.bias", {c}, false);
    add(l, "mlp.c_fc.w", h + "mlp.c_fc.weight", {4 * c, c}, true);
    add(l, "mlp.c_fc.b", h + "mlp.c_fc.bias", {4 * c}, false);
    add(l, "mlp.c_proj.w", h + "mlp.c_proj.weight", {c, 4 * c}, true);
    add(l, "mlp.c_proj.b", h + "mlp.c_proj.bias", {c}, false);
  }
  const int last = static_cast<int>(cfg.n_layer) + 1;
  add(last, "ln_f.w", "ln_f.weight", {c}, false);
  add(last, "ln_f.b", "ln_f.bias", {c}, false);
  return out;
}

void gpt2_to_file_layout(const Gpt2WeightSlot& s, Gpt2Names names, const float* in, float* out) {
  if (names == Gpt2Names::kHf && s.transposed) {
    transpose(in, out, s.strata_shape[0], s.strata_shape[1]);
  } else {
    std::memcpy(out, in, s.numel() * sizeof(float));
  }
}

void gpt2_from_file_layout(const Gpt2WeightSlot& s, Gpt2Names names, const float* in, float* out) {
  if (names == Gpt2Names::kHf && s.transposed) {
    transpose(in, out, s.hf_shape[0], s.hf_shape[1]);
  } else {
    std::memcpy(out, in, s.numel() * sizeof(float));
  }
}

absl::StatusOr<std::shared_ptr<const Gpt2Init>> Gpt2Init::open(const std::string& path,
                                                               const Gpt2Config& config) {
  std::shared_ptr<Gpt2Init> init(new Gpt2Init());
  STRATA_ASSIGN_OR_RETURN(init->reader_, safetensors::Reader::open(path));
  const safetensors::Reader& r = *init->reader_;
  init->slots_ = gpt2_weight_slots(config);

  // Which naming the file uses, told by its token embedding.
  std::string prefix;
  if (r.find("wte.weight") != nullptr) {
    init->names_ = Gpt2Names::kHf;
  } else if (r.find("transformer.wte.weight") != nullptr) {
    init->names_ = Gpt2Names::kHf;
    prefix = "transformer.";
  } else if (r.find("layer0.wte") != nullptr) {
    init->names_ = Gpt2Names::kStrata;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        path,
        " holds no GPT-2 token embedding (wte.weight, transformer.wte.weight or "
        "layer0.wte); pass a GPT-2 safetensors file (e.g. from `strata ckpt export`)"));
  }
  const Gpt2Names names = init->names_;

  std::set<std::string> used;
  for (const Gpt2WeightSlot& s : init->slots_) {
    const std::string name = prefix + s.file_name(names);
    const safetensors::TensorInfo* t = r.find(name);
    if (t == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, " has no tensor '", name, "', which model ", config.name, " (",
                       config.n_layer, " layers) needs; was the file saved from another model?"));
    }
    const std::vector<int64_t>& want = s.file_shape(names);
    if (s.layer == 0 && s.param == 0 && t->shape.size() == 2 && t->shape[0] == kGpt2BpeVocab &&
        config.vocab_size == kGpt2ByteVocab) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": tensor '", name, "' has shape ", safetensors::shape_string(t->shape), ", the ",
          kGpt2BpeVocab, "-token BPE vocabulary of GPT-2's tokenizer, but strata's ", config.name,
          " is byte-level (vocab ", kGpt2ByteVocab, "); BPE embeddings cannot initialise it"));
    }
    if (t->shape != want) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": tensor '", name, "' has shape ", safetensors::shape_string(t->shape),
          " but model ", config.name, " (n_layer ", config.n_layer, ", n_embd ", config.n_embd,
          ", vocab ", config.vocab_size, ", positions ", config.seq_len, ") needs ",
          safetensors::shape_string(want), "; pick the --model the file was saved from"));
    }
    if (t->dtype != safetensors::Dtype::kF32 && t->dtype != safetensors::Dtype::kF16 &&
        t->dtype != safetensors::Dtype::kBF16) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": tensor '", name, "' is ",
                                                     std::string(safetensors::dtype_name(t->dtype)),
                                                     "; GPT-2 weights must be F32, F16 or BF16"));
    }
    if (init->layer_start_.size() <= static_cast<size_t>(s.layer)) {
      init->layer_start_.push_back(init->tensors_.size());
    }
    init->tensors_.push_back(t);
    used.insert(name);
  }
  for (const safetensors::TensorInfo& t : r.tensors()) {
    if (used.count(t.name) != 0) continue;
    if (names == Gpt2Names::kHf && absl::StartsWith(t.name, prefix) &&
        hf_ignored(t.name.substr(prefix.size()))) {
      continue;
    }
    if (names == Gpt2Names::kHf && t.name == "lm_head.weight") continue;
    return absl::InvalidArgumentError(absl::StrCat(
        path, " holds tensor '", t.name, "', which model ", config.name, " (", config.n_layer,
        " layers) has no place for; pick the --model the file was saved from"));
  }
  return std::shared_ptr<const Gpt2Init>(std::move(init));
}

void Gpt2Init::fill(int layer, int param, float* out) const {
  STRATA_CHECK(layer >= 0 && static_cast<size_t>(layer) < layer_start_.size());
  const size_t i = layer_start_[layer] + static_cast<size_t>(param);
  const size_t end = static_cast<size_t>(layer) + 1 < layer_start_.size() ? layer_start_[layer + 1]
                                                                          : slots_.size();
  STRATA_CHECK(param >= 0 && i < end);
  const Gpt2WeightSlot& s = slots_[i];
  const safetensors::TensorInfo& t = *tensors_[i];
  if (names_ == Gpt2Names::kHf && s.transposed) {
    std::vector<float> tmp(s.numel());
    STRATA_CHECK(reader_->to_fp32(t, tmp.data()).ok());
    gpt2_from_file_layout(s, names_, tmp.data(), out);
  } else {
    STRATA_CHECK(reader_->to_fp32(t, out).ok());
  }
}

}  // namespace strata::model
