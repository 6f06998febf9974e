#include "engine/offload_optimizer.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/log.h"
#include "core/status.h"
#include "engine/config_validate.h"
#include "engine/offload_optimizer_impl.h"
#include "engine/swap_scratch.h"
#include "swap/io_config.h"

namespace strata::engine {
namespace {

using offload::Access;
using offload::TensorRole;
using offload::TensorView;
using offload::Tier;

absl::StatusOr<cpu_adam::OptimizerKind> optimizer_kind(config::OptimizerType t) {
  switch (t) {
    case config::OptimizerType::kAdam:
      return cpu_adam::OptimizerKind::kAdam;
    case config::OptimizerType::kAdamW:
      return cpu_adam::OptimizerKind::kAdamW;
    case config::OptimizerType::kAdagrad:
      return cpu_adam::OptimizerKind::kAdagrad;
    case config::OptimizerType::kLion:
      return cpu_adam::OptimizerKind::kLion;
    case config::OptimizerType::kNone:
      break;
  }
  return absl::InvalidArgumentError(
      "ds_config has no \"optimizer\" section; add one, e.g. \"optimizer\": {\"type\": "
      "\"AdamW\", \"params\": {\"lr\": 1e-4}}");
}

// Checks that the engine can create and remove files in `dir` (creating it
// when missing, as DeepSpeed does), before any swap file is laid out.
absl::Status check_nvme_dir(const std::string& dir) {
  const std::string key = "zero_optimization.offload_optimizer.nvme_path";
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec || !std::filesystem::is_directory(dir)) {
    return absl::FailedPreconditionError(
        absl::StrCat(key, ": \"", dir, "\" is not a directory the engine can create (",
                     ec ? ec.message() : "a file is in the way",
                     "); point nvme_path at a writable directory on an NVMe drive"));
  }
  const std::string probe =
      (std::filesystem::path(dir) / absl::StrCat(".strata_write_probe_", ::getpid())).string();
  int fd = ::open(probe.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
  if (fd < 0) {
    const int err = errno;
    return absl::FailedPreconditionError(
        absl::StrCat(key, ": cannot create files in \"", dir, "\" (", std::strerror(err),
                     "); point nvme_path at a writable directory on an NVMe drive or fix its "
                     "permissions"));
  }
  ::close(fd);
  ::unlink(probe.c_str());
  return absl::OkStatus();
}

uint64_t round_up_page(uint64_t bytes) { return (bytes + 4095) / 4096 * 4096; }

}  // namespace

// ---------------------------------------------------------------------------
// Creation and registration.

absl::StatusOr<std::unique_ptr<OffloadOptimizer>> OffloadOptimizer::create(
    const config::DsConfig& config, gpu::Device* device, OffloadOptimizerOptions options) {
  if (device == nullptr) return absl::InvalidArgumentError("the optimizer needs a device");
  std::unique_ptr<OffloadOptimizer> opt(new OffloadOptimizer());
  opt->impl_ = std::make_unique<Impl>();
  STRATA_RETURN_IF_ERROR(opt->impl_->configure(config, device, std::move(options)));
  return opt;
}

OffloadOptimizer::~OffloadOptimizer() = default;

OffloadOptimizer::Impl::~Impl() {
  if (absl::Status s = wait_for_save(); !s.ok()) {
    log::get("engine")->error("asynchronous checkpoint save failed: {}", std::string(s.message()));
  }
  dp_stop_thread();  // it uses the store and the communicator
  if (device != nullptr) {
    // Every bucket's gathered params live in these.
    for (void* slot : gather_slots_all) device->free(slot);
    if (gather_packed != nullptr) device->free(gather_packed);
    if (have_gather_stream) device->destroy_stream(gather_stream);
    if (dp_dev_whole != nullptr) device->free(dp_dev_whole);
    if (dp_dev_part != nullptr) device->free(dp_dev_part);
    if (dp_dev_gather != nullptr) device->free(dp_dev_gather);
    if (dp_dev_part16 != nullptr) device->free(dp_dev_part16);
    if (dp_param_part_registered)
      device->unregister_host_memory(dp_param_part.data()).IgnoreError();
    if (staging_registered) device->unregister_host_memory(staging.data()).IgnoreError();
    if (have_dp_stream) device->destroy_stream(dp_stream);
  }
  worker.reset();  // its jobs use the store
  store.reset();   // before the I/O engine and the stream it uses
  own_io.reset();
  for (const std::string& f : swap_files) {
    std::error_code ec;
    std::filesystem::remove(f, ec);
  }
  if (device != nullptr) {
    for (gpu::EventId e : bucket_events) device->destroy_event(e);
    if (have_stream) device->destroy_stream(stream);
  }
}

absl::Status OffloadOptimizer::Impl::configure(const config::DsConfig& cfg, gpu::Device* dev,
                                               OffloadOptimizerOptions opts) {
  config = cfg;
  device = dev;
  options = std::move(opts);
  gas = std::max<int64_t>(1, config.gradient_accumulation_steps);
  comm = options.comm;
  world = comm != nullptr ? comm->world_size() : 1;
  rank = comm != nullptr ? comm->rank() : 0;
  if (!(options.grad_divisor > 0) || !std::isfinite(options.grad_divisor)) {
    return absl::InvalidArgumentError(
        absl::StrCat("OffloadOptimizerOptions::grad_divisor must be finite and above 0 (got ",
                     options.grad_divisor, ")"));
  }
  // What the config alone decides: the same checks as `strata config check`.
  STRATA_RETURN_IF_ERROR(validate_for_training(config, "ds_config", world));
  if (dp() && comm->device_memory()) {
    // Stage 2/3 reduce and gather kStore params on the device, but on the
    // optimizer's streams, not on the NCCL communicator's (nothing orders
    // the two yet), and stage 0/1, kHost / kDevice bindings, the post-step
    // gather and read_param use host memory, which NCCL cannot take.
    return absl::UnimplementedError(
        "a communicator on device memory (NCCL) is not supported by the optimizer yet: part of "
        "its collectives run on host memory and the device-side ones are not ordered with the "
        "NCCL stream; connect with the Gloo backend (dist::Backend::kGloo), which works beside a "
        "CUDA device too");
  }
  if (dp() && config.strata.delayed_param_update) {
    return absl::InvalidArgumentError(absl::StrCat(
        "strata.delayed_param_update with ", world,
        " data-parallel ranks: not supported (the update would run while the next step's "
        "gradients are reduced); turn it off"));
  }
  // Without offload the host optimizer reads and writes device memory.
  if (config.zero.offload_optimizer.device == config::OffloadDevice::kNone &&
      !device->host_addressable()) {
    return absl::UnimplementedError(absl::StrCat(
        "zero_optimization.offload_optimizer.device \"none\" needs a device-side optimizer, "
        "which strata does not have yet (device ",
        device->name(), "); set offload_optimizer.device to \"cpu\" or \"nvme\""));
  }
  overlap = config.strata.overlap == config::OverlapMode::kOverlap;
  dpu = config.strata.delayed_param_update;
  if (dpu && config.zero.offload_optimizer.device == config::OffloadDevice::kNvme) {
    // Measured (bench step): its update's reads fall across the store's
    // steps, the host tier's trace keeps changing and eviction falls back
    // to LRU, so the states cross NVMe about twice per step.
    log::get("engine")->warn(
        "strata.delayed_param_update with offload_optimizer nvme moves about twice the NVMe "
        "bytes of overlap mode in this version and is slower; it pays off with "
        "offload_optimizer cpu");
  }
  STRATA_ASSIGN_OR_RETURN(kind, optimizer_kind(config.optimizer.type));
  dtype = config.fp16.enabled   ? DType::kFloat16
          : config.bf16.enabled ? DType::kBFloat16
                                : DType::kFloat32;
  if (config.fp16.enabled) {
    scaler = std::make_unique<LossScaler>(
        LossScalerOptions{.static_scale = config.fp16.loss_scale,
                          .initial_scale_power = config.fp16.initial_scale_power,
                          .loss_scale_window = config.fp16.loss_scale_window,
                          .hysteresis = config.fp16.hysteresis,
                          .consecutive_hysteresis = config.fp16.consecutive_hysteresis,
                          .min_loss_scale = config.fp16.min_loss_scale});
  }
  if (options.lr_schedule != nullptr) {
    schedule = std::move(options.lr_schedule);
  } else {
    STRATA_ASSIGN_OR_RETURN(schedule, make_lr_schedule(config.scheduler, config.optimizer.lr));
  }
  opt_tier = config.zero.offload_optimizer.device != config::OffloadDevice::kNone ? Tier::kHost
                                                                                  : Tier::kDevice;
  return absl::OkStatus();
}

GroupHyperparams group_hyperparams(const config::DsConfig& c) {
  return GroupHyperparams{.lr = c.optimizer.lr,
                          .beta1 = c.optimizer.betas[0],
                          .beta2 = c.optimizer.betas[1],
                          .eps = c.optimizer.eps,
                          .weight_decay = c.optimizer.weight_decay,
                          .bias_correction = c.optimizer.bias_correction};
}

GroupHyperparams OffloadOptimizer::default_group() const {
  return group_hyperparams(impl_->config);
}

int OffloadOptimizer::add_group(const GroupHyperparams& hp) {
  impl_->groups.push_back(hp);
  return static_cast<int>(impl_->groups.size()) - 1;
}

absl::StatusOr<ParamHandle> OffloadOptimizer::add_param(const ParamDesc& desc) {
  Impl& m = *impl_;
  const std::string what = absl::StrCat("add_param \"", desc.name, "\"");
  if (m.finalized) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": the optimizer is finalized; register every param before finalize()"));
  }
  if (desc.numel == 0) return absl::InvalidArgumentError(absl::StrCat(what, ": numel is 0"));
  if (desc.bucket < 0) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": bucket ", desc.bucket, " is negative"));
  }
  if (desc.group < 0 || desc.group >= static_cast<int>(m.groups.size())) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": no group ", desc.group, " (",
                                                   m.groups.size(),
                                                   " added; add_group before add_param)"));
  }
  if (desc.binding != ParamBinding::kStore && (desc.param == nullptr || desc.grad == nullptr)) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": a host or device binding needs both param and grad pointers"));
  }
  if (desc.binding != ParamBinding::kStore && m.dpu) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": strata.delayed_param_update works with store-held params only; turn it off"));
  }
  if (desc.bucket >= static_cast<int>(m.buckets.size())) m.buckets.resize(desc.bucket + 1);
  for (ParamHandle h : m.buckets[desc.bucket]) {
    if (m.params[h].desc.name == desc.name) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": bucket ", desc.bucket, " already has a param of that name"));
    }
  }
  Impl::ParamRec rec;
  rec.desc = desc;
  rec.index = static_cast<int>(m.buckets[desc.bucket].size());
  const ParamHandle h = static_cast<ParamHandle>(m.params.size());
  m.params.push_back(std::move(rec));
  m.buckets[desc.bucket].push_back(h);
  if (desc.binding == ParamBinding::kDevice) m.has_device_bindings = true;
  return h;
}

