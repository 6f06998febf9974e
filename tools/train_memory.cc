#include "tools/train_memory.h"

#include <sys/resource.h>

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "engine/placement.h"
#include "model/gpt2_model.h"
#include "model/gpt2_params.h"
#include "tools/cli_util.h"

namespace strata::tools {

nlohmann::json TrainMemoryEstimate::to_json() const {
  return {{"host_arena", host_arena},
          {"rollback", rollback},
          {"simulated_device", simulated_device},
          {"model_buffers", model_buffers},
          {"data", data},
          {"checkpoint_snapshot", checkpoint_snapshot},
          {"baseline", baseline},
          {"total", total()}};
}

std::string TrainMemoryEstimate::describe_parts() const {
  auto b = [](uint64_t v) { return format_bytes(static_cast<double>(v)); };
  return absl::StrCat("host arena ", b(host_arena), ", rollback ", b(rollback),
                      ", simulated device ", b(simulated_device), ", model buffers ",
                      b(model_buffers), ", data ", b(data), ", checkpoint snapshot ",
                      b(checkpoint_snapshot), ", program ", b(baseline));
}

absl::StatusOr<TrainMemoryEstimate> estimate_train_memory(const TrainMemoryInputs& in) {
  const model::Gpt2Config& m = in.model;
  STRATA_RETURN_IF_ERROR(model::validate(m));
  const std::vector<std::vector<engine::ParamSpec>> layers = model::gpt2_layer_params(m);
  STRATA_ASSIGN_OR_RETURN(engine::Placement p, engine::plan_placement(in.config, layers));

  TrainMemoryEstimate e;
  if (p.offload) e.host_arena = p.host_homed + p.host_cache;
  e.rollback = p.rollback;
  if (in.simulated_device) {
    e.simulated_device = (p.offload ? p.device_all_layers : p.device_homed) + p.device_scratch;
    const model::Gpt2ActivationMemory acts =
        model::gpt2_activation_memory_for({.config = m,
                                           .micro_batch = in.config.train_micro_batch_size_per_gpu,
                                           .seq_len = in.seq_len,
                                           .checkpoint_activations = in.checkpoint_activations});
    e.model_buffers = acts.total_bytes;
    if (p.dtype != DType::kFloat32) {
      // fp32 copies of a layer's 16-bit params and grads, each slot sized to
      // the largest tensor that ever uses it.
      std::vector<uint64_t> slot;
      for (const auto& layer : layers) {
        slot.resize(std::max(slot.size(), layer.size()), 0);
        for (size_t i = 0; i < layer.size(); ++i) slot[i] = std::max(slot[i], layer[i].numel);
      }
      for (uint64_t s : slot) e.model_buffers += 2 * s * sizeof(float);
    }
  }
  e.data = static_cast<uint64_t>(in.data_tokens) * sizeof(int32_t);
  if (in.async_checkpoint) {
    for (const auto& layer : layers) {
      for (const engine::ParamSpec& s : layer) {
        e.checkpoint_snapshot += s.numel * (12 + dtype_size(p.dtype));
      }
    }
  }
  e.baseline = kTrainBaselineBytes;
  return e;
}

uint64_t peak_rss_bytes() {
  rusage ru{};
  if (::getrusage(RUSAGE_SELF, &ru) != 0) return 0;
  return static_cast<uint64_t>(ru.ru_maxrss) * 1024;  // kilobytes on Linux
}

}  // namespace strata::tools
