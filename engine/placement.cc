#include "engine/placement.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace strata::engine {
namespace {

using offload::Tier;

uint64_t round_up(uint64_t bytes, uint64_t to) { return (bytes + to - 1) / to * to; }
uint64_t padded(uint64_t bytes) { return round_up(bytes, 4096); }

}  // namespace

absl::StatusOr<Placement> plan_placement(const config::DsConfig& config,
                                         const std::vector<std::vector<ParamSpec>>& layers) {
  if (layers.empty()) return absl::InvalidArgumentError("the model has no layers");
  const config::OffloadDevice where = config.zero.offload_optimizer.device;
  const config::OffloadDevice param_where = config.zero.offload_param.device;
  if (config.zero.stage != 3 && param_where != config::OffloadDevice::kNone) {
    return absl::InvalidArgumentError(
        absl::StrCat("zero_optimization.offload_param needs stage 3 (stage is ", config.zero.stage,
                     "); set zero_optimization.stage to 3 or remove offload_param"));
  }
  Placement p;
  p.dtype = config.fp16.enabled   ? DType::kFloat16
            : config.bf16.enabled ? DType::kBFloat16
                                  : DType::kFloat32;
  p.offload = where != config::OffloadDevice::kNone;
  p.state_home = where == config::OffloadDevice::kNvme ? Tier::kNvme
                 : p.offload                           ? Tier::kHost
                                                       : Tier::kDevice;
  // Stage 3 with offload_param nvme homes the compute params on NVMe too;
  // otherwise they live on the host whenever the optimizer writes them there.
  p.compute_home = param_where == config::OffloadDevice::kNvme ? Tier::kNvme
                   : p.offload                                 ? Tier::kHost
                                                               : Tier::kDevice;

  const uint64_t esize = dtype_size(p.dtype);
  uint64_t state_bytes = 0;
  size_t max_layer_params = 0;
  for (int l = 0; l < static_cast<int>(layers.size()); ++l) {
    uint64_t layer_device = 0, layer_nvme = 0;
    max_layer_params = std::max(max_layer_params, layers[l].size());
    for (const ParamSpec& s : layers[l]) {
      const uint64_t b16 = s.numel * esize, b32 = s.numel * 4;
      layer_device += 2 * b16;  // param + grad, both on the device during backward
      p.device_all_layers += 2 * round_up(b16, 256);
      state_bytes += 3 * b32;
      const uint64_t states = 3 * (p.state_home == Tier::kDevice ? b32 : padded(b32));
      const bool delayed = config.strata.delayed_param_update;  // + param_next
      if (!p.offload) {
        p.device_homed += (delayed ? 3 : 2) * b16 + 4 * b32;  // param, grad, grad32, master, m, v
      } else {
        p.host_homed += (delayed ? 2 : 1) * padded(b16) + padded(b32);  // grad, grad32
        if (p.compute_home == Tier::kHost) p.host_homed += padded(b16);
        if (p.compute_home == Tier::kNvme) layer_nvme += padded(b16);
        if (p.state_home == Tier::kHost) p.host_homed += states;
        if (p.state_home == Tier::kNvme) layer_nvme += states;
      }
    }
    if (layer_device > p.largest_layer_device) {
      p.largest_layer_device = layer_device;
      p.largest_layer = l;
    }
    p.nvme_total += layer_nvme;
    p.largest_layer_nvme = std::max(p.largest_layer_nvme, layer_nvme);
  }
  if (config.fp16.enabled) p.device_scratch = padded(max_layer_params * 8);
  if (p.offload) {
    const uint64_t window = static_cast<uint64_t>(config.strata.prefetch_window_bytes);
    p.host_cache = std::min(p.nvme_total, std::max(2 * p.largest_layer_nvme, window));
  }
  // Overlap mode steps layers during backward and keeps copies to undo
  // them whatever the precision (any step can still fail); the delayed
  // update speculates nothing.
  if (config.strata.overlap == config::OverlapMode::kOverlap &&
      !config.strata.delayed_param_update) {
    p.rollback = std::min(state_bytes, static_cast<uint64_t>(config.strata.rollback_buffer_bytes));
  }
  return p;
}

}  // namespace strata::engine
