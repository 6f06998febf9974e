#include "engine/training_engine.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>

#include "absl/strings/str_cat.h"
#include "core/log.h"
#include "core/status.h"
#include "engine/config_validate.h"
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
  Pin(Pin&& o) noexcept : store_(o.store_), id_(o.id_), tier_(o.tier_), held_(o.held_) {
    o.held_ = false;
  }

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

}  // namespace

absl::StatusOr<std::unique_ptr<TrainingEngine>> TrainingEngine::create(
    const config::DsConfig& config, Model* model, gpu::Device* device, EngineOptions options) {
  std::unique_ptr<TrainingEngine> engine(new TrainingEngine());
  STRATA_RETURN_IF_ERROR(engine->build(config, model, device, std::move(options)),
                         "creating the training engine");
  return engine;
}

TrainingEngine::~TrainingEngine() {
  if (absl::Status s = wait_for_checkpoint(); !s.ok()) {
    log::get("engine")->error("asynchronous checkpoint save failed: {}", std::string(s.message()));
  }
  worker_.reset();  // its jobs use the store
  if (flags_device_ != nullptr) device_->free(flags_device_);
  store_.reset();  // before the I/O engine and the stream it uses
  own_io_.reset();
  for (const std::string& f : swap_files_) {
    std::error_code ec;
    std::filesystem::remove(f, ec);
  }
  if (have_stream_) device_->destroy_stream(stream_);
}

absl::Status TrainingEngine::build(const config::DsConfig& config, Model* model,
                                   gpu::Device* device, EngineOptions options) {
  if (model == nullptr || device == nullptr) {
    return absl::InvalidArgumentError("the engine needs a model and a device");
  }
  config_ = config;
  model_ = model;
  device_ = device;
  exec_ = options.exec;
  gas_ = std::max<int64_t>(1, config.gradient_accumulation_steps);
  STRATA_RETURN_IF_ERROR(check_supported(config, *device));
  STRATA_RETURN_IF_ERROR(configure_step(config, std::move(options.lr_schedule)));
  const int num_layers = model->num_layers();
  std::vector<std::vector<ParamSpec>> specs(std::max(num_layers, 0));
  for (int l = 0; l < num_layers; ++l) specs[l] = model->layer_params(l);
  STRATA_ASSIGN_OR_RETURN(const Placement plan, plan_placement(config, specs));
  STRATA_ASSIGN_OR_RETURN(const StoreBudgets budgets,
                          store_budgets(config, *device, plan, options));
  STRATA_RETURN_IF_ERROR(create_store(config, plan, budgets, options));
  STRATA_RETURN_IF_ERROR(register_tensors(specs, plan));
  STRATA_RETURN_IF_ERROR(prepare_step_state(config, plan, options.speculation));
  before_decided_step_ = std::move(options.before_decided_step);
  return initialize_params();
}

absl::Status TrainingEngine::check_supported(const config::DsConfig& config,
                                             const gpu::Device& device) {
  // What the config alone decides: the same checks as `strata config check`.
  STRATA_RETURN_IF_ERROR(validate_for_training(config, "ds_config"));
  // Without offload the host optimizer reads and writes device memory.
  if (config.zero.offload_optimizer.device == config::OffloadDevice::kNone &&
      !device.host_addressable()) {
    return absl::UnimplementedError(absl::StrCat(
        "zero_optimization.offload_optimizer.device \"none\" needs a device-side optimizer, "
        "which strata does not have yet (device ",
        device.name(), "); set offload_optimizer.device to \"cpu\" or \"nvme\""));
  }
  return absl::OkStatus();
}

absl::Status TrainingEngine::configure_step(const config::DsConfig& config,
                                            std::unique_ptr<LrSchedule> schedule) {
  overlap_ = config.strata.overlap == config::OverlapMode::kOverlap;
  dpu_ = config.strata.delayed_param_update;
  if (dpu_ && config.zero.offload_optimizer.device == config::OffloadDevice::kNvme) {
    // Measured (bench step): its update's reads fall across the store's
    // steps, the host tier's trace keeps changing and eviction falls back
    // to LRU, so the states cross NVMe about twice per step.
    log::get("engine")->warn(
        "strata.delayed_param_update with offload_optimizer nvme moves about twice the NVMe "
        "bytes of overlap mode in this version and is slower; it pays off with "
        "offload_optimizer cpu");
  }
  STRATA_ASSIGN_OR_RETURN(hp_.kind, optimizer_kind(config.optimizer.type));
  hp_.beta1 = config.optimizer.betas[0];
  hp_.beta2 = config.optimizer.betas[1];
  hp_.eps = config.optimizer.eps;
  hp_.weight_decay = config.optimizer.weight_decay;
  hp_.bias_correction = config.optimizer.bias_correction;
  dtype_ = config.fp16.enabled   ? DType::kFloat16
           : config.bf16.enabled ? DType::kBFloat16
                                 : DType::kFloat32;
  if (config.fp16.enabled) {
    scaler_ = std::make_unique<LossScaler>(
        LossScalerOptions{.static_scale = config.fp16.loss_scale,
                          .initial_scale_power = config.fp16.initial_scale_power,
                          .loss_scale_window = config.fp16.loss_scale_window,
                          .hysteresis = config.fp16.hysteresis,
                          .consecutive_hysteresis = config.fp16.consecutive_hysteresis,
                          .min_loss_scale = config.fp16.min_loss_scale});
  }
  if (schedule != nullptr) {
    schedule_ = std::move(schedule);
  } else {
    STRATA_ASSIGN_OR_RETURN(schedule_, make_lr_schedule(config.scheduler, config.optimizer.lr));
  }
  opt_tier_ = config.zero.offload_optimizer.device != config::OffloadDevice::kNone ? Tier::kHost
                                                                                   : Tier::kDevice;
  return absl::OkStatus();
}

