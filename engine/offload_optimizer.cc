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

#include "absl/strings/str_cat.h"
#include "core/log.h"
#include "core/status.h"
#include "engine/config_validate.h"
#include "engine/offload_optimizer_impl.h"
#include "engine/swap_scratch.h"
#include "oneapi/tbb/parallel_for.h"

namespace strata::engine {
namespace {

using offload::Access;
using offload::TensorRole;
using offload::TensorView;
using offload::Tier;

// Adds the scope's wall time to *total on exit.
class AddElapsed {
 public:
  explicit AddElapsed(std::atomic<int64_t>* total_ns)
      : total_(total_ns), t0_(std::chrono::steady_clock::now()) {}
  ~AddElapsed() {
    total_->fetch_add(
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0_)
            .count());
  }
  AddElapsed(const AddElapsed&) = delete;
  AddElapsed& operator=(const AddElapsed&) = delete;

 private:
  std::atomic<int64_t>* total_;
  std::chrono::steady_clock::time_point t0_;
};

// Releases a pinned store copy on scope exit unless released explicitly.
class Pin {
 public:
  Pin(offload::TieredStore* store, offload::TensorId id, Tier tier)
      : store_(store), id_(id), tier_(tier) {}
  absl::StatusOr<TensorView> acquire(Access access) {
    STRATA_ASSIGN_OR_RETURN(TensorView v, store_->acquire(id_, tier_, access));
    held_ = true;
    return v;
  }
  absl::Status release(bool dirty) {
    held_ = false;
    return store_->release(id_, tier_, dirty);
  }
  ~Pin() {
    if (held_) store_->release(id_, tier_, false).IgnoreError();
  }
  Pin(const Pin&) = delete;
  Pin& operator=(const Pin&) = delete;

