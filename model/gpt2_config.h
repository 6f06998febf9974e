// Gpt2Config: the shape of a GPT-2 family model, the named sizes strata
// knows, and the parameter counts `strata plan` budgets memory from.
//
// Named models: gpt2-tiny (4 layers, 4 heads, 128 wide, 256 positions,
// byte-level vocabulary of 256; for tests and smoke runs), gpt2 (124M),
// gpt2-medium (355M), gpt2-large (774M), gpt2-xl (1.5B), the last four with
// OpenAI's BPE vocabulary (50257) and 1024 positions.
//
// Parameter count (tied embeddings: the output projection reuses wte):
//   V*E (wte) + S*E (wpe) + L * (12*E^2 + 13*E) + 2*E (ln_f)
// where each layer holds ln_1 (2E), attn.c_attn (E*3E + 3E), attn.c_proj
// (E*E + E), ln_2 (2E), mlp.c_fc (E*4E + 4E) and mlp.c_proj (4E*E + E).
// gpt2 has 124,439,808, as Hugging Face counts it.
//
// Errors: gpt2_config_by_name returns NotFound for an unknown name, with a
// "did you mean" and the list of known names. Pure functions; thread-safe.
//   STRATA_ASSIGN_OR_RETURN(model::Gpt2Config c, model::gpt2_config_by_name("gpt2"));
//   int64_t n = model::gpt2_param_count(c);
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace strata::model {

inline constexpr int64_t kGpt2BpeVocab = 50257;  // OpenAI's GPT-2 BPE tokenizer
inline constexpr int64_t kGpt2ByteVocab = 256;   // raw bytes, no tokenizer

struct Gpt2Config {
  std::string name;
  int64_t n_layer = 12;
  int64_t n_head = 12;
  int64_t n_embd = 768;
  int64_t vocab_size = kGpt2BpeVocab;
  int64_t seq_len = 1024;  // n_positions: the longest sequence (wpe rows)
  bool operator==(const Gpt2Config&) const = default;
};

// InvalidArgument unless every size is positive and n_embd % n_head == 0.
absl::Status validate(const Gpt2Config& c);

// The named models, smallest first.
const std::vector<Gpt2Config>& gpt2_named_configs();

// One of gpt2_named_configs() by exact name; NotFound otherwise.
absl::StatusOr<Gpt2Config> gpt2_config_by_name(std::string_view name);

// Every trainable parameter, counted once (wte is shared with the output).
int64_t gpt2_param_count(const Gpt2Config& c);

// Parameters of the largest single module (its own weight and bias): wte
// for every named model, else mlp.c_fc or wpe. DeepSpeed's ZeRO-3 estimate
// ("largest_layer_params") counts the same way.
int64_t gpt2_largest_layer_params(const Gpt2Config& c);

// {"name", "n_layer", "n_head", "n_embd", "vocab_size", "seq_len"}: how a
// checkpoint records the model it holds (TrainingEngine user metadata, under
// "model"). The reader validates and names the first missing or bad key.
nlohmann::json gpt2_config_to_json(const Gpt2Config& c);
absl::StatusOr<Gpt2Config> gpt2_config_from_json(const nlohmann::json& j);

}  // namespace strata::model