absl::StatusOr<TrainingEngine::StoreBudgets> TrainingEngine::store_budgets(
    const config::DsConfig& config, const gpu::Device& device, const Placement& plan,
    const EngineOptions& options) {
  const bool params_offloaded =
      config.zero.stage == 3 && config.zero.offload_param.device != config::OffloadDevice::kNone;
  StoreBudgets b{.device = options.device_budget_bytes, .host = options.host_budget_bytes};
  if (b.device == 0) {
    // The overflow check's scratch comes out of the device before the store's budget.
    const gpu::DeviceMemoryStats ds = device.stats();
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
  if (b.host == 0) b.host = plan.host_homed + plan.host_cache;
  if (b.host < plan.host_homed + plan.largest_layer_nvme) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the host budget of ", b.host, " bytes cannot hold the host-homed tensors (",
                     plan.host_homed, " bytes) plus one layer's optimizer states from NVMe (",
                     plan.largest_layer_nvme, " bytes); raise the host budget"));
  }
  return b;
}

absl::Status TrainingEngine::create_store(const config::DsConfig& config, const Placement& plan,
                                          const StoreBudgets& budgets,
                                          const EngineOptions& options) {
  offload::TieredStore::Options so;
  so.device = device_;
  so.device_budget_bytes = budgets.device;
  so.host_budget_bytes = budgets.host;
  so.pin_device = config.zero.offload_optimizer.pin_memory ? device_ : nullptr;
  so.prefetch_window_bytes = static_cast<uint64_t>(config.strata.prefetch_window_bytes);
  STRATA_RETURN_IF_ERROR(add_swap_files(config, plan, options, so));
  STRATA_ASSIGN_OR_RETURN(store_, offload::TieredStore::create(so));
  return absl::OkStatus();
}

absl::Status TrainingEngine::add_swap_files(const config::DsConfig& config, const Placement& plan,
                                            const EngineOptions& options,
                                            offload::TieredStore::Options& so) {
  const Tier state_home = plan.state_home;
  const Tier compute_home = plan.compute_home;
  if (state_home == Tier::kNvme || compute_home == Tier::kNvme) {
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
      // Killed runs' swap files go; ours is locked for the engine's lifetime.
      STRATA_RETURN_IF_ERROR(remove_dead_swap_files(d).status(), "nvme_path");
      std::string path;
      STRATA_ASSIGN_OR_RETURN(ScratchLock lock, create_swap_file(d, &path));
      swap_files_.push_back(std::move(path));
      swap_locks_.push_back(std::move(lock));
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
      STRATA_ASSIGN_OR_RETURN(own_io_, swap::make_io_engine(io),
                              "starting NVMe I/O (ds_config aio)");
      so.io = own_io_.get();
    }
    so.swap_paths = swap_files_;
  }
  return absl::OkStatus();
}

absl::Status TrainingEngine::register_tensors(const std::vector<std::vector<ParamSpec>>& specs,
                                              const Placement& plan) {
  const Tier state_home = plan.state_home;
  const Tier compute_home = plan.compute_home;
  const Tier grad_home = plan.offload ? Tier::kHost : Tier::kDevice;
  layers_.resize(specs.size());
  for (int l = 0; l < static_cast<int>(specs.size()); ++l) {
    for (const ParamSpec& p : specs[l]) {
      ParamIds ids;
      ids.name = p.name;
      ids.numel = p.numel;
      const std::string base = absl::StrCat("layer", l, ".", p.name);
      auto reg = [&](const char* suffix, DType dt, TensorRole role,
                     Tier home) -> absl::StatusOr<offload::TensorId> {
        return store_->register_tensor({absl::StrCat(base, ".", suffix), p.numel, dt, role, home});
      };
      STRATA_ASSIGN_OR_RETURN(ids.param, reg("param", dtype_, TensorRole::kParam16, compute_home));
      if (dpu_) {
        // The delayed update's output, swapped into param between steps.
        STRATA_ASSIGN_OR_RETURN(ids.param_next,
                                reg("param_next", dtype_, TensorRole::kParam16, opt_tier_));
      }
      STRATA_ASSIGN_OR_RETURN(ids.grad, reg("grad", dtype_, TensorRole::kGrad, grad_home));
      STRATA_ASSIGN_OR_RETURN(ids.grad32,
                              reg("grad32", DType::kFloat32, TensorRole::kGrad, grad_home));
      STRATA_ASSIGN_OR_RETURN(ids.master,
                              reg("master", DType::kFloat32, TensorRole::kMaster32, state_home));
      STRATA_ASSIGN_OR_RETURN(ids.exp_avg,
                              reg("exp_avg", DType::kFloat32, TensorRole::kExpAvg, state_home));
      STRATA_ASSIGN_OR_RETURN(
          ids.exp_avg_sq, reg("exp_avg_sq", DType::kFloat32, TensorRole::kExpAvgSq, state_home));
      layers_[l].push_back(std::move(ids));
    }
  }
  return store_->finalize();
}