 private:
  offload::TieredStore* store_;
  offload::TensorId id_;
  Tier tier_;
  bool held_ = false;
};

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

// dst[i] (+)= float(src[i]) for a compute-dtype gradient, in chunks spread
// over the optimizer's threads (the sum of each element does not depend on
// the split). The first micro-batch converts straight into dst.
void accumulate_into(float* dst, const void* src, DType dtype, uint64_t n, bool first,
                     const cpu_adam::ExecOptions& exec) {
  constexpr uint64_t kChunk = 16384;
  auto convert = [&](uint64_t off, uint64_t len, float* out) {
    switch (dtype) {
      case DType::kFloat32:
        std::memcpy(out, static_cast<const float*>(src) + off, len * sizeof(float));
        break;
      case DType::kFloat16:
        convert_fp16_to_fp32(static_cast<const uint16_t*>(src) + off, out, len);
        break;
      case DType::kBFloat16:
        convert_bf16_to_fp32(static_cast<const uint16_t*>(src) + off, out, len);
        break;
    }
  };
  auto chunk = [&](uint64_t c) {
    const uint64_t off = c * kChunk, len = std::min(kChunk, n - off);
    float* d = dst + off;
    if (first) return convert(off, len, d);
    float tmp[kChunk];
    const float* f = tmp;
    if (dtype == DType::kFloat32) {
      f = static_cast<const float*>(src) + off;
    } else {
      convert(off, len, tmp);
    }
    for (uint64_t i = 0; i < len; ++i) d[i] += f[i];
  };
  const uint64_t chunks = (n + kChunk - 1) / kChunk;
  auto run = [&] { tbb::parallel_for(uint64_t{0}, chunks, [&](uint64_t c) { chunk(c); }); };
  if (chunks <= 1) {
    if (chunks == 1) chunk(0);
  } else if (exec.arena != nullptr) {
    exec.arena->execute(run);
  } else {
    run();
  }
}

// The compute param is always the master rounded to nearest even.
void round_master(const float* master, void* out, DType dtype, uint64_t n) {
  if (dtype == DType::kFloat32) std::memcpy(out, master, n * sizeof(float));
  if (dtype == DType::kFloat16) convert_fp32_to_fp16(master, static_cast<uint16_t*>(out), n);
  if (dtype == DType::kBFloat16) convert_fp32_to_bf16(master, static_cast<uint16_t*>(out), n);
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
  // What the config alone decides: the same checks as `strata config check`.
  STRATA_RETURN_IF_ERROR(validate_for_training(config, "ds_config"));
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

GroupHyperparams OffloadOptimizer::default_group() const {
  const config::DsConfig& c = impl_->config;
  return GroupHyperparams{.lr = c.optimizer.lr,
                          .beta1 = c.optimizer.betas[0],
                          .beta2 = c.optimizer.betas[1],
                          .eps = c.optimizer.eps,
                          .weight_decay = c.optimizer.weight_decay,
                          .bias_correction = c.optimizer.bias_correction};
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
  std::vector<std::vector<ParamSpec>> specs(m.buckets.size());
  for (size_t b = 0; b < m.buckets.size(); ++b) {
    for (ParamHandle h : m.buckets[b]) {
      specs[b].push_back(ParamSpec{m.params[h].desc.name, m.params[h].desc.numel});
    }
  }
  STRATA_ASSIGN_OR_RETURN(m.plan, plan_placement(m.config, specs));
  STRATA_ASSIGN_OR_RETURN(const Impl::StoreBudgets budgets, m.store_budgets());
  STRATA_RETURN_IF_ERROR(m.create_store(budgets));
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
    swap::IoEngineOptions io;
    io.block_size = static_cast<size_t>(config.aio.block_size);
    io.queue_depth = static_cast<int>(config.aio.queue_depth);
    io.threads = static_cast<int>(config.aio.intra_op_parallelism);
    io.single_submit = config.aio.single_submit;
    io.overlap_events = config.aio.overlap_events;
    io.allow_buffered = options.allow_buffered_io;
    STRATA_ASSIGN_OR_RETURN(own_io, swap::make_io_engine(io), "starting NVMe I/O (ds_config aio)");
    so.io = own_io.get();
  }
  so.swap_paths = swap_files;
  return absl::OkStatus();
}

absl::Status OffloadOptimizer::Impl::register_tensors() {
  const Tier state_home = plan.state_home;
  const Tier compute_home = plan.compute_home;
  const Tier grad_home = plan.offload ? Tier::kHost : Tier::kDevice;
  // Bucket by bucket, as the engine's layers: the store's order is the
  // checkpoint's and the trace's.
  for (int b = 0; b < static_cast<int>(buckets.size()); ++b) {
    for (ParamHandle h : buckets[b]) {
      ParamRec& p = params[h];
      const bool in_store = p.desc.binding == ParamBinding::kStore;
      const std::string base = absl::StrCat("layer", b, ".", p.desc.name);
      auto reg = [&](const char* suffix, DType dt, TensorRole role,
                     Tier home) -> absl::StatusOr<offload::TensorId> {
        return store->register_tensor(
            {absl::StrCat(base, ".", suffix), p.desc.numel, dt, role, home});
      };
      STRATA_ASSIGN_OR_RETURN(
          p.param, reg("param", dtype, TensorRole::kParam16, in_store ? compute_home : opt_tier));
      if (dpu) {
        // The delayed update's output, swapped into param between steps.
        STRATA_ASSIGN_OR_RETURN(p.param_next,
                                reg("param_next", dtype, TensorRole::kParam16, opt_tier));
      }
      if (in_store) {
        STRATA_ASSIGN_OR_RETURN(p.grad, reg("grad", dtype, TensorRole::kGrad, grad_home));
      }
      STRATA_ASSIGN_OR_RETURN(p.grad32,
                              reg("grad32", DType::kFloat32, TensorRole::kGrad, grad_home));
      STRATA_ASSIGN_OR_RETURN(p.master,
                              reg("master", DType::kFloat32, TensorRole::kMaster32, state_home));
      STRATA_ASSIGN_OR_RETURN(p.exp_avg,
                              reg("exp_avg", DType::kFloat32, TensorRole::kExpAvg, state_home));
      STRATA_ASSIGN_OR_RETURN(
          p.exp_avg_sq, reg("exp_avg_sq", DType::kFloat32, TensorRole::kExpAvgSq, state_home));
    }
  }
  return store->finalize();
}

absl::Status OffloadOptimizer::Impl::prepare_step_state() {
  STRATA_ASSIGN_OR_RETURN(stream, device->create_stream());
  have_stream = true;
  const int num_buckets = static_cast<int>(buckets.size());
  grad_stats.assign(num_buckets, {});
  next_done.assign(num_buckets, 0);
  calls.assign(num_buckets, 0);
  stats_calls.assign(num_buckets, 0);
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
  if (overlap || dpu) worker = std::make_unique<OrderedWorker>();
  if (overlap && !dpu) {
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
  const Impl::ParamRec& p = m.params[h];
  const uint64_t n = p.desc.numel;
  std::vector<uint8_t> low(n * dtype_size(m.dtype));
  round_master(value, low.data(), m.dtype, n);
  const std::vector<float> zeros(n, 0.0f);
  struct Init {
    offload::TensorId id;
    const void* src;
    uint64_t bytes;
  };
  // The compute param goes to its home; the fp32 tensors are written on
  // the optimizer's tier and reach NVMe by write-back.
  const Tier ptier = m.param_tier(p);
  for (const Init& x :
       {Init{p.param, low.data(), low.size()}, Init{p.master, value, n * 4},
        Init{p.exp_avg, zeros.data(), n * 4}, Init{p.exp_avg_sq, zeros.data(), n * 4}}) {
    const Tier tier = x.id == p.param ? ptier : m.opt_tier;
    STRATA_RETURN_IF_ERROR(m.write_raw(x.id, tier, x.src, x.bytes), m.store->spec(x.id).name);
  }
  return m.write_binding(p, low.data());
}

// ---------------------------------------------------------------------------
// The step.

OffloadOptimizer::Impl::StepArgs OffloadOptimizer::Impl::step_args(double grad_scale,
                                                                   int64_t step) const {
  StepArgs a;
  a.grad_scale = grad_scale;
  a.step = step;
  const auto betas = options.use_schedule ? schedule->betas() : std::nullopt;
  for (const GroupHyperparams& g : groups) {
    cpu_adam::Hyperparams hp;
    hp.kind = kind;
    hp.beta1 = g.beta1;
    hp.beta2 = g.beta2;
    hp.eps = g.eps;
    hp.weight_decay = g.weight_decay;
    hp.bias_correction = g.bias_correction;
    if (betas) {
      // OneCycle's cycled momentum, as DeepSpeed sets the optimizer's betas.
      hp.beta1 = (*betas)[0];
      hp.beta2 = (*betas)[1];
    }
    a.hp.push_back(hp);
    a.lr.push_back(options.use_schedule ? schedule->lr() : g.lr);
  }
  return a;
}

OffloadOptimizer::Impl::Counters OffloadOptimizer::Impl::counters() const {
  Counters c{.steps = steps,
             .micro_batches = micro_batches,
             .adam_step = adam_step,
             .schedule_iteration = schedule->iteration()};
  if (scaler != nullptr) c.scaler = scaler->state();
  return c;
}

absl::StatusOr<double> OffloadOptimizer::begin_step(std::optional<double> loss_scale) {
  Impl& m = *impl_;
  if (!m.finalized) {
    return absl::FailedPreconditionError("begin_step: the optimizer is not finalized");
  }
  if (m.in_step) {
    return absl::FailedPreconditionError(
        "begin_step: a step is in flight; call finish_step or abort_step first");
  }
  STRATA_RETURN_IF_ERROR(m.partly_stepped_status);
  if (loss_scale.has_value()) {
    if (m.scaler != nullptr) {
      return absl::InvalidArgumentError(
          "begin_step: the config's fp16 section has a loss scaler; an external loss scale "
          "needs fp16 without it (or bf16 / fp32)");
    }
    if (!(*loss_scale > 0) || !std::isfinite(*loss_scale)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "begin_step: the loss scale must be finite and above 0 (got ", *loss_scale, ")"));
    }
  }
  // The previous step's kDevice param copies read the store's copies, which
  // this step's optimizer may write again.
  if (m.has_device_bindings) STRATA_RETURN_IF_ERROR(m.device->synchronize_stream(m.stream));
  m.before = m.counters();
  m.unsaved_writes = 0;
  m.early_rollbacks = 0;
  m.stats_before = m.store->stats();
  ++m.steps;
  m.external_scale = loss_scale;
  m.loss_scale = loss_scale ? *loss_scale : m.scaler != nullptr ? m.scaler->scale() : 1.0;
  m.spec_args = m.step_args(1.0 / m.loss_scale, m.adam_step + 1);
  m.store->begin_step();
  m.overflow.store(false);
  std::fill(m.calls.begin(), m.calls.end(), 0);
  std::fill(m.stats_calls.begin(), m.stats_calls.end(), 0);
  std::fill(m.grad_stats.begin(), m.grad_stats.end(), cpu_adam::GradStats{});
  if (m.spec != nullptr) m.spec->begin_step(m.last_host_seconds, m.last_backward_seconds);
  m.step_start = m.last_grad = std::chrono::steady_clock::now();
  m.backward_reported = false;
  m.in_step = true;
  return m.loss_scale;
}