absl::Status OffloadOptimizer::finalize() {
  Impl& m = *impl_;
  if (m.finalized) return absl::FailedPreconditionError("finalize: already finalized");
  for (Impl::ParamRec& p : m.params) {
    p.slice = state_slice(p.desc.numel, m.rank, m.world, m.config.zero.stage);
    p.param_sliced =
        m.partitioned() && m.config.zero.stage >= 3 && p.desc.binding == ParamBinding::kStore;
    m.params_sliced = m.params_sliced || p.param_sliced;
  }
  m.full_params.assign(m.buckets.size(), {});
  std::vector<std::vector<ParamSpec>> specs(m.buckets.size());
  for (size_t b = 0; b < m.buckets.size(); ++b) {
    for (ParamHandle h : m.buckets[b]) {
      specs[b].push_back(ParamSpec{m.params[h].desc.name, m.params[h].desc.numel});
    }
  }
  // ZeRO-3 across ranks slices only kStore params' compute copies.
  const bool whole_params =
      std::any_of(m.params.begin(), m.params.end(),
                  [](const Impl::ParamRec& p) { return p.desc.binding != ParamBinding::kStore; });
  // Across ranks, reduced and gathered on the device: the compute grads and
  // stage 1/2 params are homed there (PlacementOptions::reduce_on_device).
  PlacementOptions placing{.whole_compute_params = whole_params,
                           .reduce_on_device = m.dp() && m.dp_comm_on_device()};
  STRATA_ASSIGN_OR_RETURN(m.plan, plan_placement(m.config, specs, placing));
  absl::StatusOr<Impl::StoreBudgets> budgets = m.store_budgets();
  if (!budgets.ok() && m.plan.offload && m.plan.device_homed > 0) {
    // A device budget that cannot hold every layer's params and grads: they
    // stay homed on the host, whence the store moves a window of them, as
    // with one rank (the host then holds them whole).
    placing.reduce_on_device = false;
    STRATA_ASSIGN_OR_RETURN(m.plan, plan_placement(m.config, specs, placing));
    budgets = m.store_budgets();
  }
  STRATA_RETURN_IF_ERROR(budgets.status());
  STRATA_RETURN_IF_ERROR(m.create_store(*budgets));
  STRATA_RETURN_IF_ERROR(m.register_tensors());
  STRATA_RETURN_IF_ERROR(m.prepare_step_state());
  m.finalized = true;
  return absl::OkStatus();
}