absl::Status TrainingEngine::prepare_step_state(const config::DsConfig& config,
                                                const Placement& plan,
                                                SpeculationPolicy speculation) {
  STRATA_ASSIGN_OR_RETURN(stream_, device_->create_stream());
  have_stream_ = true;
  const int num_layers = static_cast<int>(layers_.size());
  if (scaler_ != nullptr) {
    size_t max_layer_params = 0;
    for (const auto& ps : layers_) max_layer_params = std::max(max_layer_params, ps.size());
    STRATA_ASSIGN_OR_RETURN(flags_device_, device_->allocate(plan.device_scratch),
                            "allocating the device scratch of the overflow check");
    flag_sums_.assign(max_layer_params, 0.0f);
    flag_nonfinite_.assign(max_layer_params, 0);
  }
  grad_stats_.assign(num_layers, {});
  next_done_.assign(num_layers, 0);
  if (overlap_ || dpu_) worker_ = std::make_unique<OrderedWorker>();
  if (overlap_ && !dpu_) {
    // Any step can fail after layers were stepped speculatively (an error
    // in backward, an overflow, a non-finite gradient), so every
    // speculative step keeps copies; they are host memory of their own,
    // sized to what a step can use and never more than the configured buffer.
    std::vector<std::vector<uint64_t>> numels(num_layers);
    uint64_t state_floats = 0;
    for (int l = 0; l < num_layers; ++l) {
      for (const ParamIds& p : layers_[l]) {
        numels[l].push_back(p.numel);
        state_floats += 3 * p.numel;
      }
    }
    spec_ = std::make_unique<Speculation>(
        speculation, std::move(numels),
        std::min<uint64_t>(
            state_floats,
            static_cast<uint64_t>(config.strata.rollback_buffer_bytes) / sizeof(float)));
  }
  return absl::OkStatus();
}

Tier TrainingEngine::param_tier(const ParamIds& p) const {
  const Tier home = store_->spec(p.param).home;
  return home == Tier::kNvme ? Tier::kHost : home;
}

absl::Status TrainingEngine::copy_in(TensorView view, Tier tier, const void* src, uint64_t bytes) {
  if (tier != Tier::kDevice) {
    std::memcpy(view.data, src, bytes);
    return absl::OkStatus();
  }
  STRATA_RETURN_IF_ERROR(device_->copy_to_device(view.data, src, bytes, stream_));
  return device_->synchronize_stream(stream_);
}

absl::Status TrainingEngine::copy_out(TensorView view, Tier tier, void* dst, uint64_t bytes) {
  if (tier != Tier::kDevice) {
    std::memcpy(dst, view.data, bytes);
    return absl::OkStatus();
  }
  STRATA_RETURN_IF_ERROR(device_->copy_to_host(dst, view.data, bytes, stream_));
  return device_->synchronize_stream(stream_);
}