absl::Status OffloadOptimizer::grad_ready(int bucket, std::optional<gpu::EventId> grad_written) {
  Impl& m = *impl_;
  if (!m.in_step) {
    return absl::FailedPreconditionError(
        absl::StrCat("grad_ready(", bucket, ") outside a step; call begin_step first"));
  }
  if (bucket < 0 || bucket >= static_cast<int>(m.buckets.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat("grad_ready: no bucket ", bucket, " (", m.buckets.size(), " buckets)"));
  }
  std::lock_guard lock(m.grad_mu);
  m.last_grad = std::chrono::steady_clock::now();
  if (m.overflow.load()) return absl::OkStatus();  // nothing more leaves the device
  const int call = ++m.calls[bucket];
  if (m.worker != nullptr) {
    m.worker->submit(
        [&m, bucket, call, grad_written] { return m.bucket_done(bucket, call, grad_written); });
    return absl::OkStatus();
  }
  return m.bucket_done(bucket, call, grad_written);
}

absl::Status OffloadOptimizer::wait_grads() { return impl_->drain_worker(); }

void OffloadOptimizer::report_overflow() { impl_->overflow.store(true); }
bool OffloadOptimizer::overflowed() const { return impl_->overflow.load(); }

void OffloadOptimizer::set_backward_seconds(double seconds) {
  impl_->last_backward_seconds = seconds;
  impl_->backward_reported = true;
}

