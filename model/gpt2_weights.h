// GPT-2 weights in files: the mapping between strata's GPT-2 parameters
// (make_gpt2_model's layers and layer_params names) and Hugging Face GPT-2
// tensors, and Gpt2Init, which initialises a model from a safetensors file.
//
// Names and layouts. Hugging Face (GPT2Model's state dict): wte.weight
// [V, C], wpe.weight [S, C], h.{i}.ln_1.weight / .bias [C],
// h.{i}.attn.c_attn.weight [C, 3C] and .bias [3C], h.{i}.attn.c_proj.weight
// [C, C] and .bias [C], h.{i}.ln_2.*, h.{i}.mlp.c_fc.weight [C, 4C] and .bias
// [4C], h.{i}.mlp.c_proj.weight [4C, C] and .bias [C], ln_f.weight / .bias.
// HF's Conv1D stores its weight as [in, out]; strata's matmul holds
// [out, in] (model/cpu/matmul.h), so the four projection weights are
// transposed on the way in and out. Q, K, V sit in the same column blocks in
// both (attention.h). strata's own names are "layer{l}.{param}" (e.g.
// "layer1.attn.c_attn.w", block i being engine layer i + 1) in strata's
// layout, the names a checkpoint's tensors carry.
//
// Gpt2Init::open reads a file named either way: HF names, optionally under
// "transformer." (GPT2LMHeadModel), or strata names. HF's attention-mask
// buffers (attn.bias, attn.masked_bias) and lm_head.weight (tied to wte)
// are ignored; any other tensor the model has no place for is an error, as
// is a missing tensor, a shape other than the model's (both shapes named),
// a dtype other than F32 / F16 / BF16, and a BPE vocabulary (50257 rows)
// offered to a byte-level model. All checks run in open(), so fill() cannot
// fail. The file stays mapped while the Gpt2Init lives; each fill() converts
// one tensor, so initialising never holds more than one extra tensor.
//
// Threads: a Gpt2Init is immutable after open(); fill() may run anywhere.
//
//   STRATA_ASSIGN_OR_RETURN(auto init, model::Gpt2Init::open(path, config));
//   options.init = [init](int l, int p, float* out) { init->fill(l, p, out); };
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/safetensors.h"
#include "model/gpt2_config.h"

namespace strata::model {

enum class Gpt2Names { kHf, kStrata };

// One strata GPT-2 parameter and where it sits in a file.
struct Gpt2WeightSlot {
  int layer = 0;                      // engine layer (0 embeddings, 1..n blocks, n+1 ln_f)
  int param = 0;                      // index into the model's layer_params(layer)
  std::string strata_param;           // layer_params name, e.g. "attn.c_attn.w"
  std::string hf_name;                // e.g. "h.0.attn.c_attn.weight"
  std::vector<int64_t> strata_shape;  // row-major as strata holds it, e.g. {3C, C}
  std::vector<int64_t> hf_shape;      // e.g. {C, 3C}
  bool transposed = false;            // hf_shape is strata_shape transposed

  uint64_t numel() const;
  std::string strata_name() const;  // "layer1.attn.c_attn.w"
  std::string file_name(Gpt2Names names) const;
  const std::vector<int64_t>& file_shape(Gpt2Names names) const;
};

// Every parameter of a model built from `c`, in engine order (layer by
// layer, each layer's params in order).
std::vector<Gpt2WeightSlot> gpt2_weight_slots(const Gpt2Config& c);

// Rearranges one parameter (numel floats, buffers not overlapping) from
// strata's layout to a file's and back: a copy, or the 2-D transpose of an
// HF Conv1D weight.
void gpt2_to_file_layout(const Gpt2WeightSlot& s, Gpt2Names names, const float* in, float* out);
void gpt2_from_file_layout(const Gpt2WeightSlot& s, Gpt2Names names, const float* in, float* out);

class Gpt2Init {
 public:
  // Opens and checks `path` against `config` (errors as above, each naming
  // the file and the tensor).
  static absl::StatusOr<std::shared_ptr<const Gpt2Init>> open(const std::string& path,
                                                              const Gpt2Config& config);

  // The fp32 value of parameter `param` of engine layer `layer` in strata's
  // layout (numel floats into out). Stops the process (STRATA_CHECK) for a
  // layer / param the config does not have.
  void fill(int layer, int param, float* out) const;

  Gpt2Names names() const { return names_; }
  const std::string& path() const { return reader_->path(); }

 private:
  Gpt2Init() = default;

  std::unique_ptr<safetensors::Reader> reader_;
  Gpt2Names names_ = Gpt2Names::kHf;
  std::vector<Gpt2WeightSlot> slots_;
  std::vector<const safetensors::TensorInfo*> tensors_;  // per slot
  std::vector<size_t> layer_start_;                      // first slot of each layer
};

}  // namespace strata::model