absl::StatusOr<OffloadOptimizer::Impl::StoreBudgets> OffloadOptimizer::Impl::store_budgets() const {
  const bool params_offloaded =
      config.zero.stage == 3 && config.zero.offload_param.device != config::OffloadDevice::kNone;
  StoreBudgets b{.device = options.device_budget_bytes, .host = options.host_budget_bytes};
  if (b.device == 0) {
    // The overflow check's scratch comes out of the device before the store's budget.
    const gpu::DeviceMemoryStats ds = device->stats();
    b.device = ds.capacity_bytes > ds.used_bytes + plan.device_scratch
                   ? ds.capacity_bytes - ds.used_bytes - plan.device_scratch
                   : 0;
    // At stage 3 with offload_param, DeepSpeed's cap on live parameters
    // (plan_placement, the one owner of that rule).
    if (params_offloaded) b.device = std::min(b.device, plan.device_working_set);
  }
  if (plan.largest_layer_device > b.device) {
    return absl::ResourceExhaustedError(absl::StrCat(
        params_offloaded ? "ZeRO-3 fetches one layer at a time, but " : "", "layer ",
        plan.largest_layer, " needs ", plan.largest_layer_device, " bytes on the device for its ",
        std::string(dtype_name(plan.dtype)), " params and grads, more than the device budget of ",
        b.device, " bytes; ",
        params_offloaded
            ? "use a device with more memory or a model with smaller layers"
            : "raise the device budget, use a device with more memory or split the layer"));
  }
  if (plan.device_homed > b.device) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "without optimizer offload every param, grad and optimizer state lives on the device: ",
        plan.device_homed, " bytes, more than the device budget of ", b.device,
        " bytes; set zero_optimization.offload_optimizer.device to \"cpu\" or \"nvme\""));
  }
  if (!plan.offload) {
    b.host = 0;
    return b;
  }
  if (b.host == 0) {
    b.host = plan.host_homed + plan.host_cache;
    // The store's copies of framework-held params (the placement counts
    // them as device params).
    for (const ParamRec& p : params) {
      if (p.desc.binding != ParamBinding::kStore) {
        b.host += round_up_page(p.desc.numel * dtype_size(dtype));
      }
    }
  }
  if (b.host < plan.host_homed + plan.largest_layer_nvme) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the host budget of ", b.host, " bytes cannot hold the host-homed tensors (",
                     plan.host_homed, " bytes) plus one layer's optimizer states from NVMe (",
                     plan.largest_layer_nvme, " bytes); raise the host budget"));
  }
  return b;
}

absl::Status OffloadOptimizer::Impl::create_store(const StoreBudgets& budgets) {
  offload::TieredStore::Options so;
  so.device = device;
  so.device_budget_bytes = budgets.device;
  // The pool holds what the plan puts on the device, not the whole budget
  // (by default the device's free memory, which the model's activations and
  // workspace, allocated later, need). A budget below the plan keeps the
  // store's own rule: the pool follows the budget.
  so.device_pool_bytes = plan.device_pool <= budgets.device ? plan.device_pool : 0;
  so.host_budget_bytes = budgets.host;
  so.pin_device = config.zero.offload_optimizer.pin_memory ? device : nullptr;
  so.prefetch_window_bytes = static_cast<uint64_t>(config.strata.prefetch_window_bytes);
  STRATA_RETURN_IF_ERROR(add_swap_files(so));
  STRATA_ASSIGN_OR_RETURN(store, offload::TieredStore::create(so));
  return absl::OkStatus();
}

