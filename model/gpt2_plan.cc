#include "model/gpt2_plan.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "model/gpt2_model.h"
#include "model/gpt2_params.h"

namespace strata::model {

engine::PlanModel gpt2_plan_model(const Gpt2Config& c) {
  return {.name = c.name,
          .layers = gpt2_layer_params(c),
          .largest_module_params = gpt2_largest_layer_params(c),
          .n_layer = c.n_layer,
          .n_head = c.n_head,
          .n_embd = c.n_embd,
          .vocab_size = c.vocab_size,
          .seq_len = c.seq_len};
}

absl::StatusOr<engine::TrainMemoryEstimate> estimate_gpt2_train_memory(
    const Gpt2TrainMemoryInputs& in) {
  STRATA_RETURN_IF_ERROR(validate(in.model));
  if (in.seq_len > in.model.seq_len) {
    return absl::InvalidArgumentError(absl::StrCat("sequence length ", in.seq_len, " exceeds ",
                                                   in.model.name, "'s ", in.model.seq_len,
                                                   " positions"));
  }
  engine::TrainMemoryInputs e{.config = in.config,
                              .layers = gpt2_layer_params(in.model),
                              .simulated_device = in.simulated_device,
                              .data_bytes = in.data_bytes,
                              .async_checkpoint = in.async_checkpoint};
  if (in.simulated_device) {
    e.model_buffer_bytes =
        gpt2_activation_memory_for({.config = in.model,
                                    .micro_batch = in.config.train_micro_batch_size_per_gpu,
                                    .seq_len = in.seq_len,
                                    .checkpoint_activations = in.checkpoint_activations})
            .total_bytes;
    if (in.config.fp16.enabled || in.config.bf16.enabled) {
      // fp32 copies of a layer's 16-bit params and grads, each slot sized to
      // the largest tensor that ever uses it.
      std::vector<uint64_t> slot;
      for (const auto& layer : e.layers) {
        slot.resize(std::max(slot.size(), layer.size()), 0);
        for (size_t i = 0; i < layer.size(); ++i) slot[i] = std::max(slot[i], layer[i].numel);
      }
      for (uint64_t s : slot) e.model_buffer_bytes += 2 * s * sizeof(float);
    }
  }
  return engine::estimate_train_memory(e);
}

}  // namespace strata::model