absl::Status OffloadOptimizer::Impl::accumulate_bucket(int bucket, bool first,
                                                       std::optional<gpu::EventId> event) {
  bool waited = false;
  for (ParamHandle h : buckets[bucket]) {
    const ParamRec& p = params[h];
    const uint64_t n = p.desc.numel;
    Pin acc(store.get(), p.grad32, opt_tier);
    if (p.desc.binding == ParamBinding::kStore) {
      // Reading the grad on the host makes the store copy the device's back (D2H).
      Pin g(store.get(), p.grad, opt_tier);
      STRATA_ASSIGN_OR_RETURN(TensorView gv, g.acquire(Access::kRead));
      STRATA_ASSIGN_OR_RETURN(TensorView av,
                              acc.acquire(first ? Access::kWrite : Access::kReadWrite));
      accumulate_into(static_cast<float*>(av.data), gv.data, dtype, n, first, options.exec);
      STRATA_RETURN_IF_ERROR(g.release(false));
      STRATA_RETURN_IF_ERROR(acc.release(true));
      continue;
    }
    const void* src = p.desc.grad;
    if (p.desc.binding == ParamBinding::kDevice) {
      if (event.has_value() && !waited) {
        STRATA_RETURN_IF_ERROR(device->wait_event(stream, *event),
                               absl::StrCat("bucket ", bucket, ": waiting for its gradient"));
        waited = true;
      }
      staging.resize(n * dtype_size(dtype));
      STRATA_RETURN_IF_ERROR(
          device->copy_to_host(staging.data(), p.desc.grad, staging.size(), stream),
          absl::StrCat("copying the gradient of ", p.desc.name));
      STRATA_RETURN_IF_ERROR(device->synchronize_stream(stream),
                             absl::StrCat("copying the gradient of ", p.desc.name));
      src = staging.data();
    }
    STRATA_ASSIGN_OR_RETURN(TensorView av,
                            acc.acquire(first ? Access::kWrite : Access::kReadWrite));
    accumulate_into(static_cast<float*>(av.data), src, dtype, n, first, options.exec);
    STRATA_RETURN_IF_ERROR(acc.release(true));
  }
  return absl::OkStatus();
}

absl::Status OffloadOptimizer::Impl::stats_bucket(int bucket, int call) {
  cpu_adam::GradStats total;
  for (ParamHandle h : buckets[bucket]) {
    const ParamRec& p = params[h];
    Pin acc(store.get(), p.grad32, opt_tier);
    STRATA_ASSIGN_OR_RETURN(TensorView av, acc.acquire(Access::kRead));
    STRATA_ASSIGN_OR_RETURN(
        cpu_adam::GradStats gs,
        cpu_adam::grad_stats(av.data, DType::kFloat32, p.desc.numel, options.exec));
    STRATA_RETURN_IF_ERROR(acc.release(false));
    total.sum_squares += gs.sum_squares;
    total.nonfinite = total.nonfinite || gs.nonfinite;
  }
  grad_stats[bucket] = total;
  stats_calls[bucket] = call;
  return absl::OkStatus();
}

absl::Status OffloadOptimizer::Impl::bucket_done(int bucket, int call,
                                                 std::optional<gpu::EventId> event) {
  if (overflow.load()) return absl::OkStatus();  // nothing more leaves the device
  const bool last = call == gas;
  {
    const AddElapsed timed(&grad_ns);
    STRATA_RETURN_IF_ERROR(accumulate_bucket(bucket, call == 1, event));
    if (call >= gas) STRATA_RETURN_IF_ERROR(stats_bucket(bucket, call));
  }
  if (call < gas) return absl::OkStatus();
  if (grad_stats[bucket].nonfinite) overflow.store(true);
  if (!last) {
    // More gradient after the bucket's speculative step: it is undone here
    // and the bucket stepped once the step is decided.
    if (spec != nullptr && spec->stepped(bucket)) {
      STRATA_RETURN_IF_ERROR(restore_bucket(bucket), "undoing a speculative step");
      spec->mark_restored(bucket);
      ++early_rollbacks;
    }
    return absl::OkStatus();
  }
  if (spec == nullptr || overflow.load()) return absl::OkStatus();
  // Speculative step, when its rollback copies fit (the others wait for the
  // end of backward).
  if (!spec->reserve(bucket)) return absl::OkStatus();
  STRATA_RETURN_IF_ERROR(step_bucket(bucket, spec_args, StepTarget::kSpeculative),
                         "speculative step");
  spec->mark_stepped(bucket);
  return absl::OkStatus();
}