absl::Status OffloadOptimizer::Impl::add_swap_files(offload::TieredStore::Options& so) {
  const Tier state_home = plan.state_home;
  const Tier compute_home = plan.compute_home;
  if (state_home != Tier::kNvme && compute_home != Tier::kNvme) return absl::OkStatus();
  // One swap file per directory; NVMe-homed states and params are striped
  // over all of them.
  std::vector<std::string> dirs;
  auto add_dirs = [&](const std::vector<std::string>& more) {
    for (const std::string& d : more) {
      if (std::find(dirs.begin(), dirs.end(), d) == dirs.end()) dirs.push_back(d);
    }
  };
  const char* who = nullptr;
  if (state_home == Tier::kNvme) {
    add_dirs(config.zero.offload_optimizer.nvme_paths);
    if (config.zero.offload_optimizer.nvme_paths.empty()) who = "offload_optimizer";
  }
  if (compute_home == Tier::kNvme) {
    add_dirs(config.zero.offload_param.nvme_paths);
    if (config.zero.offload_param.nvme_paths.empty()) who = "offload_param";
  }
  if (who != nullptr) add_dirs(config.strata.nvme_paths);
  if (dirs.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("zero_optimization.", who,
                     ".device is \"nvme\" but no nvme_path is set; set "
                     "zero_optimization.",
                     who, ".nvme_path to a directory on an NVMe drive"));
  }
  for (const std::string& d : dirs) {
    STRATA_RETURN_IF_ERROR(check_nvme_dir(d));
    // Killed runs' swap files go; ours is locked for the optimizer's lifetime.
    STRATA_RETURN_IF_ERROR(remove_dead_swap_files(d).status(), "nvme_path");
    std::string path;
    STRATA_ASSIGN_OR_RETURN(ScratchLock lock, create_swap_file(d, &path));
    swap_files.push_back(std::move(path));
    swap_locks.push_back(std::move(lock));
  }
  so.io = options.io;
  if (so.io == nullptr) {
    // One ring per directory, the swap file striped over them.
    STRATA_ASSIGN_OR_RETURN(swap::IoEngineOptions io, swap::io_engine_options(config.aio, dirs),
                            "ds_config aio / nvme_path");
    io.allow_buffered = options.allow_buffered_io;
    STRATA_ASSIGN_OR_RETURN(own_io, swap::make_io_engine(io), "starting NVMe I/O (ds_config aio)");
    so.io = own_io.get();
  }
  so.swap_paths = swap_files;
  const swap::NvmePipeline pipeline = swap::nvme_pipeline(config.zero.offload_optimizer);
  so.read_ahead = pipeline.read_ahead;
  so.write_behind = pipeline.write_behind;
  return absl::OkStatus();
}

absl::Status OffloadOptimizer::Impl::register_tensors() {
  const Tier state_home = plan.state_home;
  const Tier compute_home = plan.compute_home;
  const Tier grad_home = plan.grad_home;
  const Tier grad32_home = plan.offload ? Tier::kHost : Tier::kDevice;  // the optimizer's side
  // Bucket by bucket, as the engine's layers: the store's order is the
  // checkpoint's and the trace's.
  for (int b = 0; b < static_cast<int>(buckets.size()); ++b) {
    for (ParamHandle h : buckets[b]) {
      ParamRec& p = params[h];
      const bool in_store = p.desc.binding == ParamBinding::kStore;
      const std::string base = absl::StrCat("layer", b, ".", p.desc.name);
      auto reg = [&](const char* suffix, DType dt, TensorRole role, Tier home, uint64_t numel = 0,
                     bool on_use = false) -> absl::StatusOr<offload::TensorId> {
        return store->register_tensor({absl::StrCat(base, ".", suffix),
                                       numel != 0 ? numel : p.desc.numel, dt, role, home, on_use});
      };
      STRATA_ASSIGN_OR_RETURN(p.param, reg("param", dtype, TensorRole::kParam16,
                                           in_store ? compute_home : opt_tier, p.param_numel()));
      if (dpu) {
        // The delayed update's output, swapped into param between steps.
        STRATA_ASSIGN_OR_RETURN(p.param_next,
                                reg("param_next", dtype, TensorRole::kParam16, opt_tier));
      }
      if (in_store) {
        STRATA_ASSIGN_OR_RETURN(p.grad, reg("grad", dtype, TensorRole::kGrad, grad_home));
      }
      // The rank's slice only (the whole param with one rank). On the host
      // it is allocated by its first use: the fused pass at
      // gradient_accumulation_steps 1 never touches it, and its share of the
      // host budget then caches NVMe-homed states instead (fewer NVMe bytes).
      const uint64_t sn = p.state_numel();
      STRATA_ASSIGN_OR_RETURN(p.grad32, reg("grad32", DType::kFloat32, TensorRole::kGrad,
                                            grad32_home, sn, grad32_home == Tier::kHost));
      STRATA_ASSIGN_OR_RETURN(
          p.master, reg("master", DType::kFloat32, TensorRole::kMaster32, state_home, sn));
      STRATA_ASSIGN_OR_RETURN(p.exp_avg,
                              reg("exp_avg", DType::kFloat32, TensorRole::kExpAvg, state_home, sn));
      STRATA_ASSIGN_OR_RETURN(
          p.exp_avg_sq, reg("exp_avg_sq", DType::kFloat32, TensorRole::kExpAvgSq, state_home, sn));
    }
  }
  return store->finalize();
}