absl::Status TrainingEngine::initialize_params() {
  for (int l = 0; l < static_cast<int>(layers_.size()); ++l) {
    for (int i = 0; i < static_cast<int>(layers_[l].size()); ++i) {
      const ParamIds& p = layers_[l][i];
      std::vector<float> init(p.numel);
      model_->init_param(l, i, init.data());
      std::vector<uint16_t> low(dtype_ == DType::kFloat32 ? 0 : p.numel);
      if (dtype_ == DType::kFloat16) convert_fp32_to_fp16(init.data(), low.data(), p.numel);
      if (dtype_ == DType::kBFloat16) convert_fp32_to_bf16(init.data(), low.data(), p.numel);
      const void* compute = dtype_ == DType::kFloat32 ? static_cast<const void*>(init.data())
                                                      : static_cast<const void*>(low.data());
      const std::vector<float> zeros(p.numel, 0.0f);
      struct Init {
        offload::TensorId id;
        const void* src;
        uint64_t bytes;
      };
      // The compute param goes to its home; the fp32 tensors are written on
      // the optimizer's tier and reach NVMe by write-back.
      const Tier ptier = param_tier(p);
      for (const Init& x :
           {Init{p.param, compute, p.numel * dtype_size(dtype_)},
            Init{p.master, init.data(), p.numel * 4}, Init{p.exp_avg, zeros.data(), p.numel * 4},
            Init{p.exp_avg_sq, zeros.data(), p.numel * 4}}) {
        const Tier tier = x.id == p.param ? ptier : opt_tier_;
        Pin pin(store_.get(), x.id, tier);
        STRATA_ASSIGN_OR_RETURN(TensorView v, pin.acquire(Access::kWrite));
        STRATA_RETURN_IF_ERROR(copy_in(v, tier, x.src, x.bytes));
        STRATA_RETURN_IF_ERROR(pin.release(/*dirty=*/true));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status TrainingEngine::run_micro_batch(int64_t micro, double loss_grad_scale, bool first,
                                             bool last, double* loss, StepStats* st) {
  const int num_layers = static_cast<int>(layers_.size());
  auto run_layer = [&](int l, bool backward) -> absl::Status {
    const std::vector<ParamIds>& ps = layers_[l];
    LayerContext ctx{.device = device_,
                     .stream = stream_,
                     .dtype = dtype_,
                     .micro_batch = micro,
                     .loss_grad_scale = loss_grad_scale};
    std::vector<Pin> pins;
    pins.reserve(2 * ps.size());
    for (const ParamIds& p : ps) {
      pins.emplace_back(store_.get(), p.param, Tier::kDevice);
      STRATA_ASSIGN_OR_RETURN(TensorView v, pins.back().acquire(Access::kRead));
      ctx.params.push_back(v.data);
    }
    if (backward) {
      for (const ParamIds& p : ps) {
        pins.emplace_back(store_.get(), p.grad, Tier::kDevice);
        STRATA_ASSIGN_OR_RETURN(TensorView v, pins.back().acquire(Access::kWrite));
        ctx.grads.push_back(v.data);
      }
    }
    const char* what = backward ? "backward" : "forward";
    STRATA_RETURN_IF_ERROR(backward ? model_->backward(l, ctx) : model_->forward(l, ctx),
                           absl::StrCat(what, " of layer ", l));
    if (backward && scaler_ != nullptr && !overflow_.load()) {
      STRATA_RETURN_IF_ERROR(check_overflow(l, ctx));
    }
    // The layer's buffers are unpinned only once its work is done.
    STRATA_RETURN_IF_ERROR(device_->synchronize_stream(stream_),
                           absl::StrCat(what, " of layer ", l));
    for (size_t i = 0; i < pins.size(); ++i) {
      STRATA_RETURN_IF_ERROR(pins[i].release(/*dirty=*/i >= ps.size()));
    }
    if (backward && scaler_ != nullptr && !overflow_.load()) {
      for (size_t i = 0; i < ps.size(); ++i) {
        if (flag_nonfinite_[i] != 0) {
          overflow_.store(true);
          st->overflow_layer = l;
          st->overflow_param = ps[i].name;
          log::get("engine")->warn(
              "step {}: fp16 gradient overflow first seen in layer {} ({}), micro-batch {}, at "
              "loss scale {}; the step is skipped (if this repeats, bf16 has no overflow)",
              st->step, l, ps[i].name, micro, st->loss_scale);
          break;
        }
      }
    }
    if (backward && worker_ != nullptr && !overflow_.load()) {
      worker_->submit([this, l, first, last] { return layer_done(l, first, last); });
    }
    return absl::OkStatus();
  };
  for (int l = 0; l < num_layers; ++l) STRATA_RETURN_IF_ERROR(run_layer(l, false));
  *loss = model_->loss();
  // The worker may still be reading the previous micro-batch's gradients
  // (a delayed update it may be running touches no gradient on the device).
  if (!first) STRATA_RETURN_IF_ERROR(drain_worker(), "gradient worker");
  const auto backward_start = std::chrono::steady_clock::now();
  for (int l = num_layers - 1; l >= 0; --l) STRATA_RETURN_IF_ERROR(run_layer(l, true));
  if (last) {
    last_backward_seconds_ =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - backward_start).count();
  }
  if (worker_ == nullptr && !overflow_.load()) {
    for (int l = 0; l < num_layers; ++l) STRATA_RETURN_IF_ERROR(layer_done(l, first, last));
  }
  return absl::OkStatus();
}

absl::Status TrainingEngine::check_overflow(int layer, const LayerContext& ctx) {
  const std::vector<ParamIds>& ps = layers_[layer];
  auto* sums = static_cast<float*>(flags_device_);
  auto* flags = reinterpret_cast<int32_t*>(sums + flag_sums_.size());
  std::fill(flag_nonfinite_.begin(), flag_nonfinite_.end(), 0);
  for (size_t i = 0; i < ps.size(); ++i) {
    STRATA_RETURN_IF_ERROR(
        device_->squared_norm(ctx.grads[i], dtype_, ps[i].numel, sums + i, flags + i, stream_));
  }
  // Only the flags come back: a few bytes per param, in stream order.
  return device_->copy_to_host(flag_nonfinite_.data(), flags, ps.size() * sizeof(int32_t), stream_);
}
absl::StatusOr<double> TrainingEngine::evaluate(int64_t batches) {
  if (batches < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("evaluate: batches must be at least 1 (got ", batches, ")"));
  }
  double loss_sum = 0;
  for (int64_t k = 0; k < batches; ++k) {
    for (int l = 0; l < static_cast<int>(layers_.size()); ++l) {
      const std::vector<ParamIds>& ps = layers_[l];
      LayerContext ctx{.device = device_,
                       .stream = stream_,
                       .dtype = dtype_,
                       .micro_batch = k,
                       .loss_grad_scale = 1.0,
                       .training = false};
      std::vector<Pin> pins;
      pins.reserve(ps.size());
      for (const ParamIds& p : ps) {
        pins.emplace_back(store_.get(), p.param, Tier::kDevice);
        STRATA_ASSIGN_OR_RETURN(TensorView v, pins.back().acquire(Access::kRead));
        ctx.params.push_back(v.data);
      }
      STRATA_RETURN_IF_ERROR(model_->forward(l, ctx),
                             absl::StrCat("evaluate: batch ", k, ", forward of layer ", l));
      STRATA_RETURN_IF_ERROR(device_->synchronize_stream(stream_),
                             absl::StrCat("evaluate: batch ", k, ", forward of layer ", l));
      for (Pin& pin : pins) STRATA_RETURN_IF_ERROR(pin.release(/*dirty=*/false));
    }
    loss_sum += model_->loss();
  }
  return loss_sum / static_cast<double>(batches);
}

absl::Status TrainingEngine::accumulate_layer(int layer, bool first) {
  // Reading the grad on the host makes the store copy the device's back (D2H).
  for (const ParamIds& p : layers_[layer]) {
    Pin g(store_.get(), p.grad, opt_tier_);
    Pin acc(store_.get(), p.grad32, opt_tier_);
    STRATA_ASSIGN_OR_RETURN(TensorView gv, g.acquire(Access::kRead));
    STRATA_ASSIGN_OR_RETURN(TensorView av,
                            acc.acquire(first ? Access::kWrite : Access::kReadWrite));
    accumulate_into(static_cast<float*>(av.data), gv.data, dtype_, p.numel, first, exec_);
    STRATA_RETURN_IF_ERROR(g.release(false));
    STRATA_RETURN_IF_ERROR(acc.release(true));
  }
  return absl::OkStatus();
}

absl::Status TrainingEngine::stats_layer(int layer) {
  cpu_adam::GradStats total;
  for (const ParamIds& p : layers_[layer]) {
    Pin acc(store_.get(), p.grad32, opt_tier_);
    STRATA_ASSIGN_OR_RETURN(TensorView av, acc.acquire(Access::kRead));
    STRATA_ASSIGN_OR_RETURN(cpu_adam::GradStats gs,
                            cpu_adam::grad_stats(av.data, DType::kFloat32, p.numel, exec_));
    STRATA_RETURN_IF_ERROR(acc.release(false));
    total.sum_squares += gs.sum_squares;
    total.nonfinite = total.nonfinite || gs.nonfinite;
  }
  grad_stats_[layer] = total;
  return absl::OkStatus();
}

absl::Status TrainingEngine::layer_done(int layer, bool first, bool last) {
  if (overflow_.load()) return absl::OkStatus();  // nothing more leaves the device
  {
    const AddElapsed timed(&grad_ns_);
    STRATA_RETURN_IF_ERROR(accumulate_layer(layer, first));
    if (last) STRATA_RETURN_IF_ERROR(stats_layer(layer));
  }
  if (!last) return absl::OkStatus();
  if (grad_stats_[layer].nonfinite) overflow_.store(true);
  if (spec_ == nullptr || overflow_.load()) return absl::OkStatus();
  // Speculative step, when its rollback copies fit (the others wait for the
  // end of backward).
  if (!spec_->reserve(layer)) return absl::OkStatus();
  const cpu_adam::StepArgs args{
      .lr = spec_lr_, .step = adam_step_ + 1, .grad_scale = spec_grad_scale_};
  STRATA_RETURN_IF_ERROR(step_layer(layer, step_hp_, args, StepTarget::kSpeculative),
                         "speculative step");
  spec_->mark_stepped(layer);
  return absl::OkStatus();
}

absl::Status TrainingEngine::step_layer(int layer, const cpu_adam::Hyperparams& hp,
                                        const cpu_adam::StepArgs& args, StepTarget target) {
  const AddElapsed timed(&optimizer_ns_);
  const std::vector<ParamIds>& ps = layers_[layer];
  for (int i = 0; i < static_cast<int>(ps.size()); ++i) {
    const ParamIds& p = ps[i];
    Pin grad(store_.get(), p.grad32, opt_tier_);
    Pin master(store_.get(), p.master, opt_tier_);
    Pin m(store_.get(), p.exp_avg, opt_tier_);
    Pin v(store_.get(), p.exp_avg_sq, opt_tier_);
    Pin out(store_.get(), target == StepTarget::kParamNext ? p.param_next : p.param, opt_tier_);
    STRATA_ASSIGN_OR_RETURN(TensorView gv, grad.acquire(Access::kRead));
    STRATA_ASSIGN_OR_RETURN(TensorView pv, master.acquire(Access::kReadWrite));
    STRATA_ASSIGN_OR_RETURN(TensorView mv, m.acquire(Access::kReadWrite));
    STRATA_ASSIGN_OR_RETURN(TensorView vv, v.acquire(Access::kReadWrite));
    STRATA_ASSIGN_OR_RETURN(TensorView ov, out.acquire(Access::kWrite));
    if (target == StepTarget::kSpeculative) {
      spec_->save(layer, i, static_cast<const float*>(pv.data), static_cast<const float*>(mv.data),
                  static_cast<const float*>(vv.data));
    }
    const bool fp32 = dtype_ == DType::kFloat32;
    const cpu_adam::Buffers b{.n = p.numel,
                              .param = static_cast<float*>(pv.data),
                              .exp_avg = static_cast<float*>(mv.data),
                              .exp_avg_sq = static_cast<float*>(vv.data),
                              .grad = gv.data,
                              .grad_dtype = DType::kFloat32,
                              .param_out = fp32 ? nullptr : ov.data,
                              .out_dtype = fp32 ? DType::kFloat16 : dtype_};
    STRATA_RETURN_IF_ERROR(cpu_adam::optimizer_step(hp, args, b, exec_),
                           absl::StrCat("optimizer step of ", store_->spec(p.master).name));
    if (target == StepTarget::kParam && (spec_ == nullptr || i >= spec_->saved_params(layer))) {
      ++unsaved_writes_;
    }
    if (fp32) std::memcpy(ov.data, pv.data, p.numel * sizeof(float));
    STRATA_RETURN_IF_ERROR(grad.release(false));
    STRATA_RETURN_IF_ERROR(master.release(true));
    STRATA_RETURN_IF_ERROR(m.release(true));
    STRATA_RETURN_IF_ERROR(v.release(true));
    // Dirtying the host copy drops the stale device copy; the next forward
    // loads the new one (H2D).
    STRATA_RETURN_IF_ERROR(out.release(true));
    if (target == StepTarget::kParamNext) ++next_done_[layer];
  }
  return absl::OkStatus();
}

absl::Status TrainingEngine::restore_layer(int layer) {
  const AddElapsed timed(&optimizer_ns_);
  const std::vector<ParamIds>& ps = layers_[layer];
  for (int i = 0; i < spec_->saved_params(layer); ++i) {
    const ParamIds& p = ps[i];
    Pin master(store_.get(), p.master, opt_tier_);
    Pin m(store_.get(), p.exp_avg, opt_tier_);
    Pin v(store_.get(), p.exp_avg_sq, opt_tier_);
    Pin out(store_.get(), p.param, opt_tier_);
    STRATA_ASSIGN_OR_RETURN(TensorView pv, master.acquire(Access::kWrite));
    STRATA_ASSIGN_OR_RETURN(TensorView mv, m.acquire(Access::kWrite));
    STRATA_ASSIGN_OR_RETURN(TensorView vv, v.acquire(Access::kWrite));
    STRATA_ASSIGN_OR_RETURN(TensorView ov, out.acquire(Access::kWrite));
    spec_->restore(layer, i, static_cast<float*>(pv.data), static_cast<float*>(mv.data),
                   static_cast<float*>(vv.data));
    // The compute param is always the master rounded to nearest even (the
    // optimizer writes it so, and so do initialisation and checkpoints).
    const auto* master32 = static_cast<const float*>(pv.data);
    if (dtype_ == DType::kFloat32) std::memcpy(ov.data, master32, p.numel * sizeof(float));
    if (dtype_ == DType::kFloat16)
      convert_fp32_to_fp16(master32, static_cast<uint16_t*>(ov.data), p.numel);
    if (dtype_ == DType::kBFloat16)
      convert_fp32_to_bf16(master32, static_cast<uint16_t*>(ov.data), p.numel);
    for (Pin* pin : {&master, &m, &v, &out}) STRATA_RETURN_IF_ERROR(pin->release(true));
  }
  return absl::OkStatus();
}

bool TrainingEngine::update_complete() const {
  for (size_t l = 0; l < layers_.size(); ++l) {
    if (next_done_[l] != static_cast<int>(layers_[l].size())) return false;
  }
  return true;
}

absl::Status TrainingEngine::swap_in_update() {
  if (!update_pending_) return absl::OkStatus();
  update_pending_ = false;
  // Only what the update wrote goes in: after a failed update the params it
  // did not reach keep their values (param_next holds an older update's, or
  // nothing yet).
  for (size_t l = 0; l < layers_.size(); ++l) {
    const int done = next_done_[l];
    next_done_[l] = 0;
    for (int i = 0; i < done; ++i) {
      const ParamIds& p = layers_[l][i];
      Pin next(store_.get(), p.param_next, opt_tier_);
      Pin param(store_.get(), p.param, opt_tier_);
      STRATA_ASSIGN_OR_RETURN(TensorView nv, next.acquire(Access::kRead));
      STRATA_ASSIGN_OR_RETURN(TensorView pv, param.acquire(Access::kWrite));
      std::memcpy(pv.data, nv.data, p.numel * dtype_size(dtype_));
      STRATA_RETURN_IF_ERROR(next.release(false));
      // Dirty: the device copy is stale; the next forward loads this one.
      STRATA_RETURN_IF_ERROR(param.release(true));
    }
  }
  return absl::OkStatus();
}

absl::Status TrainingEngine::drain_worker() {
  if (worker_ == nullptr) return absl::OkStatus();
  absl::Status drained = worker_->drain();
  if (update_pending_ && !update_complete()) {
    // The delayed update failed (its error came out of this drain or an
    // earlier one): what it wrote goes in now, and nothing stays pending.
    if (absl::Status s = swap_in_update(); !s.ok()) {
      return annotate(drained, absl::StrCat("then swapping in what it wrote: ", s.message()));
    }
  }
  return drained;
}

absl::Status TrainingEngine::finish_pending_update() {
  STRATA_RETURN_IF_ERROR(drain_worker(), "the delayed update");
  return swap_in_update();
}

TrainingEngine::Counters TrainingEngine::counters() const {
  Counters c{.steps = steps_,
             .micro_batches = micro_batches_,
             .adam_step = adam_step_,
             .schedule_iteration = schedule_->iteration()};
  if (scaler_ != nullptr) c.scaler = scaler_->state();
  return c;
}

absl::StatusOr<StepStats> TrainingEngine::train_step() {
  STRATA_RETURN_IF_ERROR(partly_stepped_);
  unsaved_writes_ = 0;
  const Counters before = counters();
  StepStats st;
  absl::Status status = run_step(&st);
  if (status.ok()) return st;
  return undo_step(before, std::move(status));
}

absl::Status TrainingEngine::undo_step(const Counters& before, absl::Status status) {
  // The worker may still hold this step's jobs, which use the store; a
  // delayed update of the step before that succeeded stays pending.
  if (absl::Status s = drain_worker(); !s.ok() && s != status) {
    status = annotate(status, absl::StrCat("and the worker: ", s.message()));
  }
  // Every layer with copies is restored: stepped speculatively, stepped
  // again after the decision, or failed half way through.
  for (int l = 0; spec_ != nullptr && l < static_cast<int>(layers_.size()); ++l) {
    if (!spec_->has_copies(l)) continue;
    if (absl::Status s = restore_layer(l); !s.ok()) {
      status = annotate(status, absl::StrCat("and restoring layer ", l,
                                             " failed (its weights are "
                                             "left partly updated; load a checkpoint): ",
                                             s.message()));
    }
  }
  if (unsaved_writes_ > 0) {
    // Those params cannot be put back: stepping again would apply this
    // update to them twice, saving would store half a step.
    partly_stepped_ = absl::FailedPreconditionError(absl::StrCat(
        "step ", before.steps + 1, " failed after it had updated ", unsaved_writes_,
        " param(s) with no copy to undo them (", status.message(),
        "); the weights are partly stepped: load the last checkpoint (strata train --resume) "
        "to continue"));
    status = annotate(status, absl::StrCat("and ", unsaved_writes_,
                                           " param(s) were already updated with no copy to undo "
                                           "them; load the last checkpoint to continue"));
  }
  steps_ = before.steps;
  micro_batches_ = before.micro_batches;
  adam_step_ = before.adam_step;
  schedule_->set_iteration(before.schedule_iteration);
  if (scaler_ != nullptr) scaler_->restore(before.scaler);
  store_->end_step();
  return status;
}

// The decided step: skipped (speculative steps undone) or applied (kept,
// redone with the clip coefficient, stepped now, or queued as the delayed
// update); the Adam step and the schedule count an applied step.
absl::Status TrainingEngine::apply_step(bool apply, StepStats* out) {
  StepStats& st = *out;
  st.skipped = !apply;
  if (apply && config_.gradient_clipping > 0) {
    st.clip_coef = std::max(1.0, (st.grad_norm + 1e-6) / config_.gradient_clipping);
  }
  const int64_t adam_step = adam_step_ + (apply ? 1 : 0);
  const cpu_adam::StepArgs args{
      .lr = st.lr, .step = adam_step, .grad_scale = 1.0 / (st.loss_scale * st.clip_coef)};
  if (apply && dpu_) {
    // Delayed: the worker steps every layer while the next step's forward
    // and backward run on the params of the step before.
    std::fill(next_done_.begin(), next_done_.end(), 0);
    for (int l = 0; l < static_cast<int>(layers_.size()); ++l) {
      worker_->submit([this, l, hp = step_hp_, args, step = st.step] {
        return annotate(step_layer(l, hp, args, StepTarget::kParamNext),
                        absl::StrCat("the delayed update of step ", step));
      });
    }
    update_pending_ = true;
  } else {
    for (int l = 0; l < static_cast<int>(layers_.size()); ++l) {
      const Speculation::Plan plan = spec_ != nullptr ? spec_->plan(l, apply, st.clip_coef != 1.0)
                                     : apply          ? Speculation::Plan::kStep
                                                      : Speculation::Plan::kNothing;
      if (plan == Speculation::Plan::kRestore || plan == Speculation::Plan::kRestoreAndStep) {
        STRATA_RETURN_IF_ERROR(restore_layer(l), absl::StrCat("step ", st.step, ": rollback"));
        ++st.rolled_back_layers;
      }
      if (plan == Speculation::Plan::kStep || plan == Speculation::Plan::kRestoreAndStep) {
        if (before_decided_step_) {
          STRATA_RETURN_IF_ERROR(before_decided_step_(l), absl::StrCat("step ", st.step));
        }
        STRATA_RETURN_IF_ERROR(step_layer(l, step_hp_, args, StepTarget::kParam),
                               absl::StrCat("step ", st.step));
      }
    }
  }
  if (apply) {
    adam_step_ = adam_step;
    schedule_->advance();
  }
  return absl::OkStatus();
}

absl::Status TrainingEngine::run_step(StepStats* out) {
  const auto t0 = std::chrono::steady_clock::now();
  const offload::StoreStats before = store_->stats();
  StepStats& st = *out;
  st.step = ++steps_;
  st.loss_scale = scaler_ != nullptr ? scaler_->scale() : 1.0;
  st.lr = schedule_->lr();
  step_hp_ = hp_;
  if (const auto betas = schedule_->betas()) {
    // OneCycle's cycled momentum, as DeepSpeed sets the optimizer's betas.
    step_hp_.beta1 = (*betas)[0];
    step_hp_.beta2 = (*betas)[1];
  }
  store_->begin_step();
  overflow_.store(false);
  spec_lr_ = st.lr;
  spec_grad_scale_ = 1.0 / st.loss_scale;
  if (spec_ != nullptr) spec_->begin_step(last_host_seconds_, last_backward_seconds_);

  // DeepSpeed divides the loss by gradient_accumulation_steps, so grad32
  // holds loss_scale * (mean gradient over the micro-batches).
  const double loss_grad_scale = st.loss_scale / static_cast<double>(gas_);
  double loss_sum = 0;
  for (int64_t k = 0; k < gas_; ++k) {
    double loss = 0;
    STRATA_RETURN_IF_ERROR(
        run_micro_batch(micro_batches_++, loss_grad_scale, k == 0, k == gas_ - 1, &loss, &st),
        absl::StrCat("step ", st.step, ", micro-batch ", k));
    loss_sum += loss;
  }
  // Also finishes the delayed update of the previous step, which the worker
  // ran while this step's forward and backward did.
  STRATA_RETURN_IF_ERROR(drain_worker(), absl::StrCat("step ", st.step));
  st.loss = loss_sum / static_cast<double>(gas_);

  // The norm is summed in layer order in both modes, so they agree bit for bit.
  const int num_layers = static_cast<int>(layers_.size());
  bool nonfinite = overflow_.load();
  double sum_sq = 0;
  for (int l = 0; l < num_layers && !nonfinite; ++l) {
    sum_sq += grad_stats_[l].sum_squares;
    nonfinite = grad_stats_[l].nonfinite;
  }
  st.grad_norm =
      nonfinite ? std::numeric_limits<double>::infinity() : std::sqrt(sum_sq) / st.loss_scale;
  st.speculative_layers = spec_ != nullptr ? spec_->stepped_layers() : 0;

  bool apply = true;
  if (scaler_ != nullptr) {
    STRATA_ASSIGN_OR_RETURN(apply, scaler_->update(nonfinite), absl::StrCat("step ", st.step));
  } else if (nonfinite) {
    return absl::FailedPreconditionError(absl::StrCat(
        "step ", st.step, ": the gradients hold inf or NaN and ", std::string(dtype_name(dtype_)),
        " training has no loss scaler to skip the step; lower the learning rate, set "
        "gradient_clipping, or check the model's inputs"));
  }
  // Errors of the store's background write-backs surface before the step
  // changes anything.
  STRATA_RETURN_IF_ERROR(store_->background_error(), absl::StrCat("step ", st.step));
  // The previous step's delayed update goes in before this step's is queued
  // (it writes param_next again).
  STRATA_RETURN_IF_ERROR(swap_in_update(), absl::StrCat("step ", st.step));
  STRATA_RETURN_IF_ERROR(apply_step(apply, &st));

  // Totals since the last step's end: a delayed update run during this step
  // counts here.
  const int64_t grad_ns = grad_ns_.load(), optimizer_ns = optimizer_ns_.load();
  st.grad_seconds = (grad_ns - grad_ns_reported_) * 1e-9;
  last_host_seconds_ = (grad_ns - grad_ns_reported_ + optimizer_ns - optimizer_ns_reported_) * 1e-9;
  st.optimizer_seconds = (optimizer_ns - optimizer_ns_reported_) * 1e-9;
  grad_ns_reported_ = grad_ns;
  optimizer_ns_reported_ = optimizer_ns;
  const offload::StoreStats after = store_->stats();
  for (int t = 0; t < offload::kTierCount; ++t) {
    st.bytes_in[t] = after.tiers[t].bytes_in - before.tiers[t].bytes_in;
    st.bytes_out[t] = after.tiers[t].bytes_out - before.tiers[t].bytes_out;
  }
  store_->end_step();
  st.step_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return absl::OkStatus();
}

absl::StatusOr<std::vector<float>> TrainingEngine::read_fp32(int layer, int param, StateKind kind) {
  STRATA_RETURN_IF_ERROR(finish_pending_update());
  if (layer < 0 || layer >= static_cast<int>(layers_.size()) || param < 0 ||
      param >= static_cast<int>(layers_[layer].size())) {
    return absl::InvalidArgumentError(absl::StrCat("no param ", param, " in layer ", layer));
  }
  const ParamIds& p = layers_[layer][param];
  const offload::TensorId id = kind == StateKind::kMaster     ? p.master
                               : kind == StateKind::kExpAvg   ? p.exp_avg
                               : kind == StateKind::kExpAvgSq ? p.exp_avg_sq
                                                              : p.grad32;
  std::vector<float> out(p.numel);
  Pin pin(store_.get(), id, opt_tier_);
  STRATA_ASSIGN_OR_RETURN(TensorView v, pin.acquire(Access::kRead));
  STRATA_RETURN_IF_ERROR(copy_out(v, opt_tier_, out.data(), p.numel * 4));
  STRATA_RETURN_IF_ERROR(pin.release(false));
  return out;
}

absl::StatusOr<std::vector<float>> TrainingEngine::read_param(int layer, int param) {
  STRATA_RETURN_IF_ERROR(finish_pending_update());
  if (layer < 0 || layer >= static_cast<int>(layers_.size()) || param < 0 ||
      param >= static_cast<int>(layers_[layer].size())) {
    return absl::InvalidArgumentError(absl::StrCat("no param ", param, " in layer ", layer));
  }
  const ParamIds& p = layers_[layer][param];
  const Tier home = param_tier(p);
  std::vector<uint8_t> raw(p.numel * dtype_size(dtype_));
  Pin pin(store_.get(), p.param, home);
  STRATA_ASSIGN_OR_RETURN(TensorView v, pin.acquire(Access::kRead));
  STRATA_RETURN_IF_ERROR(copy_out(v, home, raw.data(), raw.size()));
  STRATA_RETURN_IF_ERROR(pin.release(false));
  std::vector<float> out(p.numel);
  if (dtype_ == DType::kFloat32) std::memcpy(out.data(), raw.data(), raw.size());
  if (dtype_ == DType::kFloat16)
    convert_fp16_to_fp32(reinterpret_cast<const uint16_t*>(raw.data()), out.data(), p.numel);
  if (dtype_ == DType::kBFloat16)
    convert_bf16_to_fp32(reinterpret_cast<const uint16_t*>(raw.data()), out.data(), p.numel);
  return out;
}

}  // namespace strata::engine