absl::Status OffloadOptimizer::Impl::step_bucket(int bucket, const StepArgs& args,
                                                 StepTarget target) {
  const AddElapsed timed(&optimizer_ns);
  const std::vector<ParamHandle>& ps = buckets[bucket];
  for (int i = 0; i < static_cast<int>(ps.size()); ++i) {
    const ParamRec& p = params[ps[i]];
    const uint64_t n = p.desc.numel;
    Pin grad(store.get(), p.grad32, opt_tier);
    Pin master(store.get(), p.master, opt_tier);
    Pin m(store.get(), p.exp_avg, opt_tier);
    Pin v(store.get(), p.exp_avg_sq, opt_tier);
    Pin out(store.get(), target == StepTarget::kParamNext ? p.param_next : p.param, opt_tier);
    STRATA_ASSIGN_OR_RETURN(TensorView gv, grad.acquire(Access::kRead));
    STRATA_ASSIGN_OR_RETURN(TensorView pv, master.acquire(Access::kReadWrite));
    STRATA_ASSIGN_OR_RETURN(TensorView mv, m.acquire(Access::kReadWrite));
    STRATA_ASSIGN_OR_RETURN(TensorView vv, v.acquire(Access::kReadWrite));
    STRATA_ASSIGN_OR_RETURN(TensorView ov, out.acquire(Access::kWrite));
    if (target == StepTarget::kSpeculative) {
      spec->save(bucket, i, static_cast<const float*>(pv.data), static_cast<const float*>(mv.data),
                 static_cast<const float*>(vv.data));
    }
    const bool fp32 = dtype == DType::kFloat32;
    const cpu_adam::Buffers b{.n = n,
                              .param = static_cast<float*>(pv.data),
                              .exp_avg = static_cast<float*>(mv.data),
                              .exp_avg_sq = static_cast<float*>(vv.data),
                              .grad = gv.data,
                              .grad_dtype = DType::kFloat32,
                              .param_out = fp32 ? nullptr : ov.data,
                              .out_dtype = fp32 ? DType::kFloat16 : dtype};
    const cpu_adam::StepArgs sa{
        .lr = args.lr[p.desc.group], .step = args.step, .grad_scale = args.grad_scale};
    STRATA_RETURN_IF_ERROR(cpu_adam::optimizer_step(args.hp[p.desc.group], sa, b, options.exec),
                           absl::StrCat("optimizer step of ", store->spec(p.master).name));
    if (target == StepTarget::kParam && (spec == nullptr || i >= spec->saved_params(bucket))) {
      ++unsaved_writes;
    }
    if (fp32) std::memcpy(ov.data, pv.data, n * sizeof(float));
    STRATA_RETURN_IF_ERROR(grad.release(false));
    STRATA_RETURN_IF_ERROR(master.release(true));
    STRATA_RETURN_IF_ERROR(m.release(true));
    STRATA_RETURN_IF_ERROR(v.release(true));
    // Dirtying the host copy drops the stale device copy; the next forward
    // loads the new one (H2D).
    STRATA_RETURN_IF_ERROR(out.release(true));
    if (target == StepTarget::kParamNext) ++next_done[bucket];
  }
  return absl::OkStatus();
}

absl::Status OffloadOptimizer::Impl::restore_bucket(int bucket) {
  const AddElapsed timed(&optimizer_ns);
  const std::vector<ParamHandle>& ps = buckets[bucket];
  for (int i = 0; i < spec->saved_params(bucket); ++i) {
    const ParamRec& p = params[ps[i]];
    Pin master(store.get(), p.master, opt_tier);
    Pin m(store.get(), p.exp_avg, opt_tier);
    Pin v(store.get(), p.exp_avg_sq, opt_tier);
    Pin out(store.get(), p.param, opt_tier);
    STRATA_ASSIGN_OR_RETURN(TensorView pv, master.acquire(Access::kWrite));
    STRATA_ASSIGN_OR_RETURN(TensorView mv, m.acquire(Access::kWrite));
    STRATA_ASSIGN_OR_RETURN(TensorView vv, v.acquire(Access::kWrite));
    STRATA_ASSIGN_OR_RETURN(TensorView ov, out.acquire(Access::kWrite));
    spec->restore(bucket, i, static_cast<float*>(pv.data), static_cast<float*>(mv.data),
                  static_cast<float*>(vv.data));
    // The compute param is always the master rounded to nearest even (the
    // optimizer writes it so, and so do initialisation and checkpoints).
    round_master(static_cast<const float*>(pv.data), ov.data, dtype, p.desc.numel);
    for (Pin* pin : {&master, &m, &v, &out}) STRATA_RETURN_IF_ERROR(pin->release(true));
  }
  return absl::OkStatus();
}

absl::Status OffloadOptimizer::Impl::publish_bucket(int bucket) {
  bool any = false;
  for (ParamHandle h : buckets[bucket]) {
    const ParamRec& p = params[h];
    if (p.desc.binding == ParamBinding::kStore) continue;
    Pin out(store.get(), p.param, opt_tier);
    STRATA_ASSIGN_OR_RETURN(TensorView ov, out.acquire(Access::kRead));
    const uint64_t bytes = p.desc.numel * dtype_size(dtype);
    // The framework's copy cannot be put back: a failure after this counts
    // as a partly stepped update.
    ++unsaved_writes;
    if (p.desc.binding == ParamBinding::kHost) {
      std::memcpy(p.desc.param, ov.data, bytes);
    } else {
      // The store's copy is the param's home on the optimizer's tier and
      // stays in place; begin_step waits for the copy before rewriting it.
      STRATA_RETURN_IF_ERROR(device->copy_to_device(p.desc.param, ov.data, bytes, stream),
                             absl::StrCat("copying param ", p.desc.name, " to the device"));
      any = true;
    }
    STRATA_RETURN_IF_ERROR(out.release(false));
  }
  if (any) STRATA_RETURN_IF_ERROR(device->record_event(bucket_events[bucket], stream));
  return absl::OkStatus();
}