// Gradients reduced, and stage 1/2 params gathered, where they lie: the
// device packs them and the collective runs on its memory, so a rank moves
// only its slice over PCIe each way. SimDevice's memory is host memory
// (Gloo works on it, whether the device moves data or only times it); a
// CUDA device with Gloo keeps the host path (Gloo cannot read device
// memory). Without offload the gradients are device-homed: nothing crosses.
absl::Status OffloadOptimizer::Impl::prepare_device_reduction() {
  dp_device = partitioned() && plan.offload && dp_comm_on_device();
  const int num_buckets = static_cast<int>(buckets.size());
  dp_bucket_device.assign(num_buckets, 0);
  dp_gather_device.assign(num_buckets, 0);
  if (!dp_device) return absl::OkStatus();
  const uint64_t esize = dtype_size(dtype);
  uint64_t whole = 0, part = 0, gather_whole = 0, gather_part = 0;
  for (int b = 0; b < num_buckets; ++b) {
    bool all_store = !buckets[b].empty(), any_sliced = false;
    for (ParamHandle h : buckets[b]) {
      all_store = all_store && params[h].desc.binding == ParamBinding::kStore;
      any_sliced = any_sliced || params[h].param_sliced;
    }
    if (!all_store) continue;
    dp_bucket_device[b] = 1;
    const BucketLayout l = bucket_layout(b, kDpFlags);
    whole = std::max(whole, l.total);
    part = std::max(part, l.counts[rank]);
    // ZeRO-3's sliced params are gathered before use instead. Stage 1/2
    // params are homed on the host or, where the placement keeps them on
    // the device (PlacementOptions::reduce_on_device), there.
    if (any_sliced || plan.compute_home == Tier::kNvme) continue;
    dp_gather_device[b] = 1;
    const BucketLayout g = bucket_layout(b, 0);
    gather_whole = std::max(gather_whole, g.total * esize);
    gather_part = std::max(gather_part, g.counts[rank] * esize);
  }
  if (whole == 0) return absl::OkStatus();
  STRATA_ASSIGN_OR_RETURN(dp_stream, device->create_stream());
  have_dp_stream = true;
  STRATA_ASSIGN_OR_RETURN(dp_dev_whole, device->allocate(whole * sizeof(float)),
                          "device memory for the gradient reduction across ranks");
  STRATA_ASSIGN_OR_RETURN(dp_dev_part, device->allocate(part * sizeof(float)),
                          "device memory for the gradient reduction across ranks");
  dp_wire = config.communication_data_type == "fp16"   ? DType::kFloat16
            : config.communication_data_type == "bf16" ? DType::kBFloat16
                                                       : DType::kFloat32;
  if (dp_wire != DType::kFloat32) {
    STRATA_ASSIGN_OR_RETURN(dp_dev_part16, device->allocate(part * dtype_size(dp_wire)),
                            "device memory for the gradient reduction across ranks");
  }
  if (gather_whole == 0) return absl::OkStatus();
  STRATA_ASSIGN_OR_RETURN(dp_dev_gather, device->allocate(gather_whole),
                          "device memory for the param gather across ranks");
  dp_param_part.resize(std::max<uint64_t>(1, gather_part));
  STRATA_RETURN_IF_ERROR(device->register_host_memory(dp_param_part.data(), dp_param_part.size()),
                         "pinning the host buffer of the param gather across ranks");
  dp_param_part_registered = true;
  return absl::OkStatus();
}

