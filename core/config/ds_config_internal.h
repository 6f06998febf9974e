// Between parsing (ds_config_parse.cc: one key at a time, types and ranges)
// and validation (ds_config_validate.cc: rules across keys). Not public API.
#pragma once

#include <optional>
#include <string>

#include "absl/status/status.h"
#include "core/config/ds_config.h"
#include "core/config/json_reader.h"

namespace strata::config::internal {

// What parsing saw that validation needs beyond the DsConfig itself.
struct ParseFacts {
  std::optional<int64_t> train_batch_size;
  std::optional<int64_t> micro_batch_per_gpu;
  std::optional<int64_t> gradient_accumulation_steps;
  std::string bf16_key = "bf16";  // or "bfloat16", as the user wrote it
  bool overlap_comm_given = false;
};

// Applies DeepSpeed's cross-key rules and the defaults that depend on other
// keys (batch sizes, overlap_comm at stage 3, nvme paths from strata.nvme_paths).
absl::Status validate_ds_config(const ParseFacts& facts, int world_size, Diagnostics* diag,
                                DsConfig* cfg);

}  // namespace strata::config::internal
