#include "engine/training_engine.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/log.h"
#include "core/status.h"
#include "engine/checkpoint_format.h"
#include "offload/pin.h"

namespace strata::engine {
namespace {

using offload::Access;
using offload::Pin;
using offload::TensorView;
using offload::Tier;

}  // namespace

absl::StatusOr<std::unique_ptr<TrainingEngine>> TrainingEngine::create(
    const config::DsConfig& config, Model* model, gpu::Device* device, EngineOptions options) {
  std::unique_ptr<TrainingEngine> engine(new TrainingEngine());
  STRATA_RETURN_IF_ERROR(engine->build(config, model, device, std::move(options)),
                         "creating the training engine");
  return engine;
}

TrainingEngine::~TrainingEngine() {
  if (opt_ != nullptr) {
    if (absl::Status s = opt_->wait_for_save(); !s.ok()) {
      log::get("engine")->error("asynchronous checkpoint save failed: {}",
                                std::string(s.message()));
    }
    // Its worker's jobs use the store, not the scratch; the scratch goes
    // before the stream the optimizer destroys.
    if (flags_device_ != nullptr) device_->free(flags_device_);
  }
  opt_.reset();
}

absl::Status TrainingEngine::build(const config::DsConfig& config, Model* model,
                                   gpu::Device* device, EngineOptions options) {
  if (model == nullptr || device == nullptr) {
    return absl::InvalidArgumentError("the engine needs a model and a device");
  }
  model_ = model;
  device_ = device;
  gas_ = std::max<int64_t>(1, config.gradient_accumulation_steps);
  grads_during_backward_ =
      config.strata.overlap == config::OverlapMode::kOverlap || config.strata.delayed_param_update;
  if (!options.use_schedule) {
    return absl::InvalidArgumentError(
        "EngineOptions::use_schedule must be true: the engine's layers follow the LR schedule");
  }
  STRATA_ASSIGN_OR_RETURN(opt_, OffloadOptimizer::create(config, device, std::move(options)));
  dtype_ = opt_->compute_dtype();
  has_scaler_ = opt_->loss_scaler() != nullptr;
  const int group = opt_->add_group(opt_->default_group());
  const int num_layers = model->num_layers();
  layers_.assign(std::max(num_layers, 0), {});
  size_t max_layer_params = 0;
  for (int l = 0; l < num_layers; ++l) {
    for (const ParamSpec& p : model->layer_params(l)) {
      STRATA_ASSIGN_OR_RETURN(const ParamHandle h,
                              opt_->add_param(ParamDesc{.name = p.name,
                                                        .numel = p.numel,
                                                        .bucket = l,
                                                        .group = group,
                                                        .binding = ParamBinding::kStore}));
      layers_[l].push_back(h);
    }
    max_layer_params = std::max(max_layer_params, layers_[l].size());
  }
  STRATA_RETURN_IF_ERROR(opt_->finalize());
  if (has_scaler_) {
    STRATA_ASSIGN_OR_RETURN(flags_device_, device_->allocate(opt_->placement().device_scratch),
                            "allocating the device scratch of the overflow check");
    flag_sums_.assign(max_layer_params, 0.0f);
    flag_nonfinite_.assign(max_layer_params, 0);
  }
  return initialize_params();
}

absl::Status TrainingEngine::initialize_params() {
  for (int l = 0; l < static_cast<int>(layers_.size()); ++l) {
    for (int i = 0; i < static_cast<int>(layers_[l].size()); ++i) {
      std::vector<float> init(opt_->param(layers_[l][i]).numel);
      model_->init_param(l, i, init.data());
      STRATA_RETURN_IF_ERROR(opt_->set_value(layers_[l][i], init.data()));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<StepStats> TrainingEngine::train_step() {
  STRATA_RETURN_IF_ERROR(opt_->partly_stepped());
  const auto t0 = std::chrono::steady_clock::now();
  const gpu::SyncCounters syncs0 = device_->sync_counters();
  StepStats st;
  st.step = opt_->steps() + 1;
  STRATA_ASSIGN_OR_RETURN(st.loss_scale, opt_->begin_step());
  st.lr = opt_->lr_schedule().lr();

  // DeepSpeed divides the loss by gradient_accumulation_steps, so grad32
  // holds loss_scale * (mean gradient over the micro-batches).
  const double loss_grad_scale = st.loss_scale / static_cast<double>(gas_);
  const int64_t micro0 = opt_->micro_batches();
  double loss_sum = 0;
  for (int64_t k = 0; k < gas_; ++k) {
    double loss = 0;
    if (absl::Status s =
            run_micro_batch(micro0 + k, loss_grad_scale, k == 0, k == gas_ - 1, &loss, &st);
        !s.ok()) {
      return opt_->abort_step(annotate(s, absl::StrCat("step ", st.step, ", micro-batch ", k)));
    }
    loss_sum += loss;
  }
  st.loss = loss_sum / static_cast<double>(gas_);
  STRATA_ASSIGN_OR_RETURN(const OptimizerStepResult r, opt_->finish_step());
  st.skipped = r.skipped;
  st.grad_norm = r.grad_norm;
  st.clip_coef = r.clip_coef;
  st.lr = r.lr;
  st.speculative_layers = r.speculative_buckets;
  st.rolled_back_layers = r.rolled_back_buckets;
  st.grad_seconds = r.grad_seconds;
  st.optimizer_seconds = r.optimizer_seconds;
  st.optimizer_bytes = r.optimizer_bytes;
  st.optimizer_gb_per_s = r.optimizer_seconds > 0
                              ? static_cast<double>(r.optimizer_bytes) / r.optimizer_seconds / 1e9
                              : 0;
  st.bytes_in = r.bytes_in;
  st.bytes_out = r.bytes_out;
  const gpu::SyncCounters syncs = device_->sync_counters();
  st.host_syncs = static_cast<int64_t>(syncs.host_syncs - syncs0.host_syncs);
  st.device_syncs = static_cast<int64_t>(syncs.device_syncs - syncs0.device_syncs);
  st.device_allocations = static_cast<int64_t>(syncs.allocations - syncs0.allocations);
  st.step_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return st;
}

absl::Status TrainingEngine::run_layer(int l, bool backward, int64_t micro, double loss_grad_scale,
                                       StepStats* st) {
  offload::TieredStore* store = opt_->store();
  const std::vector<ParamHandle>& ps = layers_[l];
  LayerContext ctx{.device = device_,
                   .stream = opt_->stream(),
                   .dtype = dtype_,
                   .micro_batch = micro,
                   .loss_grad_scale = loss_grad_scale};
  std::vector<Pin> pins;
  pins.reserve(2 * ps.size());
  for (ParamHandle h : ps) {
    pins.emplace_back(store, opt_->param_id(h), Tier::kDevice);
    STRATA_ASSIGN_OR_RETURN(TensorView v, pins.back().acquire(Access::kRead));
    ctx.params.push_back(v.data);
  }
  if (backward) {
    for (ParamHandle h : ps) {
      pins.emplace_back(store, opt_->grad_id(h), Tier::kDevice);
      STRATA_ASSIGN_OR_RETURN(TensorView v, pins.back().acquire(Access::kWrite));
      ctx.grads.push_back(v.data);
    }
  }
  const char* what = backward ? "backward" : "forward";
  STRATA_RETURN_IF_ERROR(backward ? model_->backward(l, ctx) : model_->forward(l, ctx),
                         absl::StrCat(what, " of layer ", l));
  if (backward && has_scaler_ && !opt_->overflowed()) {
    STRATA_RETURN_IF_ERROR(check_overflow(l, ctx));
  }
  // The layer's buffers are unpinned only once its work is done.
  STRATA_RETURN_IF_ERROR(device_->synchronize_stream(opt_->stream()),
                         absl::StrCat(what, " of layer ", l));
  for (size_t i = 0; i < pins.size(); ++i) {
    STRATA_RETURN_IF_ERROR(pins[i].release(/*dirty=*/i >= ps.size()));
  }
  if (backward && has_scaler_ && !opt_->overflowed()) {
    for (size_t i = 0; i < ps.size(); ++i) {
      if (flag_nonfinite_[i] != 0) {
        opt_->report_overflow();
        st->overflow_layer = l;
        st->overflow_param = opt_->param(ps[i]).name;
        log::get("engine")->warn(
            "step {}: fp16 gradient overflow first seen in layer {} ({}), micro-batch {}, at "
            "loss scale {}; the step is skipped (if this repeats, bf16 has no overflow)",
            st->step, l, st->overflow_param, micro, st->loss_scale);
        break;
      }
    }
  }
  if (backward && grads_during_backward_ && !opt_->overflowed() && l < opt_->num_buckets()) {
    STRATA_RETURN_IF_ERROR(opt_->grad_ready(l));
  }
  return absl::OkStatus();
}

absl::Status TrainingEngine::run_micro_batch(int64_t micro, double loss_grad_scale, bool first,
                                             bool last, double* loss, StepStats* st) {
  const int num_layers = static_cast<int>(layers_.size());
  for (int l = 0; l < num_layers; ++l) {
    STRATA_RETURN_IF_ERROR(run_layer(l, false, micro, loss_grad_scale, st));
  }
  *loss = model_->loss();
  // The worker may still be reading the previous micro-batch's gradients
  // (a delayed update it may be running touches no gradient on the device).
  if (!first) STRATA_RETURN_IF_ERROR(opt_->wait_grads(), "gradient worker");
  const auto backward_start = std::chrono::steady_clock::now();
  for (int l = num_layers - 1; l >= 0; --l) {
    STRATA_RETURN_IF_ERROR(run_layer(l, true, micro, loss_grad_scale, st));
  }
  if (last) {
    opt_->set_backward_seconds(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - backward_start).count());
  }
  // sync: DeepSpeed's order, every gradient after the whole backward.
  if (!grads_during_backward_) {
    for (int l = 0; l < opt_->num_buckets() && !opt_->overflowed(); ++l) {
      STRATA_RETURN_IF_ERROR(opt_->grad_ready(l));
    }
  }
  return absl::OkStatus();
}

absl::Status TrainingEngine::check_overflow(int layer, const LayerContext& ctx) {
  const std::vector<ParamHandle>& ps = layers_[layer];
  auto* sums = static_cast<float*>(flags_device_);
  auto* flags = reinterpret_cast<int32_t*>(sums + flag_sums_.size());
  std::fill(flag_nonfinite_.begin(), flag_nonfinite_.end(), 0);
  for (size_t i = 0; i < ps.size(); ++i) {
    STRATA_RETURN_IF_ERROR(device_->squared_norm(ctx.grads[i], dtype_, opt_->param(ps[i]).numel,
                                                 sums + i, flags + i, opt_->stream()));
  }
  // Only the flags come back: a few bytes per param, in stream order.
  return device_->copy_to_host(flag_nonfinite_.data(), flags, ps.size() * sizeof(int32_t),
                               opt_->stream());
}

absl::StatusOr<double> TrainingEngine::evaluate(int64_t batches) {
  if (batches < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("evaluate: batches must be at least 1 (got ", batches, ")"));
  }
  offload::TieredStore* store = opt_->store();
  double loss_sum = 0;
  for (int64_t k = 0; k < batches; ++k) {
    for (int l = 0; l < static_cast<int>(layers_.size()); ++l) {
      const std::vector<ParamHandle>& ps = layers_[l];
      LayerContext ctx{.device = device_,
                       .stream = opt_->stream(),
                       .dtype = dtype_,
                       .micro_batch = k,
                       .loss_grad_scale = 1.0,
                       .training = false};
      std::vector<Pin> pins;
      pins.reserve(ps.size());
      for (ParamHandle h : ps) {
        pins.emplace_back(store, opt_->param_id(h), Tier::kDevice);
        STRATA_ASSIGN_OR_RETURN(TensorView v, pins.back().acquire(Access::kRead));
        ctx.params.push_back(v.data);
      }
      STRATA_RETURN_IF_ERROR(model_->forward(l, ctx),
                             absl::StrCat("evaluate: batch ", k, ", forward of layer ", l));
      STRATA_RETURN_IF_ERROR(device_->synchronize_stream(opt_->stream()),
                             absl::StrCat("evaluate: batch ", k, ", forward of layer ", l));
      for (Pin& pin : pins) STRATA_RETURN_IF_ERROR(pin.release(/*dirty=*/false));
    }
    loss_sum += model_->loss();
  }
  return loss_sum / static_cast<double>(batches);
}

absl::StatusOr<ParamHandle> TrainingEngine::handle(int layer, int param) const {
  if (layer < 0 || layer >= static_cast<int>(layers_.size()) || param < 0 ||
      param >= static_cast<int>(layers_[layer].size())) {
    return absl::InvalidArgumentError(absl::StrCat("no param ", param, " in layer ", layer));
  }
  return layers_[layer][param];
}

absl::StatusOr<std::vector<ParamHandle>> TrainingEngine::layer_params(int layer) const {
  if (layer < 0 || layer >= static_cast<int>(layers_.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat("no layer ", layer, " (the model has ", layers_.size(), ")"));
  }
  return layers_[layer];
}

absl::StatusOr<std::vector<float>> TrainingEngine::read_fp32(int layer, int param, StateKind kind) {
  STRATA_ASSIGN_OR_RETURN(const ParamHandle h, handle(layer, param));
  return opt_->read_state(h, kind);
}

absl::StatusOr<std::vector<float>> TrainingEngine::read_param(int layer, int param) {
  STRATA_ASSIGN_OR_RETURN(const ParamHandle h, handle(layer, param));
  return opt_->read_param(h);
}

absl::Status TrainingEngine::save_checkpoint(const std::string& dir) {
  return opt_->save_state(dir, user_meta_);
}

absl::Status TrainingEngine::save_checkpoint_async(const std::string& dir) {
  return opt_->save_state_async(dir, user_meta_);
}

absl::Status TrainingEngine::wait_for_checkpoint() { return opt_->wait_for_save(); }

absl::Status TrainingEngine::load_checkpoint(const std::string& dir, CheckpointUse use) {
  return opt_->load_state(dir, use == CheckpointUse::kWeights);
}

absl::StatusOr<nlohmann::json> TrainingEngine::read_checkpoint_user_metadata(
    const std::string& dir) {
  // Across ranks every shard records the same (the reader checks); rank 0's.
  STRATA_ASSIGN_OR_RETURN(CheckpointShards files, open_checkpoint_shards(dir));
  return std::move(files.whole.user);
}

}  // namespace strata::engine