absl::Status OffloadOptimizer::Impl::prepare_step_state() {
  STRATA_ASSIGN_OR_RETURN(stream, device->create_stream());
  have_stream = true;
  const int num_buckets = static_cast<int>(buckets.size());
  grad_stats.assign(num_buckets, {});
  next_done.assign(num_buckets, 0);
  calls.assign(num_buckets, 0);
  stats_calls.assign(num_buckets, 0);
  pending_call.assign(num_buckets, 0);
  bucket_has_device.assign(num_buckets, 0);
  bucket_events.assign(num_buckets, 0);
  for (int b = 0; b < num_buckets; ++b) {
    for (ParamHandle h : buckets[b]) {
      if (params[h].desc.binding == ParamBinding::kDevice) bucket_has_device[b] = 1;
    }
    if (bucket_has_device[b]) {
      STRATA_ASSIGN_OR_RETURN(bucket_events[b], device->create_event());
    }
  }
  uint64_t staging_bytes = 0;
  for (const ParamRec& p : params) {
    if (p.desc.binding == ParamBinding::kDevice) {
      staging_bytes = std::max<uint64_t>(staging_bytes, p.desc.numel * dtype_size(dtype));
    }
  }
  if (staging_bytes > 0) {
    staging.resize(staging_bytes);
    if (absl::Status s = device->register_host_memory(staging.data(), staging.size()); s.ok()) {
      staging_registered = true;
    } else {
      log::get("engine")->warn(
          "pinning the {} B gradient staging buffer failed ({}); device gradients are copied "
          "out through pageable memory, at a lower rate",
          staging.size(), std::string(s.message()));
    }
  }
  reported_round.assign(num_buckets, -1);
  reductions.assign(num_buckets, 0);
  if (dp()) STRATA_RETURN_IF_ERROR(prepare_device_reduction());
  if (params_sliced) {
    // ZeRO-3's gathers: their host waits must not wait for the framework's work.
    STRATA_ASSIGN_OR_RETURN(gather_stream, device->create_stream());
    have_gather_stream = true;
    const uint64_t esize = dtype_size(dtype);
    for (int b = 0; b < num_buckets; ++b) {
      gather_packed_bytes =
          std::max(gather_packed_bytes, std::max<uint64_t>(1, bucket_layout(b, 0).total) * esize);
      uint64_t slot = 0;
      for (ParamHandle h : buckets[b])
        slot += offload::DevicePool::block_bytes(params[h].desc.numel * esize);
      gather_slot_bytes = std::max(gather_slot_bytes, slot);
    }
  }
  if (dp()) dp_thread = std::thread([this] { dp_loop(); });
  grad_events.assign(num_buckets, std::nullopt);
  // Across ranks the gradient is whole only after the reduction, on the
  // step's thread: nothing for a worker or a speculative step to do.
  if ((overlap || dpu) && !dp()) worker = std::make_unique<OrderedWorker>();
  if (overlap && !dpu && !dp()) {
    // Any step can fail after buckets were stepped speculatively (an error
    // in backward, an overflow, a non-finite gradient), so every
    // speculative step keeps copies; they are host memory of their own,
    // sized to what a step can use and never more than the configured buffer.
    std::vector<std::vector<uint64_t>> numels(num_buckets);
    uint64_t state_floats = 0;
    for (int b = 0; b < num_buckets; ++b) {
      for (ParamHandle h : buckets[b]) {
        numels[b].push_back(params[h].desc.numel);
        state_floats += 3 * params[h].desc.numel;
      }
    }
    spec = std::make_unique<Speculation>(
        options.speculation, std::move(numels),
        std::min<uint64_t>(
            state_floats,
            static_cast<uint64_t>(config.strata.rollback_buffer_bytes) / sizeof(float)));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Store access between steps.

offload::TensorId OffloadOptimizer::Impl::state_id(const ParamRec& p, StateKind kind) {
  return kind == StateKind::kMaster     ? p.master
         : kind == StateKind::kExpAvg   ? p.exp_avg
         : kind == StateKind::kExpAvgSq ? p.exp_avg_sq
                                        : p.grad32;
}

Tier OffloadOptimizer::Impl::param_tier(const ParamRec& p) const {
  const Tier home = store->spec(p.param).home;
  return home == Tier::kNvme ? Tier::kHost : home;
}

absl::Status OffloadOptimizer::Impl::copy_in(TensorView view, Tier tier, const void* src,
                                             uint64_t bytes) {
  if (tier != Tier::kDevice) {
    std::memcpy(view.data, src, bytes);
    return absl::OkStatus();
  }
  STRATA_RETURN_IF_ERROR(device->copy_to_device(view.data, src, bytes, stream));
  return device->synchronize_stream(stream);
}

absl::Status OffloadOptimizer::Impl::copy_out(TensorView view, Tier tier, void* dst,
                                              uint64_t bytes) {
  if (tier != Tier::kDevice) {
    std::memcpy(dst, view.data, bytes);
    return absl::OkStatus();
  }
  STRATA_RETURN_IF_ERROR(device->copy_to_host(dst, view.data, bytes, stream));
  return device->synchronize_stream(stream);
}

absl::Status OffloadOptimizer::Impl::read_raw(offload::TensorId id, Tier tier, void* dst,
                                              uint64_t bytes) {
  STRATA_ASSIGN_OR_RETURN(TensorView v, store->acquire(id, tier, Access::kRead));
  const absl::Status s = copy_out(v, tier, dst, bytes);
  const absl::Status r = store->release(id, tier, /*dirty=*/false);
  STRATA_RETURN_IF_ERROR(s);
  return r;
}

absl::Status OffloadOptimizer::Impl::write_raw(offload::TensorId id, Tier tier, const void* src,
                                               uint64_t bytes) {
  STRATA_ASSIGN_OR_RETURN(TensorView v, store->acquire(id, tier, Access::kWrite));
  const absl::Status s = copy_in(v, tier, src, bytes);
  // Dirty even on a failed copy: the copy's contents are unknown now.
  const absl::Status r = store->release(id, tier, /*dirty=*/true);
  STRATA_RETURN_IF_ERROR(s);
  return r;
}

absl::Status OffloadOptimizer::Impl::write_binding(const ParamRec& p, const void* src) {
  const uint64_t bytes = p.desc.numel * dtype_size(dtype);
  if (p.desc.binding == ParamBinding::kHost) {
    std::memcpy(p.desc.param, src, bytes);
    return absl::OkStatus();
  }
  if (p.desc.binding == ParamBinding::kDevice) {
    STRATA_RETURN_IF_ERROR(device->copy_to_device(p.desc.param, src, bytes, stream),
                           absl::StrCat("copying param ", p.desc.name, " to the device"));
    return device->synchronize_stream(stream);
  }
  return absl::OkStatus();
}

absl::Status OffloadOptimizer::Impl::check_handle(ParamHandle p) const {
  if (p < 0 || p >= static_cast<int>(params.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat("no param ", p, " (", params.size(), " registered)"));
  }
  if (!finalized) {
    return absl::FailedPreconditionError("the optimizer is not finalized; call finalize() first");
  }
  return absl::OkStatus();
}

absl::Status OffloadOptimizer::set_value(ParamHandle h, const float* value) {
  Impl& m = *impl_;
  STRATA_RETURN_IF_ERROR(m.check_handle(h));
  if (m.in_step) return absl::FailedPreconditionError("set_value: a step is in flight");
  STRATA_RETURN_IF_ERROR(m.finish_pending_update());
  const Impl::ParamRec& p = m.params[h];
  const uint64_t n = p.desc.numel;
  std::vector<uint8_t> low(n * dtype_size(m.dtype));
  round_master(value, low.data(), m.dtype, n);
  // The fp32 tensors hold the rank's slice (the whole param with one rank).
  const uint64_t sn = p.state_numel();
  const std::vector<float> zeros(sn, 0.0f);
  const float* master = p.slice.numel != 0 ? value + p.slice.offset : zeros.data();
  struct Init {
    offload::TensorId id;
    const void* src;
    uint64_t bytes;
  };
  // The compute param goes to its home; the fp32 tensors are written on
  // the optimizer's tier and reach NVMe by write-back.
  const Tier ptier = m.param_tier(p);
  for (const Init& x :
       {Init{p.param,
             p.slice.numel != 0 || !p.param_sliced
                 ? static_cast<const void*>(low.data() + p.param_lo() * dtype_size(m.dtype))
                 : static_cast<const void*>(zeros.data()),
             p.param_numel() * dtype_size(m.dtype)},
        Init{p.master, master, sn * 4}, Init{p.exp_avg, zeros.data(), sn * 4},
        Init{p.exp_avg_sq, zeros.data(), sn * 4}}) {
    const Tier tier = x.id == p.param ? ptier : m.opt_tier;
    STRATA_RETURN_IF_ERROR(m.write_raw(x.id, tier, x.src, x.bytes), m.store->spec(x.id).name);
  }
  return m.write_binding(p, low.data());
}

// ---------------------------------------------------------------------------
// Groups, state, accessors.

absl::Status OffloadOptimizer::set_group(int group, const GroupHyperparams& hp) {
  if (group < 0 || group >= static_cast<int>(impl_->groups.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat("set_group: no group ", group, " (", impl_->groups.size(), " groups)"));
  }
  if (impl_->in_step) {
    return absl::FailedPreconditionError("set_group: a step is in flight; call it between steps");
  }
  impl_->groups[group] = hp;
  return absl::OkStatus();
}

const GroupHyperparams& OffloadOptimizer::group(int g) const {
  STRATA_CHECK(g >= 0 && g < static_cast<int>(impl_->groups.size()));
  return impl_->groups[g];
}
int OffloadOptimizer::num_groups() const { return static_cast<int>(impl_->groups.size()); }

absl::Status OffloadOptimizer::set_optimizer_steps(int64_t steps) {
  if (steps < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("set_optimizer_steps: the step count must be >= 0 (got ", steps, ")"));
  }
  if (impl_->in_step) {
    return absl::FailedPreconditionError(
        "set_optimizer_steps: a step is in flight; call it between steps");
  }
  impl_->adam_step = steps;
  return absl::OkStatus();
}

absl::StatusOr<std::vector<float>> OffloadOptimizer::read_state(ParamHandle h, StateKind kind) {
  Impl& m = *impl_;
  STRATA_RETURN_IF_ERROR(m.check_handle(h));
  STRATA_RETURN_IF_ERROR(m.finish_pending_update());
  const Impl::ParamRec& p = m.params[h];
  // The last step's gradient may still be partly in its source (the fused pass).
  if (kind == StateKind::kGradAccum && !m.in_step) {
    STRATA_RETURN_IF_ERROR(m.materialize_bucket(p.desc.bucket));
  }
  // The rank's slice (the whole param with one rank).
  std::vector<float> out(p.state_numel());
  STRATA_RETURN_IF_ERROR(m.read_raw(m.state_id(p, kind), m.opt_tier, out.data(), out.size() * 4));
  out.resize(p.slice.numel);
  return out;
}

absl::Status OffloadOptimizer::write_state(ParamHandle h, StateKind kind, const float* values) {
  Impl& m = *impl_;
  STRATA_RETURN_IF_ERROR(m.check_handle(h));
  if (m.in_step) return absl::FailedPreconditionError("write_state: a step is in flight");
  STRATA_RETURN_IF_ERROR(m.finish_pending_update());
  const Impl::ParamRec& p = m.params[h];
  if (kind == StateKind::kGradAccum) STRATA_RETURN_IF_ERROR(m.materialize_bucket(p.desc.bucket));
  if (p.slice.numel == 0) return absl::OkStatus();  // an empty slice holds nothing
  return m.write_raw(m.state_id(p, kind), m.opt_tier, values, p.slice.numel * 4);
}

absl::StatusOr<std::vector<float>> OffloadOptimizer::read_param(ParamHandle h) {
  Impl& m = *impl_;
  STRATA_RETURN_IF_ERROR(m.check_handle(h));
  STRATA_RETURN_IF_ERROR(m.finish_pending_update());
  const Impl::ParamRec& p = m.params[h];
  const uint64_t n = p.desc.numel;
  const uint64_t esize = dtype_size(m.dtype);
  std::vector<uint8_t> raw(n * esize);
  if (p.param_sliced) {
    // This rank's slice, gathered from every rank (collective).
    std::vector<uint8_t> mine(p.param_numel() * esize);
    STRATA_RETURN_IF_ERROR(m.read_raw(p.param, m.param_tier(p), mine.data(), mine.size()));
    std::memcpy(raw.data() + p.slice.offset * esize, mine.data(), p.slice.numel * esize);
    const std::vector<uint64_t> counts = partition_counts(n, m.world);
    const DType wire = m.dtype == DType::kFloat32 ? DType::kFloat32 : DType::kFloat16;
    STRATA_RETURN_IF_ERROR(
        m.comm->all_gather(raw.data() + p.slice.offset * esize, raw.data(), counts, wire),
        absl::StrCat("gathering ", p.desc.name, " across ", m.world, " ranks"));
  } else {
    STRATA_RETURN_IF_ERROR(m.read_raw(p.param, m.param_tier(p), raw.data(), raw.size()));
  }
  std::vector<float> out(n);
  if (m.dtype == DType::kFloat32) std::memcpy(out.data(), raw.data(), raw.size());
  if (m.dtype == DType::kFloat16)
    convert_fp16_to_fp32(reinterpret_cast<const uint16_t*>(raw.data()), out.data(), n);
  if (m.dtype == DType::kBFloat16)
    convert_bf16_to_fp32(reinterpret_cast<const uint16_t*>(raw.data()), out.data(), n);
  return out;
}

namespace {
// A checkpoint holds a decided state: mid-step the counters already count
// the step while its tensors do not, and the file would not load.
absl::Status refuse_in_step(bool in_step, const char* what) {
  if (!in_step) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      what,
      ": a step is in flight; call finish_step or abort_step first (checkpoints are taken "
      "between steps)"));
}
}  // namespace