bool OffloadOptimizer::Impl::update_complete() const {
  for (size_t b = 0; b < buckets.size(); ++b) {
    if (next_done[b] != static_cast<int>(buckets[b].size())) return false;
  }
  return true;
}

absl::Status OffloadOptimizer::Impl::swap_in_update() {
  if (!update_pending) return absl::OkStatus();
  update_pending = false;
  // Only what the update wrote goes in: after a failed update the params it
  // did not reach keep their values (param_next holds an older update's, or
  // nothing yet).
  for (size_t b = 0; b < buckets.size(); ++b) {
    const int done = next_done[b];
    next_done[b] = 0;
    for (int i = 0; i < done; ++i) {
      const ParamRec& p = params[buckets[b][i]];
      Pin next(store.get(), p.param_next, opt_tier);
      Pin param(store.get(), p.param, opt_tier);
      STRATA_ASSIGN_OR_RETURN(TensorView nv, next.acquire(Access::kRead));
      STRATA_ASSIGN_OR_RETURN(TensorView pv, param.acquire(Access::kWrite));
      std::memcpy(pv.data, nv.data, p.desc.numel * dtype_size(dtype));
      STRATA_RETURN_IF_ERROR(next.release(false));
      // Dirty: the device copy is stale; the next forward loads this one.
      STRATA_RETURN_IF_ERROR(param.release(true));
    }
  }
  return absl::OkStatus();
}

absl::Status OffloadOptimizer::Impl::drain_worker() {
  if (worker == nullptr) return absl::OkStatus();
  absl::Status drained = worker->drain();
  if (update_pending && !update_complete()) {
    // The delayed update failed (its error came out of this drain or an
    // earlier one): what it wrote goes in now, and nothing stays pending.
    if (absl::Status s = swap_in_update(); !s.ok()) {
      return annotate(drained, absl::StrCat("then swapping in what it wrote: ", s.message()));
    }
  }
  return drained;
}

absl::Status OffloadOptimizer::Impl::finish_pending_update() {
  STRATA_RETURN_IF_ERROR(drain_worker(), "the delayed update");
  return swap_in_update();
}

absl::Status OffloadOptimizer::Impl::undo_step(absl::Status status) {
  // The worker may still hold this step's jobs, which use the store; a
  // delayed update of the step before that succeeded stays pending.
  if (absl::Status s = drain_worker(); !s.ok() && s != status) {
    status = annotate(status, absl::StrCat("and the worker: ", s.message()));
  }
  // Every bucket with copies is restored: stepped speculatively, stepped
  // again after the decision, or failed half way through.
  for (int b = 0; spec != nullptr && b < static_cast<int>(buckets.size()); ++b) {
    if (!spec->has_copies(b)) continue;
    if (absl::Status s = restore_bucket(b); !s.ok()) {
      status = annotate(status, absl::StrCat("and restoring layer ", b,
                                             " failed (its weights are "
                                             "left partly updated; load a checkpoint): ",
                                             s.message()));
    }
  }
  if (unsaved_writes > 0) {
    // Those params cannot be put back: stepping again would apply this
    // update to them twice, saving would store half a step.
    partly_stepped_status = absl::FailedPreconditionError(absl::StrCat(
        "step ", before.steps + 1, " failed after it had updated ", unsaved_writes,
        " param(s) with no copy to undo them (", status.message(),
        "); the weights are partly stepped: load the last checkpoint (strata train --resume) "
        "to continue"));
    status = annotate(status, absl::StrCat("and ", unsaved_writes,
                                           " param(s) were already updated with no copy to undo "
                                           "them; load the last checkpoint to continue"));
  }
  steps = before.steps;
  micro_batches = before.micro_batches;
  adam_step = before.adam_step;
  schedule->set_iteration(before.schedule_iteration);
  if (scaler != nullptr) scaler->restore(before.scaler);
  store->end_step();
  in_step = false;
  return status;
}

