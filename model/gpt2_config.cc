#include "model/gpt2_config.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/config/json_reader.h"
#include "core/status.h"

namespace strata::model {

absl::Status validate(const Gpt2Config& c) {
  if (c.n_layer <= 0 || c.n_head <= 0 || c.n_embd <= 0 || c.vocab_size <= 0 || c.seq_len <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("model ", c.name, ": every size must be positive (n_layer ", c.n_layer,
                     ", n_head ", c.n_head, ", n_embd ", c.n_embd, ", vocab_size ", c.vocab_size,
                     ", seq_len ", c.seq_len, ")"));
  }
  if (c.n_embd % c.n_head != 0) {
    return absl::InvalidArgumentError(absl::StrCat("model ", c.name, ": n_embd ", c.n_embd,
                                                   " is not a multiple of n_head ", c.n_head));
  }
  return absl::OkStatus();
}

const std::vector<Gpt2Config>& gpt2_named_configs() {
  static const std::vector<Gpt2Config> configs = {
      {"gpt2-tiny", 4, 4, 128, kGpt2ByteVocab, 256},
      {"gpt2", 12, 12, 768, kGpt2BpeVocab, 1024},
      {"gpt2-medium", 24, 16, 1024, kGpt2BpeVocab, 1024},
      {"gpt2-large", 36, 20, 1280, kGpt2BpeVocab, 1024},
      {"gpt2-xl", 48, 25, 1600, kGpt2BpeVocab, 1024},
  };
  return configs;
}

absl::StatusOr<Gpt2Config> gpt2_config_by_name(std::string_view name) {
  std::vector<std::string> names;
  for (const Gpt2Config& c : gpt2_named_configs()) {
    if (c.name == name) return c;
    names.push_back(c.name);
  }
  std::string message = absl::StrCat("unknown model \"", std::string(name), "\"");
  if (auto guess = config::closest_key(name, names)) {
    absl::StrAppend(&message, "; did you mean \"", *guess, "\"?");
  }
  absl::StrAppend(&message, " (known models: ", absl::StrJoin(names, ", "), ")");
  return absl::NotFoundError(message);
}

int64_t gpt2_param_count(const Gpt2Config& c) {
  const int64_t e = c.n_embd;
  const int64_t per_layer = 2 * e                // ln_1
                            + e * 3 * e + 3 * e  // attn.c_attn
                            + e * e + e          // attn.c_proj
                            + 2 * e              // ln_2
                            + e * 4 * e + 4 * e  // mlp.c_fc
                            + 4 * e * e + e;     // mlp.c_proj
  return c.vocab_size * e + c.seq_len * e + c.n_layer * per_layer + 2 * e;
}

int64_t gpt2_largest_layer_params(const Gpt2Config& c) {
  const int64_t e = c.n_embd;
  return std::max({c.vocab_size * e, c.seq_len * e, e * 4 * e + 4 * e, 4 * e * e + e});
}

nlohmann::json gpt2_config_to_json(const Gpt2Config& c) {
  return {{"name", c.name},     {"n_layer", c.n_layer},       {"n_head", c.n_head},
          {"n_embd", c.n_embd}, {"vocab_size", c.vocab_size}, {"seq_len", c.seq_len}};
}

absl::StatusOr<Gpt2Config> gpt2_config_from_json(const nlohmann::json& j) {
  if (!j.is_object()) return absl::InvalidArgumentError("model description is not a JSON object");
  Gpt2Config c;
  c.name = "custom";
  if (auto it = j.find("name"); it != j.end()) {  // value() would throw on a wrong type
    if (!it->is_string())
      return absl::InvalidArgumentError("model description: \"name\" is not a string");
    c.name = it->get<std::string>();
  }
  for (auto [key, field] : {std::pair{"n_layer", &c.n_layer}, std::pair{"n_head", &c.n_head},
                            std::pair{"n_embd", &c.n_embd}, std::pair{"vocab_size", &c.vocab_size},
                            std::pair{"seq_len", &c.seq_len}}) {
    auto it = j.find(key);
    if (it == j.end() || !it->is_number_integer()) {
      return absl::InvalidArgumentError(
          absl::StrCat("model description: \"", key, "\" is missing or not an integer"));
    }
    *field = it->get<int64_t>();
  }
  STRATA_RETURN_IF_ERROR(validate(c));
  return c;
}

}  // namespace strata::model