absl::Status OffloadOptimizer::save_state(const std::string& dir, const nlohmann::json& user) {
  STRATA_RETURN_IF_ERROR(refuse_in_step(impl_->in_step, "save_state"));
  return impl_->save(dir, user);
}
absl::Status OffloadOptimizer::save_state_async(const std::string& dir,
                                                const nlohmann::json& user) {
  STRATA_RETURN_IF_ERROR(refuse_in_step(impl_->in_step, "save_state_async"));
  return impl_->save_async(dir, user);
}
absl::Status OffloadOptimizer::wait_for_save() { return impl_->wait_for_save(); }
absl::Status OffloadOptimizer::load_state(const std::string& dir, bool weights_only) {
  STRATA_RETURN_IF_ERROR(refuse_in_step(impl_->in_step, "load_state"));
  return impl_->load(dir, weights_only);
}
const CheckpointLoadStats& OffloadOptimizer::last_load_stats() const { return impl_->last_load; }

offload::TieredStore* OffloadOptimizer::store() { return impl_->store.get(); }
offload::TensorId OffloadOptimizer::param_id(ParamHandle p) const { return impl_->rec(p).param; }
bool OffloadOptimizer::params_sliced() const { return impl_->params_sliced; }
bool OffloadOptimizer::grads_reduced_on_device(int bucket) const {
  const Impl& m = *impl_;
  return bucket >= 0 && bucket < static_cast<int>(m.dp_bucket_device.size()) &&
         m.dp_bucket_device[bucket] != 0;
}