// The decided step: skipped (speculative steps undone) or applied (kept,
// redone with the clip coefficient, stepped now, or queued as the delayed
// update); the Adam step and the schedule count an applied step.
absl::Status OffloadOptimizer::Impl::apply_step(bool apply, OptimizerStepResult* out) {
  OptimizerStepResult& r = *out;
  r.skipped = !apply;
  if (apply && config.gradient_clipping > 0) {
    r.clip_coef = std::max(1.0, (r.grad_norm + 1e-6) / config.gradient_clipping);
  }
  const int64_t next_adam_step = adam_step + (apply ? 1 : 0);
  StepArgs args = spec_args;
  args.step = next_adam_step;
  args.grad_scale = 1.0 / (r.loss_scale * r.clip_coef);
  const int num_buckets = static_cast<int>(buckets.size());
  if (apply && dpu) {
    // Delayed: the worker steps every bucket while the next step's forward
    // and backward run on the params of the step before.
    std::fill(next_done.begin(), next_done.end(), 0);
    for (int b = 0; b < num_buckets; ++b) {
      worker->submit([this, b, args, step = r.step] {
        return annotate(step_bucket(b, args, StepTarget::kParamNext),
                        absl::StrCat("the delayed update of step ", step));
      });
    }
    update_pending = true;
  } else {
    for (int b = 0; b < num_buckets; ++b) {
      // A bucket with no gradient this step is not stepped (torch skips a
      // param without a grad).
      const Speculation::Plan plan = spec != nullptr ? spec->plan(b, apply, r.clip_coef != 1.0)
                                     : apply         ? Speculation::Plan::kStep
                                                     : Speculation::Plan::kNothing;
      if (plan == Speculation::Plan::kRestore || plan == Speculation::Plan::kRestoreAndStep) {
        STRATA_RETURN_IF_ERROR(restore_bucket(b), absl::StrCat("step ", r.step, ": rollback"));
        ++r.rolled_back_buckets;
      }
      if ((plan == Speculation::Plan::kStep || plan == Speculation::Plan::kRestoreAndStep) &&
          calls[b] > 0) {
        if (options.before_decided_step) {
          STRATA_RETURN_IF_ERROR(options.before_decided_step(b), absl::StrCat("step ", r.step));
        }
        STRATA_RETURN_IF_ERROR(step_bucket(b, args, StepTarget::kParam),
                               absl::StrCat("step ", r.step));
      }
    }
    if (apply) {
      for (int b = 0; b < num_buckets; ++b) {
        if (calls[b] > 0) STRATA_RETURN_IF_ERROR(publish_bucket(b), absl::StrCat("step ", r.step));
      }
    }
  }
  if (apply) {
    adam_step = next_adam_step;
    schedule->advance();
  }
  return absl::OkStatus();
}

absl::Status OffloadOptimizer::Impl::run_finish(OptimizerStepResult* out) {
  OptimizerStepResult& r = *out;
  r.step = steps;
  r.loss_scale = loss_scale;
  r.lr = spec_args.lr.empty() ? 0 : spec_args.lr[0];
  // Also finishes the delayed update of the previous step, which the worker
  // ran while this step's forward and backward did.
  STRATA_RETURN_IF_ERROR(drain_worker(), absl::StrCat("step ", r.step));
  if (!backward_reported) {
    last_backward_seconds = std::chrono::duration<double>(last_grad - step_start).count();
  }
  const int num_buckets = static_cast<int>(buckets.size());
  // Buckets reported fewer times than gradient_accumulation_steps: their
  // statistics now.
  for (int b = 0; b < num_buckets && !overflow.load(); ++b) {
    if (calls[b] > 0 && stats_calls[b] != calls[b]) {
      const AddElapsed timed(&grad_ns);
      STRATA_RETURN_IF_ERROR(stats_bucket(b, calls[b]), absl::StrCat("step ", r.step));
      if (grad_stats[b].nonfinite) overflow.store(true);
    }
  }
  // The norm is summed in bucket order in every mode, so they agree bit for bit.
  bool nonfinite = overflow.load();
  double sum_sq = 0;
  for (int b = 0; b < num_buckets && !nonfinite; ++b) {
    sum_sq += grad_stats[b].sum_squares;
    nonfinite = grad_stats[b].nonfinite;
  }
  r.overflow = nonfinite;
  r.grad_norm =
      nonfinite ? std::numeric_limits<double>::infinity() : std::sqrt(sum_sq) / r.loss_scale;
  r.speculative_buckets = spec != nullptr ? spec->stepped_layers() + early_rollbacks.load() : 0;
  r.rolled_back_buckets = early_rollbacks.load();

  bool apply = true;
  if (scaler != nullptr) {
    STRATA_ASSIGN_OR_RETURN(apply, scaler->update(nonfinite), absl::StrCat("step ", r.step));
  } else if (nonfinite && external_scale.has_value()) {
    apply = false;  // the framework's scaler (GradScaler) sees overflow and lowers its scale
  } else if (nonfinite) {
    return absl::FailedPreconditionError(absl::StrCat(
        "step ", r.step, ": the gradients hold inf or NaN and ", std::string(dtype_name(dtype)),
        " training has no loss scaler to skip the step; lower the learning rate, set "
        "gradient_clipping, or check the model's inputs"));
  }
  // Errors of the store's background write-backs surface before the step
  // changes anything.
  STRATA_RETURN_IF_ERROR(store->background_error(), absl::StrCat("step ", r.step));
  // The previous step's delayed update goes in before this step's is queued
  // (it writes param_next again).
  STRATA_RETURN_IF_ERROR(swap_in_update(), absl::StrCat("step ", r.step));
  STRATA_RETURN_IF_ERROR(apply_step(apply, &r));

  // Totals since the last step's end: a delayed update run during this step
  // counts here.
  const int64_t g_ns = grad_ns.load(), o_ns = optimizer_ns.load();
  r.grad_seconds = (g_ns - grad_ns_reported) * 1e-9;
  last_host_seconds = (g_ns - grad_ns_reported + o_ns - optimizer_ns_reported) * 1e-9;
  r.optimizer_seconds = (o_ns - optimizer_ns_reported) * 1e-9;
  grad_ns_reported = g_ns;
  optimizer_ns_reported = o_ns;
  const offload::StoreStats after = store->stats();
  for (int t = 0; t < offload::kTierCount; ++t) {
    r.bytes_in[t] = after.tiers[t].bytes_in - stats_before.tiers[t].bytes_in;
    r.bytes_out[t] = after.tiers[t].bytes_out - stats_before.tiers[t].bytes_out;
  }
  store->end_step();
  micro_batches += gas;
  in_step = false;
  return absl::OkStatus();
}

