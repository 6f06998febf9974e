// Placement: where the training engine homes every tensor of a model for a
// ds_config, and the bytes that takes on each tier. TrainingEngine builds
// its store from it; `strata plan` and `strata train` use it to predict the
// run's memory, so the prediction and the run cannot drift apart.
//
// Per parameter (see training_engine.h): param and grad in the compute
// dtype, grad32, master, exp_avg, exp_avg_sq in fp32. Host- and NVMe-homed
// tensors are rounded up to 4 KiB (host arena blocks and swap extents);
// device allocations to 256 bytes (as the devices allocate).
//
// Pure function of its inputs; thread-safe. Errors: InvalidArgument for a
// model without layers, an offload_param outside stage 3, or offload_param
// without offload_optimizer (the optimizer would have to run on the device).
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "core/config/ds_config.h"
#include "core/dtype.h"
#include "engine/model.h"
#include "offload/tiered_store.h"

namespace strata::engine {

// Bytes by tensor role on one tier, as homed there (4 KiB pages off the device).
struct RoleBytes {
  uint64_t param = 0;       // compute dtype
  uint64_t param_next = 0;  // strata.delayed_param_update's next param, compute dtype
  uint64_t grad = 0;        // compute dtype
  uint64_t grad32 = 0;
  uint64_t master = 0;
  uint64_t exp_avg = 0;  // every optimizer: the engine registers all three states
  uint64_t exp_avg_sq = 0;
  uint64_t total() const {
    return param + param_next + grad + grad32 + master + exp_avg + exp_avg_sq;
  }
};

struct Placement {
  DType dtype = DType::kFloat32;
  bool offload = false;                                 // offload_optimizer cpu or nvme
  offload::Tier compute_home = offload::Tier::kDevice;  // param (and its grad's device copy)
  offload::Tier state_home = offload::Tier::kDevice;    // master, exp_avg, exp_avg_sq

  uint64_t device_homed = 0;  // homed on the device (offload none)
  // Params + grads of one layer on the device during its backward; the largest.
  uint64_t largest_layer_device = 0;
  int largest_layer = 0;
  // Params + grads of every layer as the device holds them when its budget
  // allows (stage 1/2 keep them all; stage 3 a window).
  uint64_t device_all_layers = 0;
  uint64_t device_scratch = 0;  // the fp16 overflow check's flags
  uint64_t host_homed = 0;      // host arena: tensors homed on the host
  uint64_t nvme_total = 0;      // swap file: tensors homed on NVMe
  uint64_t largest_layer_nvme = 0;
  // Host arena beyond host_homed by default: a cache of two layers of
  // NVMe-homed tensors, or strata.prefetch_window_bytes if larger.
  uint64_t host_cache = 0;
  // overlap mode: the rollback copies (engine/speculation.h), ordinary host memory.
  uint64_t rollback = 0;
  // The homed bytes above by tier and role: device_roles.total() ==
  // device_homed, host_roles.total() == host_homed, nvme_roles.total() ==
  // nvme_total.
  RoleBytes device_roles, host_roles, nvme_roles;
  // With optimizer offload: the params + grads the device holds at most:
  // every layer (device_all_layers); at stage 3 with offload_param cpu or
  // nvme, capped at stage3_max_live_parameters params with their grads but
  // at least the largest layer. 0 without offload (device_homed holds them).
  // The engine's device budget follows it.
  uint64_t device_working_set = 0;
  // The device pool the store takes at start (offload/device_pool.h): what
  // the device holds at most (device_working_set with offload, device_homed
  // without), each tensor rounded up to the pool's 256-byte blocks. The
  // engine sizes the store's pool by it rather than by the free device
  // memory, which the model's own allocations (activations) need.
  uint64_t device_pool = 0;
};

// ZeRO-3 across ranks (config.world_size > 1) counts each compute param's
// home copy at its slice, as the engine's params (ParamBinding::kStore) are
// held; whole_compute_params counts them whole (a framework binding its
// params in its own memory keeps a whole copy in the store).
absl::StatusOr<Placement> plan_placement(const config::DsConfig& config,
                                         const std::vector<std::vector<ParamSpec>>& layers,
                                         bool whole_compute_params = false);

}  // namespace strata::engine
