// strata's GPT-2 for the engine's predictions: the shape engine::plan_memory
// and engine::predict_step_time read, and the peak RSS of `strata train` on
// it (engine::estimate_train_memory plus the CPU model's own buffers:
// gpt2_activation_memory_for and fp32 copies of one layer's 16-bit params
// and grads). Pure; thread-safe.
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"
#include "core/config/ds_config.h"
#include "engine/plan.h"
#include "engine/train_memory.h"
#include "model/gpt2_config.h"

namespace strata::model {

engine::PlanModel gpt2_plan_model(const Gpt2Config& c);

struct Gpt2TrainMemoryInputs {
  Gpt2Config model;  // vocab_size as trained (256 for bytes)
  config::DsConfig config;
  int64_t seq_len = 0;  // 0: the model's
  bool simulated_device = true;
  bool checkpoint_activations = false;
  uint64_t data_bytes = 0;  // as TrainMemoryInputs::data_bytes
  bool async_checkpoint = false;
};

// InvalidArgument for a bad model shape or what plan_placement refuses.
absl::StatusOr<engine::TrainMemoryEstimate> estimate_gpt2_train_memory(
    const Gpt2TrainMemoryInputs& in);

}  // namespace strata::model