absl::StatusOr<std::vector<void*>> OffloadOptimizer::acquire_full_params(int bucket) {
  Impl& m = *impl_;
  if (!m.finalized || !m.params_sliced) {
    return absl::FailedPreconditionError(
        "acquire_full_params: the params are not partitioned across ranks (ZeRO-3 with more than "
        "one rank); acquire param_id from the store instead");
  }
  if (bucket < 0 || bucket >= static_cast<int>(m.buckets.size())) {
    return absl::InvalidArgumentError(absl::StrCat("acquire_full_params: no bucket ", bucket));
  }
  if (!m.full_params[bucket].empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("acquire_full_params: bucket ", bucket, " is held already"));
  }
  if (m.in_step) {
    m.gather_recording.push_back(bucket);
    if (m.next_on_trace() == bucket) {
      ++m.gather_pos;
    } else {
      m.gather_on_trace = false;  // recorded again from this step
    }
  }
  if (m.prefetched_bucket == bucket) {
    m.full_params[bucket] = std::move(m.prefetched);
    m.prefetched.clear();
    m.prefetched_bucket = -1;
    ++m.prefetched_gathers;
    return m.full_params[bucket];
  }
  m.drop_prefetched();  // every rank gathered it alike, and drops it alike
  if (!m.prefetch_error.ok()) {
    // The prefetch was this bucket's gather; the ranks' collectives stay in order.
    absl::Status failed = std::exchange(m.prefetch_error, absl::OkStatus());
    return annotate(failed, absl::StrCat("gathering the params of bucket ", bucket, " ahead"));
  }
  STRATA_RETURN_IF_ERROR(m.gather_full_params(bucket, &m.full_params[bucket]),
                         absl::StrCat("gathering the params of bucket ", bucket));
  return m.full_params[bucket];
}

absl::Status OffloadOptimizer::release_full_params(int bucket) {
  Impl& m = *impl_;
  if (bucket < 0 || bucket >= static_cast<int>(m.full_params.size())) {
    return absl::InvalidArgumentError(absl::StrCat("release_full_params: no bucket ", bucket));
  }
  if (m.full_params[bucket].empty()) return absl::OkStatus();
  // The next bucket of the recorded order is gathered now, while the device
  // still runs the framework's work on this one (enqueued, not waited for).
  const int next = m.next_on_trace();
  if (next >= 0 && m.prefetched_bucket < 0 && m.prefetch_error.ok()) {
    if (next == bucket) {
      // Used again next (the last layer, forward then backward): kept whole.
      m.prefetched = std::move(m.full_params[bucket]);
      m.full_params[bucket].clear();
      m.prefetched_bucket = bucket;
      return absl::OkStatus();
    }
    if (m.full_params[next].empty()) {
      m.prefetch_error = m.gather_full_params(next, &m.prefetched);
      if (m.prefetch_error.ok()) m.prefetched_bucket = next;
    }
  }
  // The framework's work reading them is enqueued on the stream, not done
  // (the engine does not wait per layer): freed only after it has run.
  const absl::Status st = m.device->synchronize_stream(m.stream);
  m.give_back_slot(&m.full_params[bucket]);
  return annotate(st, absl::StrCat("release_full_params: waiting for bucket ", bucket, "'s work"));
}
int64_t OffloadOptimizer::prefetched_gathers() const { return impl_->prefetched_gathers; }
offload::TensorId OffloadOptimizer::grad_id(ParamHandle p) const { return impl_->rec(p).grad; }
gpu::StreamId OffloadOptimizer::stream() const { return impl_->stream; }
const Placement& OffloadOptimizer::placement() const { return impl_->plan; }
int OffloadOptimizer::num_params() const { return static_cast<int>(impl_->params.size()); }
int OffloadOptimizer::rank() const { return impl_->rank; }
int OffloadOptimizer::world_size() const { return impl_->world; }
ParamSlice OffloadOptimizer::param_slice(ParamHandle p) const {
  const Impl::ParamRec& r = impl_->rec(p);
  // Before finalize the slice is not set yet: the same rule.
  return impl_->finalized
             ? r.slice
             : state_slice(r.desc.numel, impl_->rank, impl_->world, impl_->config.zero.stage);
}
int OffloadOptimizer::num_buckets() const { return static_cast<int>(impl_->buckets.size()); }
const ParamDesc& OffloadOptimizer::param(ParamHandle p) const { return impl_->rec(p).desc; }
const std::vector<ParamHandle>& OffloadOptimizer::bucket_params(int bucket) const {
  STRATA_CHECK(bucket >= 0 && bucket < static_cast<int>(impl_->buckets.size()));
  return impl_->buckets[bucket];
}
DType OffloadOptimizer::compute_dtype() const { return impl_->dtype; }
int64_t OffloadOptimizer::optimizer_steps() const { return impl_->adam_step; }
int64_t OffloadOptimizer::steps() const { return impl_->steps; }
int64_t OffloadOptimizer::micro_batches() const { return impl_->micro_batches; }
const LossScaler* OffloadOptimizer::loss_scaler() const { return impl_->scaler.get(); }
const LrSchedule& OffloadOptimizer::lr_schedule() const { return *impl_->schedule; }
offload::Tier OffloadOptimizer::optimizer_tier() const { return impl_->opt_tier; }
absl::Status OffloadOptimizer::partly_stepped() const { return impl_->partly_stepped_status; }

}  // namespace strata::engine
