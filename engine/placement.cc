#include "engine/placement.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "engine/zero_partition.h"
#include "offload/device_pool.h"

namespace strata::engine {
namespace {

using offload::Tier;

uint64_t round_up(uint64_t bytes, uint64_t to) { return (bytes + to - 1) / to * to; }
uint64_t padded(uint64_t bytes) { return round_up(bytes, 4096); }
constexpr uint64_t kPoolBlock = offload::DevicePool::kAlignment;

}  // namespace

absl::StatusOr<Placement> plan_placement(const config::DsConfig& config,
                                         const std::vector<std::vector<ParamSpec>>& layers,
                                         const PlacementOptions& options) {
  if (layers.empty()) return absl::InvalidArgumentError("the model has no layers");
  const config::OffloadDevice where = config.zero.offload_optimizer.device;
  const config::OffloadDevice param_where = config.zero.offload_param.device;
  if (config.zero.stage != 3 && param_where != config::OffloadDevice::kNone) {
    return absl::InvalidArgumentError(
        absl::StrCat("zero_optimization.offload_param needs stage 3 (stage is ", config.zero.stage,
                     "); set zero_optimization.stage to 3 or remove offload_param"));
  }
  if (param_where != config::OffloadDevice::kNone && where == config::OffloadDevice::kNone) {
    return absl::InvalidArgumentError(
        "zero_optimization.offload_param without offload_optimizer: the optimizer would run on "
        "the device, which strata cannot do yet; set offload_optimizer.device to \"cpu\" or "
        "\"nvme\"");
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
  // Data parallel: each rank holds its slice of the fp32 tensors (rank 0's,
  // the largest), all of them at stage 0 (engine/zero_partition.h).
  const int world = std::max(1, config.world_size);
  const bool delayed = config.strata.delayed_param_update;  // + param_next
  // grad, grad32 and param_next live where the optimizer reads them.
  const Tier optimizer_side = p.offload ? Tier::kHost : Tier::kDevice;
  p.grad_home = optimizer_side;
  // Reduced (and stage 1/2 gathered) on the device across ranks: the
  // compute grads and stage 1/2 params stay there (PlacementOptions).
  if (world > 1 && zero_partitions_state(config.zero.stage) && p.offload &&
      options.reduce_on_device && !options.whole_compute_params) {
    if (config.zero.stage < 3) p.compute_home = Tier::kDevice;
    if (param_where == config::OffloadDevice::kNone) p.grad_home = Tier::kDevice;
  }
  uint64_t state_bytes = 0;
  size_t max_layer_params = 0, tensors = 0;
  // The device-homed tensors as the store's pool hands them out (whole blocks).
  uint64_t device_homed_blocks = 0;
  for (int l = 0; l < static_cast<int>(layers.size()); ++l) {
    uint64_t layer_device = 0;
    RoleBytes layer_nvme;
    // Exact on the device, 4 KiB pages in the host arena and the swap file.
    auto home = [&](Tier t, uint64_t RoleBytes::*role, uint64_t bytes) {
      RoleBytes& r = t == Tier::kDevice ? p.device_roles
                     : t == Tier::kHost ? p.host_roles
                                        : layer_nvme;
      r.*role += t == Tier::kDevice ? bytes : padded(bytes);
      if (t == Tier::kDevice) device_homed_blocks += round_up(bytes, kPoolBlock);
    };
    max_layer_params = std::max(max_layer_params, layers[l].size());
    for (const ParamSpec& s : layers[l]) {
      const uint64_t b16 = s.numel * esize;
      // (An empty slice still registers one element.)
      const uint64_t b32 =
          (world == 1
               ? s.numel
               : std::max<uint64_t>(1, state_slice(s.numel, 0, world, config.zero.stage).numel)) *
          4;
      // ZeRO-3 across ranks: each rank's home copy of the compute param is
      // its slice (gathered on the device for forward and backward).
      const uint64_t home16 =
          world > 1 && config.zero.stage >= 3 && !options.whole_compute_params
              ? std::max<uint64_t>(1, partition_slice(s.numel, 0, world).numel) * esize
              : b16;
      layer_device += 2 * b16;  // param + grad, both on the device during backward
      p.device_all_layers += 2 * round_up(b16, kPoolBlock);
      tensors += 2;
      state_bytes += 3 * b32;
      home(p.compute_home, &RoleBytes::param, home16);
      if (delayed) home(optimizer_side, &RoleBytes::param_next, b16);
      home(p.grad_home, &RoleBytes::grad, b16);
      home(optimizer_side, &RoleBytes::grad32, b32);
      home(p.state_home, &RoleBytes::master, b32);
      home(p.state_home, &RoleBytes::exp_avg, b32);
      home(p.state_home, &RoleBytes::exp_avg_sq, b32);
    }
    if (layer_device > p.largest_layer_device) {
      p.largest_layer_device = layer_device;
      p.largest_layer = l;
    }
    for (uint64_t RoleBytes::*role :
         {&RoleBytes::param, &RoleBytes::param_next, &RoleBytes::grad, &RoleBytes::grad32,
          &RoleBytes::master, &RoleBytes::exp_avg, &RoleBytes::exp_avg_sq}) {
      p.nvme_roles.*role += layer_nvme.*role;
    }
    p.largest_layer_nvme = std::max(p.largest_layer_nvme, layer_nvme.total());
  }
  p.device_homed = p.device_roles.total();
  p.host_homed = p.host_roles.total();
  p.nvme_total = p.nvme_roles.total();
  if (p.offload) {
    p.device_working_set = p.device_all_layers;
    if (config.zero.stage == 3 && param_where != config::OffloadDevice::kNone) {
      // DeepSpeed's cap on parameters live on the device, with their grads.
      // Only with offload_param: without it DeepSpeed keeps the partition
      // (with one process, the whole model) on the device, and so does strata.
      uint64_t live = 0;
      if (__builtin_mul_overflow(static_cast<uint64_t>(config.zero.stage3_max_live_parameters),
                                 2 * esize, &live)) {
        live = UINT64_MAX;
      }
      p.device_working_set = std::min(p.device_working_set, std::max(live, p.largest_layer_device));
    }
    // The window's copies rounded up to whole blocks: at most one block of
    // slack per param and grad of the model.
    p.device_pool = std::min(p.device_all_layers, p.device_working_set + tensors * kPoolBlock);
  } else {
    p.device_pool = device_homed_blocks;
  }
  if (config.fp16.enabled) p.device_scratch = padded(max_layer_params * 8);
  if (p.offload) {
    const uint64_t window = static_cast<uint64_t>(config.strata.prefetch_window_bytes);
    p.host_cache = std::min(p.nvme_total, std::max(2 * p.largest_layer_nvme, window));
  }
  // Overlap mode steps layers during backward and keeps copies to undo
  // them whatever the precision (any step can still fail); the delayed
  // update speculates nothing.
  // Across ranks the optimizer does not speculate (offload_optimizer.h).
  if (config.strata.overlap == config::OverlapMode::kOverlap &&
      !config.strata.delayed_param_update && world == 1) {
    p.rollback = std::min(state_bytes, static_cast<uint64_t>(config.strata.rollback_buffer_bytes));
  }
  return p;
}

}  // namespace strata::engine
