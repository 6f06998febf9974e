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
  bool offload = false;  // offload_optimizer cpu or nvme
  // The compute param (kStore; with offload it has a device copy besides).
  offload::Tier compute_home = offload::Tier::kDevice;
  // The kStore compute-dtype grad: where the optimizer reads it (the host
  // with offload), or the device where the ranks reduce it there (below).
  offload::Tier grad_home = offload::Tier::kDevice;
  offload::Tier state_home = offload::Tier::kDevice;  // master, exp_avg, exp_avg_sq

  // Homed on the device: everything without offload; across ranks the
  // compute grads and stage 1/2 params PlacementOptions::reduce_on_device
  // homes there (inside device_working_set, not beside it).
  uint64_t device_homed = 0;
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

// Across ranks (config.world_size > 1), what the optimizer's data-parallel
// path decides (engine/offload_optimizer.h, "Data parallel").
struct PlacementOptions {
  // ZeRO-3 counts each compute param's home copy at its slice, as the
  // engine's params (ParamBinding::kStore) are held; true counts them whole
  // (a framework binding its params in its own memory keeps a whole copy
  // in the store), and homes nothing on the device below.
  bool whole_compute_params = false;
  // Stage 1 to 3 with the optimizer offloaded, where the communicator works
  // on the device's memory (Gloo on SimDevice; DeepSpeed's NCCL path):
  // gradients are reduced and stage 1/2 params gathered on the device, so
  // a rank's host never reads the compute-dtype grads nor holds the
  // stage 1/2 compute params. Both are then homed on the device, which holds
  // every layer's params and grads anyway (device_all_layers), as
  // DeepSpeed's ZeRO-Offload keeps them on the GPU: the rank's host tier
  // holds only its fp32 slices (and, at stage 3, its param slice). Not the
  // grads at stage 3 with offload_param (the device holds a window of
  // layers there, not all of them). false: Gloo beside a CUDA device, where
  // both cross PCIe whole and the host homes them whole.
  bool reduce_on_device = true;
};
absl::StatusOr<Placement> plan_placement(const config::DsConfig& config,
                                         const std::vector<std::vector<ParamSpec>>& layers,
                                         const PlacementOptions& options = {});

}  // namespace strata::engine