absl::StatusOr<OptimizerStepResult> OffloadOptimizer::finish_step() {
  Impl& m = *impl_;
  if (!m.in_step) {
    return absl::FailedPreconditionError("finish_step outside a step; call begin_step first");
  }
  OptimizerStepResult r;
  absl::Status status = m.run_finish(&r);
  if (status.ok()) return r;
  return m.undo_step(std::move(status));
}

absl::Status OffloadOptimizer::abort_step(absl::Status why) {
  if (!impl_->in_step) return why;
  return impl_->undo_step(std::move(why));
}

std::optional<gpu::EventId> OffloadOptimizer::params_ready(int bucket) const {
  const Impl& m = *impl_;
  if (bucket < 0 || bucket >= static_cast<int>(m.buckets.size()) || !m.bucket_has_device[bucket]) {
    return std::nullopt;
  }
  return m.bucket_events[bucket];
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

const GroupHyperparams& OffloadOptimizer::group(int g) const { return impl_->groups.at(g); }
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
  std::vector<float> out(p.desc.numel);
  STRATA_RETURN_IF_ERROR(m.read_raw(m.state_id(p, kind), m.opt_tier, out.data(), out.size() * 4));
  return out;
}

absl::Status OffloadOptimizer::write_state(ParamHandle h, StateKind kind, const float* values) {
  Impl& m = *impl_;
  STRATA_RETURN_IF_ERROR(m.check_handle(h));
  if (m.in_step) return absl::FailedPreconditionError("write_state: a step is in flight");
  STRATA_RETURN_IF_ERROR(m.finish_pending_update());
  const Impl::ParamRec& p = m.params[h];
  return m.write_raw(m.state_id(p, kind), m.opt_tier, values, p.desc.numel * 4);
}

absl::StatusOr<std::vector<float>> OffloadOptimizer::read_param(ParamHandle h) {
  Impl& m = *impl_;
  STRATA_RETURN_IF_ERROR(m.check_handle(h));
  STRATA_RETURN_IF_ERROR(m.finish_pending_update());
  const Impl::ParamRec& p = m.params[h];
  const uint64_t n = p.desc.numel;
  std::vector<uint8_t> raw(n * dtype_size(m.dtype));
  STRATA_RETURN_IF_ERROR(m.read_raw(p.param, m.param_tier(p), raw.data(), raw.size()));
  std::vector<float> out(n);
  if (m.dtype == DType::kFloat32) std::memcpy(out.data(), raw.data(), raw.size());
  if (m.dtype == DType::kFloat16)
    convert_fp16_to_fp32(reinterpret_cast<const uint16_t*>(raw.data()), out.data(), n);
  if (m.dtype == DType::kBFloat16)
    convert_bf16_to_fp32(reinterpret_cast<const uint16_t*>(raw.data()), out.data(), n);
  return out;
}

absl::Status OffloadOptimizer::save_state(const std::string& dir, const nlohmann::json& user) {
  return impl_->save(dir, user);
}
absl::Status OffloadOptimizer::save_state_async(const std::string& dir,
                                                const nlohmann::json& user) {
  return impl_->save_async(dir, user);
}
absl::Status OffloadOptimizer::wait_for_save() { return impl_->wait_for_save(); }
absl::Status OffloadOptimizer::load_state(const std::string& dir, bool weights_only) {
  return impl_->load(dir, weights_only);
}
const CheckpointLoadStats& OffloadOptimizer::last_load_stats() const { return impl_->last_load; }

offload::TieredStore* OffloadOptimizer::store() { return impl_->store.get(); }
offload::TensorId OffloadOptimizer::param_id(ParamHandle p) const {
  return impl_->params.at(p).param;
}
offload::TensorId OffloadOptimizer::grad_id(ParamHandle p) const {
  return impl_->params.at(p).grad;
}
gpu::StreamId OffloadOptimizer::stream() const { return impl_->stream; }
const Placement& OffloadOptimizer::placement() const { return impl_->plan; }
int OffloadOptimizer::num_params() const { return static_cast<int>(impl_->params.size()); }
int OffloadOptimizer::num_buckets() const { return static_cast<int>(impl_->buckets.size()); }
const ParamDesc& OffloadOptimizer::param(ParamHandle p) const { return impl_->params.at(p).desc; }
const std::vector<ParamHandle>& OffloadOptimizer::bucket_params(int bucket) const {
  return impl_->buckets.at(bucket);
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
