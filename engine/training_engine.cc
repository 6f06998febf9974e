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
#include "gpu/sim_device.h"

namespace strata::engine {
namespace {

using offload::Access;
using offload::TensorRole;
using offload::TensorView;
using offload::Tier;

constexpr uint64_t kPage = 4096;
uint64_t padded(uint64_t bytes) { return (bytes + kPage - 1) & ~(kPage - 1); }

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

// dst[i] (+)= float(src[i]) for a compute-dtype gradient.
void accumulate_into(float* dst, const void* src, DType dtype, uint64_t n, bool first) {
  constexpr uint64_t kChunk = 4096;
  float tmp[kChunk];
  for (uint64_t off = 0; off < n; off += kChunk) {
    const uint64_t len = std::min(kChunk, n - off);
    const float* f = tmp;
    switch (dtype) {
      case DType::kFloat32:
        f = static_cast<const float*>(src) + off;
        break;
      case DType::kFloat16:
        convert_fp16_to_fp32(static_cast<const uint16_t*>(src) + off, tmp, len);
        break;
      case DType::kBFloat16:
        convert_bf16_to_fp32(static_cast<const uint16_t*>(src) + off, tmp, len);
        break;
    }
    float* d = dst + off;
    if (first) {
      std::memcpy(d, f, len * sizeof(float));
    } else {
      for (uint64_t i = 0; i < len; ++i) d[i] += f[i];
    }
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

  // What this engine runs; each refusal names the key to change.
  if (config.world_size != 1) {
    return absl::UnimplementedError(absl::StrCat(
        "world size ", config.world_size, ": the engine runs one process only; launch with 1"));
  }
  if (config.zero.stage > 2) {
    return absl::UnimplementedError(
        "zero_optimization.stage 3 is not supported by the engine yet; use stage 1 or 2 "
        "(with offload_optimizer to cpu or nvme)");
  }
  if (config.strata.delayed_param_update) {
    return absl::UnimplementedError(
        "strata.delayed_param_update is not implemented yet; set it to false");
  }
  if (config.zero.offload_optimizer.ratio < 1.0) {
    return absl::UnimplementedError(absl::StrCat(
        "zero_optimization.offload_optimizer.ratio ", config.zero.offload_optimizer.ratio,
        ": a partial CPU step is not implemented; set it to 1"));
  }
  if (config.strata.overlap == config::OverlapMode::kOverlap) {
    log::get("engine")->warn(
        "strata.overlap \"overlap\" is not implemented yet; running \"sync\" (DeepSpeed's order)");
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
  if (options.lr_schedule != nullptr) {
    schedule_ = std::move(options.lr_schedule);
  } else {
    STRATA_ASSIGN_OR_RETURN(schedule_, make_lr_schedule(config.scheduler, config.optimizer.lr));
  }

  const config::OffloadDevice where = config.zero.offload_optimizer.device;
  const bool offload = where != config::OffloadDevice::kNone;
  opt_tier_ = offload ? Tier::kTierHost : Tier::kTierDevice;
  if (!offload) {
    // The optimizer then reads and writes device memory from the host.
    auto* sim = dynamic_cast<gpu::SimDevice*>(device);
    if (sim == nullptr || !sim->options().move_data) {
      return absl::UnimplementedError(absl::StrCat(
          "zero_optimization.offload_optimizer.device \"none\" needs a device-side optimizer, "
          "which strata does not have yet (device ",
          device->name(), "); set offload_optimizer.device to \"cpu\" or \"nvme\""));
    }
  }
  const Tier state_home = where == config::OffloadDevice::kNvme ? Tier::kTierNvme
                          : offload                             ? Tier::kTierHost
                                                                : Tier::kTierDevice;
  const Tier compute_home = offload ? Tier::kTierHost : Tier::kTierDevice;

  // Sizes per tier, checked before anything is allocated.
  const uint64_t esize = dtype_size(dtype_);
  uint64_t device_homed = 0, host_homed = 0, nvme_total = 0, largest_layer_nvme = 0;
  uint64_t largest_layer_device = 0;
  int largest_layer = 0;
  const int num_layers = model->num_layers();
  if (num_layers <= 0) return absl::InvalidArgumentError("the model has no layers");
  for (int l = 0; l < num_layers; ++l) {
    uint64_t layer_device = 0, layer_nvme = 0;
    for (const ParamSpec& p : model->layer_params(l)) {
      const uint64_t b16 = p.numel * esize, b32 = p.numel * 4;
      layer_device += 2 * b16;  // param + grad, both on the device during backward
      const uint64_t states = 3 * (state_home == Tier::kTierDevice ? b32 : padded(b32));
      if (!offload) {
        device_homed += 2 * b16 + 4 * b32;  // param, grad, grad32, master, m, v
      } else {
        host_homed += 2 * padded(b16) + padded(b32);
        if (state_home == Tier::kTierHost) host_homed += states;
        if (state_home == Tier::kTierNvme) layer_nvme += states;
      }
    }
    if (layer_device > largest_layer_device) {
      largest_layer_device = layer_device;
      largest_layer = l;
    }
    nvme_total += layer_nvme;
    largest_layer_nvme = std::max(largest_layer_nvme, layer_nvme);
  }
  uint64_t device_budget = options.device_budget_bytes;
  if (device_budget == 0) {
    const gpu::DeviceMemoryStats ds = device->stats();
    device_budget = ds.capacity_bytes > ds.used_bytes ? ds.capacity_bytes - ds.used_bytes : 0;
  }
  if (largest_layer_device > device_budget) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "layer ", largest_layer, " needs ", largest_layer_device, " bytes on the device for its ",
        std::string(dtype_name(dtype_)), " params and grads, more than the device budget of ",
        device_budget,
        " bytes; raise the device budget, use a device with more memory or split the layer"));
  }
  if (device_homed > device_budget) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "without optimizer offload every param, grad and optimizer state lives on the device: ",
        device_homed, " bytes, more than the device budget of ", device_budget,
        " bytes; set zero_optimization.offload_optimizer.device to \"cpu\" or \"nvme\""));
  }
  uint64_t host_budget = options.host_budget_bytes;
  if (host_budget == 0 && offload) {
    // An NVMe cache of two layers' states, or the prefetch window if larger.
    const uint64_t window = static_cast<uint64_t>(config.strata.prefetch_window_bytes);
    host_budget = host_homed + std::min(nvme_total, std::max(2 * largest_layer_nvme, window));
  }
  if (offload && host_budget < host_homed + largest_layer_nvme) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the host budget of ", host_budget, " bytes cannot hold the host-homed tensors (",
        host_homed, " bytes) plus one layer's optimizer states from NVMe (", largest_layer_nvme,
        " bytes); raise the host budget"));
  }

  offload::TieredStore::Options so;
  so.device = device;
  so.device_budget_bytes = device_budget;
  so.host_budget_bytes = offload ? host_budget : 0;
  so.pin_device = config.zero.offload_optimizer.pin_memory ? device : nullptr;
  so.prefetch_window_bytes = static_cast<uint64_t>(config.strata.prefetch_window_bytes);
  if (state_home == Tier::kTierNvme) {
    std::vector<std::string> dirs = config.zero.offload_optimizer.nvme_paths;
    if (dirs.empty()) dirs = config.strata.nvme_paths;
    if (dirs.empty()) {
      return absl::InvalidArgumentError(
          "zero_optimization.offload_optimizer.device is \"nvme\" but no nvme_path is set; set "
          "zero_optimization.offload_optimizer.nvme_path to a directory on an NVMe drive");
    }
    for (const std::string& d : dirs) {
      STRATA_RETURN_IF_ERROR(check_nvme_dir(d));
      swap_files_.push_back(
          (std::filesystem::path(d) / absl::StrCat("strata_optimizer_", ::getpid(), ".swp"))
              .string());
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
  STRATA_ASSIGN_OR_RETURN(store_, offload::TieredStore::create(so));

  layers_.resize(num_layers);
  for (int l = 0; l < num_layers; ++l) {
    for (const ParamSpec& p : model->layer_params(l)) {
      ParamIds ids;
      ids.name = p.name;
      ids.numel = p.numel;
      const std::string base = absl::StrCat("layer", l, ".", p.name);
      auto reg = [&](const char* suffix, DType dt, TensorRole role,
                     Tier home) -> absl::StatusOr<offload::TensorId> {
        return store_->register_tensor({absl::StrCat(base, ".", suffix), p.numel, dt, role, home});
      };
      STRATA_ASSIGN_OR_RETURN(ids.param,
                              reg("param", dtype_, TensorRole::kRoleParam16, compute_home));
      STRATA_ASSIGN_OR_RETURN(ids.grad, reg("grad", dtype_, TensorRole::kRoleGrad, compute_home));
      STRATA_ASSIGN_OR_RETURN(ids.grad32, reg("grad32", DType::kFloat32, TensorRole::kRoleGrad,
                                              offload ? Tier::kTierHost : Tier::kTierDevice));
      STRATA_ASSIGN_OR_RETURN(
          ids.master, reg("master", DType::kFloat32, TensorRole::kRoleMaster32, state_home));
      STRATA_ASSIGN_OR_RETURN(ids.exp_avg,
                              reg("exp_avg", DType::kFloat32, TensorRole::kRoleExpAvg, state_home));
      STRATA_ASSIGN_OR_RETURN(ids.exp_avg_sq, reg("exp_avg_sq", DType::kFloat32,
                                                  TensorRole::kRoleExpAvgSq, state_home));
      layers_[l].push_back(std::move(ids));
    }
  }
  STRATA_RETURN_IF_ERROR(store_->finalize());
  STRATA_ASSIGN_OR_RETURN(stream_, device->create_stream());
  have_stream_ = true;
  return initialize_params();
}

absl::Status TrainingEngine::copy_in(TensorView view, Tier tier, const void* src, uint64_t bytes) {
  if (tier != Tier::kTierDevice) {
    std::memcpy(view.data, src, bytes);
    return absl::OkStatus();
  }
  STRATA_RETURN_IF_ERROR(device_->copy_to_device(view.data, src, bytes, stream_));
  return device_->synchronize_stream(stream_);
}

absl::Status TrainingEngine::copy_out(TensorView view, Tier tier, void* dst, uint64_t bytes) {
  if (tier != Tier::kTierDevice) {
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
      const Tier param_tier = store_->spec(p.param).home;
      for (const Init& x :
           {Init{p.param, compute, p.numel * dtype_size(dtype_)},
            Init{p.master, init.data(), p.numel * 4}, Init{p.exp_avg, zeros.data(), p.numel * 4},
            Init{p.exp_avg_sq, zeros.data(), p.numel * 4}}) {
        const Tier tier = x.id == p.param ? param_tier : opt_tier_;
        Pin pin(store_.get(), x.id, tier);
        STRATA_ASSIGN_OR_RETURN(TensorView v, pin.acquire(Access::kAccessWrite));
        STRATA_RETURN_IF_ERROR(copy_in(v, tier, x.src, x.bytes));
        STRATA_RETURN_IF_ERROR(pin.release(/*dirty=*/true));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status TrainingEngine::run_micro_batch(int64_t micro, double loss_grad_scale, double* loss) {
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
      pins.emplace_back(store_.get(), p.param, Tier::kTierDevice);
      STRATA_ASSIGN_OR_RETURN(TensorView v, pins.back().acquire(Access::kAccessRead));
      ctx.params.push_back(v.data);
    }
    if (backward) {
      for (const ParamIds& p : ps) {
        pins.emplace_back(store_.get(), p.grad, Tier::kTierDevice);
        STRATA_ASSIGN_OR_RETURN(TensorView v, pins.back().acquire(Access::kAccessWrite));
        ctx.grads.push_back(v.data);
      }
    }
    STRATA_RETURN_IF_ERROR(backward ? model_->backward(l, ctx) : model_->forward(l, ctx),
                           absl::StrCat(backward ? "backward" : "forward", " of layer ", l));
    // sync mode: the layer's buffers are unpinned only once its work is done.
    STRATA_RETURN_IF_ERROR(device_->synchronize_stream(stream_),
                           absl::StrCat(backward ? "backward" : "forward", " of layer ", l));
    for (size_t i = 0; i < pins.size(); ++i) {
      STRATA_RETURN_IF_ERROR(pins[i].release(/*dirty=*/i >= ps.size()));
    }
    return absl::OkStatus();
  };
  for (int l = 0; l < num_layers; ++l) STRATA_RETURN_IF_ERROR(run_layer(l, false));
  *loss = model_->loss();
  for (int l = num_layers - 1; l >= 0; --l) STRATA_RETURN_IF_ERROR(run_layer(l, true));
  return absl::OkStatus();
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
        pins.emplace_back(store_.get(), p.param, Tier::kTierDevice);
        STRATA_ASSIGN_OR_RETURN(TensorView v, pins.back().acquire(Access::kAccessRead));
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

absl::Status TrainingEngine::accumulate(bool first) {
  // Reading the grad on the host makes the store write the device copy back (D2H).
  for (const std::vector<ParamIds>& ps : layers_) {
    for (const ParamIds& p : ps) {
      Pin g(store_.get(), p.grad, opt_tier_);
      Pin acc(store_.get(), p.grad32, opt_tier_);
      STRATA_ASSIGN_OR_RETURN(TensorView gv, g.acquire(Access::kAccessRead));
      STRATA_ASSIGN_OR_RETURN(TensorView av,
                              acc.acquire(first ? Access::kAccessWrite : Access::kAccessReadWrite));
      accumulate_into(static_cast<float*>(av.data), gv.data, dtype_, p.numel, first);
      STRATA_RETURN_IF_ERROR(g.release(false));
      STRATA_RETURN_IF_ERROR(acc.release(true));
    }
  }
  return absl::OkStatus();
}

absl::Status TrainingEngine::apply_optimizer(double lr, double grad_scale) {
  const cpu_adam::StepArgs args{.lr = lr, .step = adam_step_, .grad_scale = grad_scale};
  for (const std::vector<ParamIds>& ps : layers_) {
    for (const ParamIds& p : ps) {
      Pin grad(store_.get(), p.grad32, opt_tier_);
      Pin master(store_.get(), p.master, opt_tier_);
      Pin m(store_.get(), p.exp_avg, opt_tier_);
      Pin v(store_.get(), p.exp_avg_sq, opt_tier_);
      Pin out(store_.get(), p.param, opt_tier_);
      STRATA_ASSIGN_OR_RETURN(TensorView gv, grad.acquire(Access::kAccessRead));
      STRATA_ASSIGN_OR_RETURN(TensorView pv, master.acquire(Access::kAccessReadWrite));
      STRATA_ASSIGN_OR_RETURN(TensorView mv, m.acquire(Access::kAccessReadWrite));
      STRATA_ASSIGN_OR_RETURN(TensorView vv, v.acquire(Access::kAccessReadWrite));
      STRATA_ASSIGN_OR_RETURN(TensorView ov, out.acquire(Access::kAccessWrite));
      const bool fp32 = dtype_ == DType::kFloat32;
      const cpu_adam::Buffers b{.n = p.numel,
                                .param = static_cast<float*>(pv.data),
                                .exp_avg = static_cast<float*>(mv.data),
                                .exp_avg_sq = static_cast<float*>(vv.data),
                                .grad = gv.data,
                                .grad_dtype = DType::kFloat32,
                                .param_out = fp32 ? nullptr : ov.data,
                                .out_dtype = fp32 ? DType::kFloat16 : dtype_};
      STRATA_RETURN_IF_ERROR(cpu_adam::optimizer_step(hp_, args, b, exec_),
                             absl::StrCat("optimizer step of ", store_->spec(p.master).name));
      if (fp32) std::memcpy(ov.data, pv.data, p.numel * sizeof(float));
      STRATA_RETURN_IF_ERROR(grad.release(false));
      STRATA_RETURN_IF_ERROR(master.release(true));
      STRATA_RETURN_IF_ERROR(m.release(true));
      STRATA_RETURN_IF_ERROR(v.release(true));
      // Dirtying the host copy drops the stale device copy; the next forward
      // loads the new one (H2D).
      STRATA_RETURN_IF_ERROR(out.release(true));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<StepStats> TrainingEngine::train_step() {
  const auto t0 = std::chrono::steady_clock::now();
  const offload::StoreStats before = store_->stats();
  StepStats st;
  st.step = ++steps_;
  st.loss_scale = scaler_ != nullptr ? scaler_->scale() : 1.0;
  st.lr = schedule_->lr();
  store_->begin_step();
  struct EndStep {
    offload::TieredStore* s;
    ~EndStep() { s->end_step(); }
  } end_step{store_.get()};

  // DeepSpeed divides the loss by gradient_accumulation_steps, so grad32
  // holds loss_scale * (mean gradient over the micro-batches).
  const double loss_grad_scale = st.loss_scale / static_cast<double>(gas_);
  double loss_sum = 0;
  for (int64_t k = 0; k < gas_; ++k) {
    double loss = 0;
    STRATA_RETURN_IF_ERROR(run_micro_batch(micro_batches_++, loss_grad_scale, &loss),
                           absl::StrCat("step ", st.step, ", micro-batch ", k));
    loss_sum += loss;
    STRATA_RETURN_IF_ERROR(accumulate(k == 0));
  }
  st.loss = loss_sum / static_cast<double>(gas_);

  double sum_sq = 0;
  bool nonfinite = false;
  for (const std::vector<ParamIds>& ps : layers_) {
    for (const ParamIds& p : ps) {
      Pin acc(store_.get(), p.grad32, opt_tier_);
      STRATA_ASSIGN_OR_RETURN(TensorView av, acc.acquire(Access::kAccessRead));
      STRATA_ASSIGN_OR_RETURN(cpu_adam::GradStats gs,
                              cpu_adam::grad_stats(av.data, DType::kFloat32, p.numel, exec_));
      STRATA_RETURN_IF_ERROR(acc.release(false));
      sum_sq += gs.sum_squares;
      nonfinite = nonfinite || gs.nonfinite;
    }
  }
  st.grad_norm =
      nonfinite ? std::numeric_limits<double>::infinity() : std::sqrt(sum_sq) / st.loss_scale;

  bool apply = true;
  if (scaler_ != nullptr) {
    STRATA_ASSIGN_OR_RETURN(apply, scaler_->update(nonfinite), absl::StrCat("step ", st.step));
  } else if (nonfinite) {
    return absl::FailedPreconditionError(absl::StrCat(
        "step ", st.step, ": the gradients hold inf or NaN and ", std::string(dtype_name(dtype_)),
        " training has no loss scaler to skip the step; lower the learning rate, set "
        "gradient_clipping, or check the model's inputs"));
  }
  st.skipped = !apply;
  if (apply) {
    if (config_.gradient_clipping > 0) {
      st.clip_coef = std::max(1.0, (st.grad_norm + 1e-6) / config_.gradient_clipping);
    }
    ++adam_step_;
    STRATA_RETURN_IF_ERROR(apply_optimizer(st.lr, 1.0 / (st.loss_scale * st.clip_coef)),
                           absl::StrCat("step ", st.step));
    schedule_->advance();
  }
  STRATA_RETURN_IF_ERROR(store_->background_error());

  const offload::StoreStats after = store_->stats();
  for (int t = 0; t < offload::kTierCount; ++t) {
    st.bytes_in[t] = after.tiers[t].bytes_in - before.tiers[t].bytes_in;
    st.bytes_out[t] = after.tiers[t].bytes_out - before.tiers[t].bytes_out;
  }
  st.step_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return st;
}

absl::StatusOr<std::vector<float>> TrainingEngine::read_fp32(int layer, int param, StateKind kind) {
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
  STRATA_ASSIGN_OR_RETURN(TensorView v, pin.acquire(Access::kAccessRead));
  STRATA_RETURN_IF_ERROR(copy_out(v, opt_tier_, out.data(), p.numel * 4));
  STRATA_RETURN_IF_ERROR(pin.release(false));
  return out;
}

absl::StatusOr<std::vector<float>> TrainingEngine::read_param(int layer, int param) {
  if (layer < 0 || layer >= static_cast<int>(layers_.size()) || param < 0 ||
      param >= static_cast<int>(layers_[layer].size())) {
    return absl::InvalidArgumentError(absl::StrCat("no param ", param, " in layer ", layer));
  }
  const ParamIds& p = layers_[layer][param];
  const Tier home = store_->spec(p.param).home;
  std::vector<uint8_t> raw(p.numel * dtype_size(dtype_));
  Pin pin(store_.get(), p.param, home);
  STRATA_ASSIGN_OR_RETURN(TensorView v, pin.acquire(Access::kAccessRead));
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
