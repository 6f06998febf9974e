// MemoryPlan: the bytes a training run needs on each tier (GPU, host, NVMe)
// by tensor role, for a model and a ds_config, before anything is
// allocated; compared with the tiers' capacities and with DeepSpeed's own
// estimate; and, when something does not fit, what to change. `strata plan`
// prints it.
//
// The tensors come from engine::plan_placement, the placement TrainingEngine
// builds its store from, so the plan and the run cannot disagree:
//   GPU   without optimizer offload every homed tensor (Placement::
//         device_roles); with it, the params and grads the device holds
//         (Placement::device_working_set, half each); plus the activations
//         of one micro-batch (Korthikanti et al. 2022, no recomputation):
//         n_layer*b*s*(34*n_embd + 5*n_head*s)*compute_bytes/2 + 4*b*s*vocab
//         (the fp32 logits), b = train_micro_batch_size_per_gpu.
//   host  the host arena: host-homed tensors (Placement::host_roles) and, as
//         "staging", the cache of NVMe-homed tensors (Placement::host_cache).
//   NVMe  the swap file (Placement::nvme_roles).
// Data parallel (config.world_size N > 1): every tier is one rank's, as
// plan_placement sizes it (the engine's ZeRO partition across ranks,
// engine/zero_partition.h); `partitioned` names the roles a rank holds less
// of than one rank alone, and a note names those DeepSpeed splits at the
// config's stage (1: master32, exp_avg, exp_avg_sq; 2: + grad16, grad32;
// 3: + param16) that each rank here still holds whole. Host and NVMe
// capacities are a node's, shared by its world_size / nodes ranks: a tier
// fits when ranks_per_node times the rank's need fits (TierPlan::sharers).
// With the optimizer offloaded at stage 1 to 3 the ranks reduce the grads
// (and gather stage 1/2 params) on the device, so the compute grads (and
// stage 1/2 params) are homed there and a rank's host holds none of them
// (PlacementOptions::reduce_on_device; they count in `partitioned`, being
// held less than by one rank); a note says how much more host memory a
// rank needs where Gloo reduces on the host instead (beside a CUDA GPU).
// The engine registers master, exp_avg and exp_avg_sq for every optimizer
// (Lion and Adagrad included), and so does the plan.
//
// Thread-safe; pure unless PlanCapacities::probe asks it to look at this
// machine. Errors: InvalidArgument for what plan_placement refuses, and
// for nodes that do not divide the world size.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/config/ds_config.h"
#include "engine/model.h"

namespace strata::engine {

// A decoder-only transformer as the plan sees it; the model's own library
// fills it (model::gpt2_plan_model).
struct PlanModel {
  std::string name;
  std::vector<std::vector<ParamSpec>> layers;  // as Model::layer_params
  // DeepSpeed's largest_layer_params: the largest single module's own params.
  int64_t largest_module_params = 0;
  int64_t n_layer = 0;
  int64_t n_head = 0;
  int64_t n_embd = 0;
  int64_t vocab_size = 0;
  int64_t seq_len = 0;
  int64_t param_count() const;
};

// Bytes of each role on one tier.
struct PlanRoles {
  int64_t param16 = 0;  // the compute-dtype params (and delayed update's next params)
  int64_t grad16 = 0;
  int64_t grad32 = 0;
  int64_t master32 = 0;
  int64_t exp_avg = 0;
  int64_t exp_avg_sq = 0;
  int64_t activations = 0;
  int64_t staging = 0;
  int64_t total() const {
    return param16 + grad16 + grad32 + master32 + exp_avg + exp_avg_sq + activations + staging;
  }
};

struct TierCapacity {
  int64_t bytes = 0;
  std::string source;  // "--gpu-mem", "MemAvailable", "free under /nvme", ...
};

struct TierPlan {
  std::string name;  // "gpu", "host", "nvme"
  PlanRoles need;    // one rank's
  std::optional<TierCapacity> capacity;
  // The ranks that share `capacity` (host and NVMe: the ranks of one node;
  // GPU: 1, a GPU per rank).
  int sharers = 1;
  // true when nothing is needed or sharers * need fits; nullopt when the
  // capacity is unknown.
  std::optional<bool> fits() const;
};

// DeepSpeed's estimate_zero2/3_model_states_mem_needs (what its *_all_live
// wrappers print) for `nodes` nodes of g GPUs each (G = g * nodes GPUs in
// all; zero_init, additional_buffer_factor 1.5), N params; GPU per GPU,
// CPU per node, exactly as DeepSpeed computes them:
//   ZeRO-2 offload     GPU 2N,                     CPU N*max(4G, 16)*1.5
//   ZeRO-2 no offload  GPU 4N + 16N/G,             CPU 4N*g*1.5
//   ZeRO-3 all offload GPU 4*largest,              CPU 18N*1.5/nodes
//   ZeRO-3 optimizer   GPU 4*largest + 2N/G,       CPU 16N*1.5/nodes
//   ZeRO-3 no offload  GPU 4*largest + 18N/G,      CPU 4*largest*g*1.5
// (DeepSpeed's ZeRO-2 offload CPU grows with G across nodes, not with g:
// its own formula, kept.) Stages 0 and 1 get the ZeRO-2 estimator
// (DeepSpeed has none of their own).
struct DeepSpeedEstimate {
  std::string estimator;     // "estimate_zero2_model_states_mem_needs_all_live", ...
  std::string formula;       // the line above that applies, with G (and g) filled in
  int64_t gpu = 0;           // per GPU
  int64_t cpu = 0;           // per node
  int64_t cpu_per_rank = 0;  // cpu / g, to set beside one rank's host tier
};
DeepSpeedEstimate deepspeed_estimate(int zero_stage, bool offload_optimizer, bool offload_param,
                                     int64_t params, int64_t largest_module_params,
                                     int gpus_per_node = 1, int nodes = 1);

struct PlanCapacities {
  std::optional<TierCapacity> gpu, host, nvme;  // absent: unknown (or probed)
  // Fill an absent host capacity with what this machine has free
  // (MemAvailable capped by the cgroup limit) and an absent NVMe one, when
  // NVMe is used, with the free space under the config's first nvme_path.
  bool probe = false;
  // The nodes config.world_size ranks span (each holds world_size / nodes
  // ranks); must divide the world size.
  int nodes = 1;
};

struct MemoryPlan {
  std::string model;
  int64_t params = 0;
  int64_t largest_module_params = 0;
  int compute_bytes = 4;
  std::string precision;  // "fp16", "bf16", "fp32"
  std::string optimizer;  // as the engine runs it ("AdamW" when the config has none)
  int world_size = 1;     // config.world_size
  int ranks_per_node = 1;
  // The roles a rank holds less of than one rank alone (empty with one rank).
  std::vector<std::string> partitioned;
  TierPlan gpu{"gpu"}, host{"host"}, nvme{"nvme"};
  DeepSpeedEstimate deepspeed;
  std::vector<std::string> notes;
  std::vector<std::string> advice;  // "to fit": one change each, naming the key
  // false when a tier is short; true when every tier fits; nullopt when
  // nothing is known to be short but a tier's capacity is unknown.
  std::optional<bool> fits() const;
};

absl::StatusOr<MemoryPlan> plan_memory(const PlanModel& model, const config::DsConfig& config,
                                       const PlanCapacities& capacities);

}  // namespace strata::engine
