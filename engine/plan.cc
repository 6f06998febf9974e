#include "engine/plan.h"

#include <sys/statvfs.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/format_bytes.h"
#include "core/host_info.h"
#include "core/status.h"
#include "engine/placement.h"

namespace strata::engine {
namespace {

using config::OffloadDevice;
using config::OptimizerType;

int64_t i64(uint64_t v) { return static_cast<int64_t>(v); }
std::string bytes(int64_t v) { return format_bytes(static_cast<double>(v)); }

PlanRoles roles_of(const RoleBytes& r) {
  PlanRoles p;
  p.param16 = i64(r.param + r.param_next);
  p.grad16 = i64(r.grad);
  p.grad32 = i64(r.grad32);
  p.master32 = i64(r.master);
  p.exp_avg = i64(r.exp_avg);
  p.exp_avg_sq = i64(r.exp_avg_sq);
  return p;
}

std::string first_nvme_path(const config::DsConfig& c) {
  for (const auto* paths : {&c.zero.offload_optimizer.nvme_paths, &c.zero.offload_param.nvme_paths,
                            &c.strata.nvme_paths}) {
    if (!paths->empty()) return paths->front();
  }
  return "";
}

std::optional<TierCapacity> probe_host_capacity() {
  const MemoryInfo mem = probe_host().memory;
  if (mem.usable_bytes() == 0) return std::nullopt;
  const bool cgroup = mem.cgroup_limit_bytes && *mem.cgroup_limit_bytes < mem.available_bytes;
  return TierCapacity{i64(mem.usable_bytes()), cgroup ? "cgroup limit" : "MemAvailable"};
}

std::optional<TierCapacity> probe_nvme_capacity(const config::DsConfig& c) {
  const std::string path = first_nvme_path(c);
  struct statvfs st {};
  if (path.empty() || ::statvfs(path.c_str(), &st) != 0) return std::nullopt;
  return TierCapacity{i64(uint64_t{st.f_bavail} * st.f_frsize), absl::StrCat("free under ", path)};
}

// What to change for each tier that is short, naming the ds_config key.
std::vector<std::string> advise(const config::DsConfig& c, const Placement& pl,
                                const MemoryPlan& p) {
  std::vector<std::string> advice;
  const auto& z = c.zero;
  if (p.gpu.fits() == false) {
    const PlanRoles& g = p.gpu.need;
    if (!pl.offload) {
      advice.push_back(absl::StrCat(
          "GPU: set zero_optimization.offload_optimizer.device to \"cpu\" to move the optimizer's ",
          bytes(g.grad32 + g.master32 + g.exp_avg + g.exp_avg_sq),
          " (fp32 gradients, master weights, optimizer states) to the host"));
    } else if (z.stage < 3) {
      advice.push_back(absl::StrCat(
          "GPU: ZeRO stage 3 (zero_optimization.stage 3) keeps at most "
          "stage3_max_live_parameters params (now ",
          z.stage3_max_live_parameters, ") and their grads on the GPU instead of every layer's ",
          bytes(i64(pl.device_working_set))));
    } else if (pl.device_working_set > pl.largest_layer_device) {
      advice.push_back(absl::StrCat(
          "GPU: lower zero_optimization.stage3_max_live_parameters (now ",
          z.stage3_max_live_parameters, "): the GPU holds ", bytes(i64(pl.device_working_set)),
          " of params and grads; the largest layer needs ", bytes(i64(pl.largest_layer_device))));
    }
    const int64_t b = c.train_micro_batch_size_per_gpu;
    if (b > 1) {
      advice.push_back(absl::StrCat(
          "GPU: activations take ", bytes(g.activations), " at train_micro_batch_size_per_gpu ", b,
          "; a smaller micro batch (", b / 2,
          " needs about half) with gradient_accumulation_steps raised to keep train_batch_size ",
          c.train_batch_size));
    } else {
      advice.push_back(absl::StrCat("GPU: activations take ", bytes(g.activations),
                                    " at micro batch 1; use a shorter sequence or a larger GPU"));
    }
  }
  if (p.host.fits() == false) {
    const PlanRoles& h = p.host.need;
    if (z.offload_optimizer.device == OffloadDevice::kCpu) {
      advice.push_back(absl::StrCat(
          "host: set zero_optimization.offload_optimizer.device to \"nvme\" with an nvme_path to "
          "move master weights and optimizer states (",
          bytes(h.master32 + h.exp_avg + h.exp_avg_sq), ") to NVMe"));
    }
    if (z.offload_param.device == OffloadDevice::kCpu) {
      advice.push_back(
          "host: set zero_optimization.offload_param.device to \"nvme\" to move the 16-bit "
          "parameters to NVMe");
    }
    const uint64_t two_layers = 2 * pl.largest_layer_nvme;
    if (pl.host_cache > two_layers) {
      advice.push_back(absl::StrCat(
          "host: lower strata.prefetch_window_bytes (now ", c.strata.prefetch_window_bytes,
          "): the host caches max(two layers, prefetch_window_bytes) of NVMe-homed tensors = ",
          bytes(i64(pl.host_cache)), "; two layers take ", bytes(i64(two_layers))));
    }
    advice.push_back("host: free memory or give a larger --host-mem if more is available");
  }
  if (p.nvme.fits() == false) {
    advice.push_back(
        "NVMe: free space under nvme_path, or list several drives in nvme_path to stripe across "
        "them");
  }
  return advice;
}

// The roles each ZeRO stage splits across ranks in DeepSpeed.
std::vector<std::string> deepspeed_partitions(int stage) {
  std::vector<std::string> roles;
  if (stage >= 1) roles = {"master32", "exp_avg", "exp_avg_sq"};
  if (stage >= 2) roles.insert(roles.end(), {"grad16", "grad32"});
  if (stage >= 3) roles.push_back("param16");
  return roles;
}

int64_t PlanRoles::*role_named(const std::string& name) {
  if (name == "param16") return &PlanRoles::param16;
  if (name == "grad16") return &PlanRoles::grad16;
  if (name == "grad32") return &PlanRoles::grad32;
  if (name == "master32") return &PlanRoles::master32;
  if (name == "exp_avg") return &PlanRoles::exp_avg;
  return &PlanRoles::exp_avg_sq;
}

// Names, in p->partitioned, the roles a rank holds less of than one rank
// alone (`alone`, the same config at world size 1) on some tier, and says
// in a note which of the roles DeepSpeed splits at this stage every rank
// still holds whole.
void name_partitions(const MemoryPlan& alone, MemoryPlan* p, int stage) {
  static const char* const kRoles[] = {"param16",  "grad16",  "grad32",
                                       "master32", "exp_avg", "exp_avg_sq"};
  std::vector<std::string> whole;
  for (const char* name : kRoles) {
    int64_t PlanRoles::*role = role_named(name);
    bool split = false;
    for (auto [rank, one] : {std::pair{&p->gpu, &alone.gpu}, std::pair{&p->host, &alone.host},
                             std::pair{&p->nvme, &alone.nvme}}) {
      split = split || rank->need.*role < one->need.*role;
    }
    if (split) p->partitioned.push_back(name);
  }
  for (const std::string& name : deepspeed_partitions(stage)) {
    if (std::find(p->partitioned.begin(), p->partitioned.end(), name) == p->partitioned.end()) {
      whole.push_back(name);
    }
  }
  if (!whole.empty()) {
    p->notes.push_back(absl::StrCat("ZeRO stage ", stage, " in DeepSpeed also splits ",
                                    absl::StrJoin(whole, ", "), " across ranks; each of the ",
                                    p->world_size, " ranks here holds them whole"));
  }
}

}  // namespace

int64_t PlanModel::param_count() const {
  int64_t n = 0;
  for (const auto& layer : layers) {
    for (const ParamSpec& s : layer) n += i64(s.numel);
  }
  return n;
}

std::optional<bool> TierPlan::fits() const {
  if (need.total() == 0) return true;
  if (!capacity) return std::nullopt;
  // In 128 bits: a rank's need times the ranks of a node may pass 2^63.
  return static_cast<__int128>(need.total()) * std::max(sharers, 1) <= capacity->bytes;
}

std::optional<bool> MemoryPlan::fits() const {
  bool unknown = false;
  for (const TierPlan* t : {&gpu, &host, &nvme}) {
    const std::optional<bool> f = t->fits();
    if (f == false) return false;
    if (!f) unknown = true;
  }
  if (unknown) return std::nullopt;
  return true;
}

DeepSpeedEstimate deepspeed_estimate(int zero_stage, bool offload_optimizer, bool offload_param,
                                     int64_t params, int64_t largest_module_params,
                                     int gpus_per_node, int nodes) {
  const int per_node = std::max(gpus_per_node, 1);
  const int node_count = std::max(nodes, 1);
  const double n = static_cast<double>(params);
  const double g = per_node;                                        // DeepSpeed's num_gpus_per_node
  const double total = static_cast<double>(per_node) * node_count;  // its total_gpus
  const int64_t largest = 4 * largest_module_params;
  const std::string with_g = node_count == 1
                                 ? absl::StrCat(" with G = ", per_node)
                                 : absl::StrCat(" with G = ", per_node * node_count,
                                                ", g = ", per_node, ", nodes = ", node_count);
  DeepSpeedEstimate e;
  if (zero_stage < 3) {
    e.estimator = "estimate_zero2_model_states_mem_needs_all_live";
    if (offload_optimizer) {
      e.formula = "cpu_offload: GPU 2N, CPU N*max(4G, 16)*1.5" + with_g;
      e.gpu = 2 * params;
      e.cpu = static_cast<int64_t>(n * std::max(4 * total, 16.0) * 1.5);
    } else {
      e.formula = "no offload: GPU 4N + 16N/G, CPU 4N*g*1.5" + with_g;
      e.gpu = 4 * params + static_cast<int64_t>(16 * n / total);
      e.cpu = static_cast<int64_t>(n * 4 * g * 1.5);
    }
  } else {
    e.estimator = "estimate_zero3_model_states_mem_needs_all_live";
    if (offload_optimizer && offload_param) {
      e.formula = "params and optimizer offloaded: GPU 4*largest_layer, CPU 18N*1.5/nodes" + with_g;
      e.gpu = largest;
      e.cpu = static_cast<int64_t>(n * 18 / node_count * 1.5);
    } else if (offload_optimizer) {
      e.formula = "optimizer offloaded: GPU 4*largest_layer + 2N/G, CPU 16N*1.5/nodes" + with_g;
      e.gpu = largest + static_cast<int64_t>(2 * n / total);
      e.cpu = static_cast<int64_t>(n * 16 / node_count * 1.5);
    } else {
      e.formula = "no offload: GPU 4*largest_layer + 18N/G, CPU 4*largest_layer*g*1.5" + with_g;
      e.gpu = largest + static_cast<int64_t>(18 * n / total);
      e.cpu = static_cast<int64_t>(static_cast<double>(largest) * g * 1.5);
    }
  }
  e.cpu_per_rank = e.cpu / per_node;
  return e;
}

absl::StatusOr<MemoryPlan> plan_memory(const PlanModel& model, const config::DsConfig& config,
                                       const PlanCapacities& capacities) {
  STRATA_ASSIGN_OR_RETURN(const Placement pl, plan_placement(config, model.layers));
  MemoryPlan p;
  p.model = model.name;
  p.params = model.param_count();
  p.largest_module_params = model.largest_module_params;
  p.compute_bytes = static_cast<int>(dtype_size(pl.dtype));
  p.precision = config.fp16.enabled ? "fp16" : config.bf16.enabled ? "bf16" : "fp32";
  p.optimizer = std::string(config::to_string(config.optimizer.type));
  if (config.optimizer.type == OptimizerType::kNone) {
    p.optimizer = "AdamW";
    p.notes.push_back("the config has no \"optimizer\" section; AdamW (two fp32 states) assumed");
  } else if (config.optimizer.type == OptimizerType::kLion ||
             config.optimizer.type == OptimizerType::kAdagrad) {
    p.notes.push_back(absl::StrCat(p.optimizer,
                                   " reads one fp32 state, but the engine keeps exp_avg and "
                                   "exp_avg_sq for every optimizer; both are counted"));
  }

  if (pl.offload) {
    p.gpu.need.param16 = i64(pl.device_working_set / 2);
    p.gpu.need.grad16 = i64(pl.device_working_set / 2);
  } else {
    p.gpu.need = roles_of(pl.device_roles);
  }
  // In 128 bits: the config's micro batch may be anything up to 2^63.
  using Wide = __int128;
  const Wide b = config.train_micro_batch_size_per_gpu, s = model.seq_len;
  const Wide activations = model.n_layer * b * s *
                               (34 * Wide{model.n_embd} + 5 * model.n_head * s) * p.compute_bytes /
                               2 +
                           4 * b * s * model.vocab_size;
  if (activations > Wide{1} << 62) {
    return absl::InvalidArgumentError(absl::StrCat(
        "train_micro_batch_size_per_gpu ", config.train_micro_batch_size_per_gpu, " with ",
        model.name, "'s sequence of ", model.seq_len,
        " tokens needs more activation memory than any machine has; lower the micro batch"));
  }
  p.gpu.need.activations = static_cast<int64_t>(activations);
  p.host.need = roles_of(pl.host_roles);
  p.host.need.staging = i64(pl.host_cache);
  p.nvme.need = roles_of(pl.nvme_roles);
  const int nodes = std::max(capacities.nodes, 1);
  if (config.world_size % nodes != 0) {
    return absl::InvalidArgumentError(absl::StrCat("world size ", config.world_size,
                                                   " does not split evenly over ", nodes,
                                                   " nodes; give a node count that divides it"));
  }
  p.world_size = config.world_size;
  p.ranks_per_node = config.world_size / nodes;
  p.host.sharers = p.nvme.sharers = p.ranks_per_node;
  if (p.world_size > 1) {
    // The one-rank plan of the same config, to see what the placement split.
    config::DsConfig one = config;
    one.world_size = 1;
    STRATA_ASSIGN_OR_RETURN(const MemoryPlan alone, plan_memory(model, one, {}));
    name_partitions(alone, &p, config.zero.stage);
    // The tiers above reduce and gather on the device (PlacementOptions);
    // Gloo beside a CUDA device cannot, and the host holds more.
    STRATA_ASSIGN_OR_RETURN(const Placement on_host,
                            plan_placement(config, model.layers, {.reduce_on_device = false}));
    if (on_host.host_homed > pl.host_homed) {
      p.notes.push_back(absl::StrCat(
          "each rank keeps its ", config.zero.stage < 3 ? "compute params and " : "",
          "compute grads on the GPU only (the ranks reduce the grads",
          config.zero.stage < 3 ? " and gather the params" : "",
          " there); with the Gloo backend beside a CUDA GPU they are reduced on the host, which "
          "then keeps a whole copy of them: ",
          bytes(i64(on_host.host_homed - pl.host_homed)), " more host memory per rank"));
    }
  }
  if (p.ranks_per_node > 1) {
    p.notes.push_back(
        absl::StrCat("tiers are one rank's; host and NVMe capacities are a node's, shared by its ",
                     p.ranks_per_node, " ranks"));
  }
  if (pl.rollback > 0) {
    p.notes.push_back(absl::StrCat(
        "overlap mode keeps up to ", bytes(i64(pl.rollback)),
        " of optimizer-state copies in host memory beside the tiers, to undo a step an fp16 "
        "overflow or clipping rejects (strata.rollback_buffer_bytes)"));
  }

  p.deepspeed = deepspeed_estimate(config.zero.stage, pl.offload,
                                   config.zero.offload_param.device != OffloadDevice::kNone,
                                   p.params, p.largest_module_params, p.ranks_per_node, nodes);
  if (config.zero.stage < 2) {
    p.notes.push_back("DeepSpeed has no estimator for ZeRO stage 0/1; its ZeRO-2 one is shown");
  }

  p.gpu.capacity = capacities.gpu;
  p.host.capacity = capacities.host;
  p.nvme.capacity = capacities.nvme;
  if (capacities.probe) {
    if (!p.host.capacity) p.host.capacity = probe_host_capacity();
    if (!p.nvme.capacity && p.nvme.need.total() > 0) p.nvme.capacity = probe_nvme_capacity(config);
  }
  p.advice = advise(config, pl, p);
  return p;
}

}  // namespace strata::engine
