#include "engine/training_engine.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "core/log.h"
#include "core/status.h"
#include "engine/checkpoint_format.h"
#include "offload/pin.h"

namespace strata::engine {
namespace {

using offload::Access;
using offload::Pin;
using offload::StreamPins;
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
  if (step_ != nullptr) {
    if (absl::Status s = step_->wait_for_save(); !s.ok()) {
      log::get("engine")->error("asynchronous checkpoint save failed: {}",
                                std::string(s.message()));
    }
    // The device's copies into and out of the remote's memory end first.
    if (remote_ != nullptr) device_->synchronize_stream(stream_).IgnoreError();
    // Its worker's jobs use the store, not the scratch; the scratch goes
    // before the stream the optimizer destroys.
    if (flags_device_ != nullptr) device_->free(flags_device_);
    for (gpu::EventId e : bucket_events_) device_->destroy_event(e);
    for (void* p : device_params_) device_->free(p);
    for (void* g : device_grads_) device_->free(g);
    if (rdp_ != nullptr) {
      for (void* p : {rdp_->wide, rdp_->part, rdp_->part16, rdp_->packed16}) {
        if (p != nullptr) device_->free(p);
      }
      if (rdp_->has_stream) device_->destroy_stream(rdp_->stream);
    }
    if (remote_ != nullptr) device_->destroy_stream(stream_);
    if (pinned_region_ != nullptr) device_->unregister_host_memory(pinned_region_).IgnoreError();
  }
  opt_.reset();
  remote_.reset();
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
  STRATA_RETURN_IF_ERROR(register_params(config, std::move(options)));
  dtype_ = step_->compute_dtype();
  size_t all_params = 0;
  for (const std::vector<ParamHandle>& layer : layers_) {
    flag_offset_.push_back(all_params);
    all_params += layer.size();
  }
  plan_buckets(config.zero.reduce_bucket_size_given ? config.zero.reduce_bucket_size : 0,
               config.zero.allgather_bucket_size);
  for (size_t b = 0; b < reduce_buckets_.size(); ++b) {
    STRATA_ASSIGN_OR_RETURN(const gpu::EventId e, device_->create_event());
    bucket_events_.push_back(e);
  }
  // ZeRO-3 across ranks: forward and backward gather each layer's params
  // with the communicator the reduction thread uses, so no reduction may
  // run meanwhile: gradients are reported after backward and the previous
  // micro-batch's reductions are waited for before forward.
  if (opt_ != nullptr && opt_->params_sliced()) grads_during_backward_ = false;
  if (has_scaler_) {
    // One slot per param of every layer: the flags of a whole backward are
    // read after it, with the one host wait the step makes.
    const uint64_t scratch =
        std::max<uint64_t>(opt_ != nullptr ? opt_->placement().device_scratch : 0,
                           (all_params * 8 + 255) & ~uint64_t{255});
    STRATA_ASSIGN_OR_RETURN(flags_device_, device_->allocate(scratch),
                            "allocating the device scratch of the overflow check");
    flag_sums_.assign(all_params, 0.0f);
    flag_nonfinite_.assign(all_params, 0);
  }
  return initialize_params();
}

absl::Status TrainingEngine::register_params(const config::DsConfig& config,
                                             EngineOptions options) {
  const int num_layers = model_->num_layers();
  layers_.assign(std::max(num_layers, 0), {});
  for (int l = 0; l < num_layers; ++l) {
    for (const ParamSpec& p : model_->layer_params(l)) {
      layers_[l].push_back(static_cast<ParamHandle>(params_.size()));
      params_.push_back(ParamDesc{.name = p.name,
                                  .numel = p.numel,
                                  .bucket = l,
                                  .group = 0,
                                  .binding = ParamBinding::kStore});
      num_buckets_ = l + 1;
    }
  }
  // A remote optimizer (stratad's) divides by nothing more: DeepSpeed's 1/gas.
  loss_divisor_ = static_cast<double>(gas_);
  if (!options.remote) {
    // 1/gas split into a power of two before backward and the exact rest in
    // the fp32 divisor (the header's "Loss scaling and accumulation").
    loss_divisor_ = 1;
    while (loss_divisor_ < static_cast<double>(gas_)) loss_divisor_ *= 2;
    options.grad_divisor = static_cast<double>(gas_) / loss_divisor_;
    STRATA_ASSIGN_OR_RETURN(
        opt_, OffloadOptimizer::create(config, device_,
                                       static_cast<OffloadOptimizerOptions&&>(std::move(options))));
    step_ = opt_.get();
    has_scaler_ = opt_->loss_scaler() != nullptr;
    const int group = opt_->add_group(opt_->default_group());
    for (ParamDesc d : params_) {
      d.group = group;
      STRATA_RETURN_IF_ERROR(opt_->add_param(d).status());
    }
    STRATA_RETURN_IF_ERROR(opt_->finalize());
    stream_ = opt_->stream();  // created by finalize
    return absl::OkStatus();
  }
  if (config.strata.delayed_param_update) {
    return absl::InvalidArgumentError(
        "strata.delayed_param_update needs the optimizer in this process; set it false to train "
        "through a remote optimizer (stratad)");
  }
  HostBoundRegistration reg{.config = &config,
                            .group = group_hyperparams(config),
                            .params = params_,
                            .use_schedule = options.use_schedule,
                            .speculation = options.speculation,
                            .allow_buffered_io = options.allow_buffered_io};
  for (ParamDesc& d : reg.params) d.binding = ParamBinding::kHost;
  if (options.comm != nullptr && options.comm->world_size() > 1) {
    STRATA_RETURN_IF_ERROR(plan_remote_slices(options.comm, &reg));
    // Each rank's remote is a one-rank optimizer of its slices.
    rdp_->config = config;
    rdp_->config.world_size = 1;
    rdp_->config.train_batch_size =
        config.train_micro_batch_size_per_gpu * config.gradient_accumulation_steps;
    reg.config = &rdp_->config;
  }
  STRATA_ASSIGN_OR_RETURN(remote_, options.remote(reg));
  step_ = remote_.get();
  has_scaler_ = config.fp16.enabled;
  STRATA_ASSIGN_OR_RETURN(stream_, device_->create_stream());
  // The remote's memory is pinned, so the per-step copies run at DMA speed
  // and queue without a staging wait (cudaHostRegister on CUDA).
  if (const auto [base, bytes] = remote_->host_region(); base != nullptr && bytes > 0) {
    STRATA_RETURN_IF_ERROR(device_->register_host_memory(base, bytes),
                           "pinning the optimizer's shared memory for the device's copies");
    pinned_region_ = base;
  }
  // Allocated now so steps make none (device-wide synchronisations).
  const size_t dsize = dtype_size(remote_->compute_dtype());
  for (const ParamDesc& d : params_) {
    STRATA_ASSIGN_OR_RETURN(
        void* p, device_->allocate(d.numel * dsize),
        absl::StrCat("device memory for param ", d.name, " of layer ", d.bucket));
    device_params_.push_back(p);
    STRATA_ASSIGN_OR_RETURN(
        void* g, device_->allocate(d.numel * dsize),
        absl::StrCat("device memory for the gradient of ", d.name, " of layer ", d.bucket));
    device_grads_.push_back(g);
  }
  if (rdp_ != nullptr) STRATA_RETURN_IF_ERROR(setup_remote_dp());
  return absl::OkStatus();
}

absl::Status TrainingEngine::upload_params() {
  if (remote_ == nullptr || params_uploaded_) return absl::OkStatus();
  if (rdp_ != nullptr) {
    STRATA_RETURN_IF_ERROR(gather_params_from_remote());
    params_uploaded_ = true;
    return absl::OkStatus();
  }
  const size_t dsize = dtype_size(dtype_);
  for (size_t h = 0; h < params_.size(); ++h) {
    STRATA_RETURN_IF_ERROR(
        device_->copy_to_device(device_params_[h], remote_->param_memory(static_cast<int>(h)),
                                params_[h].numel * dsize, stream_),
        "copying the params to the device");
  }
  params_uploaded_ = true;
  return absl::OkStatus();
}

absl::Status TrainingEngine::download_grads(int layer) {
  const size_t dsize = dtype_size(dtype_);
  for (ParamHandle h : layers_[layer]) {
    STRATA_RETURN_IF_ERROR(device_->copy_to_host(remote_->grad_memory(h), device_grads_[h],
                                                 params_[h].numel * dsize, stream_),
                           absl::StrCat("gradients of layer ", layer, " to the host"));
  }
  return absl::OkStatus();
}

void TrainingEngine::plan_buckets(int64_t reduce_elements, int64_t allgather_elements) {
  const int num_layers = static_cast<int>(layers_.size());
  std::vector<uint64_t> numel(num_layers, 0);
  for (int l = 0; l < num_layers; ++l) {
    for (ParamHandle h : layers_[l]) numel[l] += params_[h].numel;
  }
  // A bucket's gradients stay pinned on the device until the bucket is
  // full, so a bucket also fits a quarter of the device tier's budget (a
  // stage 3 device cache holds a few layers).
  // Not set in the config (0): about kAutoBuckets buckets, so the host
  // optimizer starts on the first while backward computes the rest
  // (DeepSpeed's 5e8 would make a model below 500M params one bucket, whose
  // optimizer work starts only after the whole backward).
  if (reduce_elements == 0) {
    constexpr uint64_t kAutoBuckets = 8;
    uint64_t total = 0;
    for (uint64_t n : numel) total += n;
    reduce_elements =
        static_cast<int64_t>(std::max<uint64_t>(1, (total + kAutoBuckets - 1) / kAutoBuckets));
  }
  // (A remote optimizer's engine holds every layer on the device: no cap.)
  const uint64_t budget = opt_ != nullptr ? opt_->store()->stats().tiers[0].budget_bytes : 0;
  const uint64_t cap_elements =
      budget > 0 ? std::max<uint64_t>(1, budget / 4 / dtype_size(dtype_)) : UINT64_MAX;
  auto group = [&](int64_t elements, bool backward) {
    const uint64_t limit = std::min<uint64_t>(static_cast<uint64_t>(elements), cap_elements);
    std::vector<std::vector<int>> buckets;
    uint64_t size = 0;
    for (int k = 0; k < num_layers; ++k) {
      const int l = backward ? num_layers - 1 - k : k;
      // A layer larger than the bucket is a bucket of its own.
      if (buckets.empty() || size + numel[l] > limit) {
        buckets.emplace_back();
        size = 0;
      }
      buckets.back().push_back(l);
      size += numel[l];
    }
    return buckets;
  };
  reduce_buckets_ = group(reduce_elements, /*backward=*/true);
  allgather_buckets_ = group(allgather_elements, /*backward=*/false);
}

absl::Status TrainingEngine::initialize_params() {
  // A remote session that has its params continues from them.
  if (remote_ != nullptr && !remote_->needs_values()) return absl::OkStatus();
  params_uploaded_ = false;
  for (int l = 0; l < static_cast<int>(layers_.size()); ++l) {
    for (int i = 0; i < static_cast<int>(layers_[l].size()); ++i) {
      std::vector<float> init(params_[layers_[l][i]].numel);
      model_->init_param(l, i, init.data());
      const ParamHandle h = layers_[l][i];
      if (rdp_ != nullptr) {
        STRATA_RETURN_IF_ERROR(step_->set_value(h, init.data() + rdp_->slice[h].offset));
        continue;
      }
      STRATA_RETURN_IF_ERROR(step_->set_value(h, init.data()));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<StepStats> TrainingEngine::train_step() {
  STRATA_RETURN_IF_ERROR(step_->partly_stepped());
  const auto t0 = std::chrono::steady_clock::now();
  const gpu::SyncCounters syncs0 = device_->sync_counters();
  StepStats st;
  st.step = step_->steps() + 1;
  STRATA_ASSIGN_OR_RETURN(st.loss_scale, step_->begin_step());
  if (absl::Status s = upload_params(); !s.ok()) {
    return step_->abort_step(annotate(s, absl::StrCat("step ", st.step)));
  }

  // grad32 holds loss_scale * gas / loss_divisor_ * (mean gradient over the
  // micro-batches); the optimizer divides by gas / loss_divisor_ too.
  const double loss_grad_scale = st.loss_scale / loss_divisor_;
  const int64_t micro0 = step_->micro_batches();
  double loss_sum = 0;
  for (int64_t k = 0; k < gas_; ++k) {
    double loss = 0;
    if (absl::Status s =
            run_micro_batch(micro0 + k, loss_grad_scale, k == 0, k == gas_ - 1, &loss, &st);
        !s.ok()) {
      return step_->abort_step(annotate(s, absl::StrCat("step ", st.step, ", micro-batch ", k)));
    }
    loss_sum += loss;
  }
  st.loss = loss_sum / static_cast<double>(gas_);
  // A remote's finish_step writes the decided params into its memory.
  params_uploaded_ = false;
  STRATA_ASSIGN_OR_RETURN(const OptimizerStepResult r,
                          rdp_ != nullptr ? finish_remote_dp() : step_->finish_step());
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

absl::Status TrainingEngine::layer_params(int l, bool gathered, StreamPins* pins,
                                          LayerContext* ctx) {
  if (remote_ != nullptr) {
    for (ParamHandle h : layers_[l]) ctx->params.push_back(device_params_[h]);
    return absl::OkStatus();
  }
  if (gathered) {
    STRATA_ASSIGN_OR_RETURN(std::vector<void*> full, opt_->acquire_full_params(l));
    ctx->params.assign(full.begin(), full.end());
    return absl::OkStatus();
  }
  for (ParamHandle h : layers_[l]) {
    STRATA_ASSIGN_OR_RETURN(TensorView v, pins->acquire(opt_->param_id(h), Access::kRead));
    ctx->params.push_back(v.data);
  }
  return absl::OkStatus();
}

absl::Status TrainingEngine::run_layer(int l, StreamPins* grads, int64_t micro,
                                       double loss_grad_scale) {
  const bool backward = grads != nullptr;
  offload::TieredStore* store = opt_ != nullptr ? opt_->store() : nullptr;
  const std::vector<ParamHandle>& ps = layers_[l];
  LayerContext ctx{.device = device_,
                   .stream = stream_,
                   .dtype = dtype_,
                   .micro_batch = micro,
                   .loss_grad_scale = loss_grad_scale};
  // ZeRO-3 across ranks: the layer's whole params are gathered on the
  // device, and go back however the layer ends (release_full_params waits
  // for the work enqueued on the stream before freeing them).
  const bool gathered = opt_ != nullptr && opt_->params_sliced();
  absl::Cleanup release_gathered = [&] {
    if (gathered) opt_->release_full_params(l).IgnoreError();
  };
  // Otherwise stream order: the stream waits for the params' loads on the
  // device, and the copies are released as soon as the work is enqueued;
  // the store keeps them until that work has run (no host wait here).
  StreamPins params(store, Tier::kDevice, ctx.stream);
  STRATA_RETURN_IF_ERROR(layer_params(l, gathered, &params, &ctx));
  if (backward) {
    for (ParamHandle h : ps) {
      if (remote_ != nullptr) {
        ctx.grads.push_back(device_grads_[h]);
        continue;
      }
      STRATA_ASSIGN_OR_RETURN(TensorView v, grads->acquire(opt_->grad_id(h), Access::kWrite));
      ctx.grads.push_back(v.data);
    }
  }
  const char* what = backward ? "backward" : "forward";
  STRATA_RETURN_IF_ERROR(backward ? model_->backward(l, ctx) : model_->forward(l, ctx),
                         absl::StrCat(what, " of layer ", l));
  if (backward && has_scaler_ && !step_->overflowed()) {
    STRATA_RETURN_IF_ERROR(check_overflow(l, ctx));
  }
  if (store == nullptr) return absl::OkStatus();
  return annotate(params.release(/*dirty=*/false), absl::StrCat(what, " of layer ", l));
}

void TrainingEngine::read_overflow_flags(int l, int64_t micro, StepStats* st) {
  if (!has_scaler_ || step_->overflowed()) return;
  const std::vector<ParamHandle>& ps = layers_[l];
  for (size_t i = 0; i < ps.size(); ++i) {
    if (flag_nonfinite_[flag_offset_[l] + i] != 0) {
      step_->report_overflow();
      st->overflow_layer = l;
      st->overflow_param = params_[ps[i]].name;
      log::get("engine")->warn(
          "step {}: fp16 gradient overflow first seen in layer {} ({}), micro-batch {}, at "
          "loss scale {}; the step is skipped (if this repeats, bf16 has no overflow)",
          st->step, l, st->overflow_param, micro, st->loss_scale);
      return;
    }
  }
}

absl::Status TrainingEngine::finish_bucket(int b, int64_t micro, StepStats* st) {
  // The host waits for this bucket's backward (and its flags; a remote's
  // gradient copies) only: the next bucket is already queued behind it.
  if (has_scaler_ || remote_ != nullptr) {
    STRATA_RETURN_IF_ERROR(device_->synchronize_event(bucket_events_[b]),
                           absl::StrCat("backward of gradient bucket ", b));
  }
  // The whole bucket's flags first: no layer of an overflowing bucket is
  // stepped speculatively only to be rolled back.
  for (int l : reduce_buckets_[b]) read_overflow_flags(l, micro, st);
  for (int l : reduce_buckets_[b]) STRATA_RETURN_IF_ERROR(hand_on_grads(l));
  return absl::OkStatus();
}

absl::Status TrainingEngine::hand_on_grads(int l) {
  if (l >= num_buckets_) return absl::OkStatus();
  if (rdp_ != nullptr) STRATA_RETURN_IF_ERROR(reduce_grads_to_remote(l));
  return step_->overflowed() ? absl::OkStatus() : step_->grad_ready(l);
}

absl::Status TrainingEngine::run_micro_batch(int64_t micro, double loss_grad_scale, bool first,
                                             bool last, double* loss, StepStats* st) {
  const int num_layers = static_cast<int>(layers_.size());
  // ZeRO-3 across ranks: forward's gathers must not meet the reductions.
  const bool wait_first = opt_ != nullptr && opt_->params_sliced();
  if (!first && wait_first) STRATA_RETURN_IF_ERROR(step_->wait_grads(), "gradient worker");
  offload::TieredStore* store = opt_ != nullptr ? opt_->store() : nullptr;
  // The host waits for each bucket's backward before handing it on (an fp16
  // overflow check's flags, a remote's gradient copies).
  const bool bucket_waits = has_scaler_ || remote_ != nullptr;
  for (const std::vector<int>& bucket : allgather_buckets_) {
    // Params come back a bucket at a time: every load of the bucket is
    // queued before its first layer waits for one.
    for (int l : bucket) {
      if (store == nullptr) break;
      for (ParamHandle h : layers_[l]) store->prefetch(opt_->param_id(h), Tier::kDevice);
    }
    for (int l : bucket) STRATA_RETURN_IF_ERROR(run_layer(l, nullptr, micro, loss_grad_scale));
  }
  // The worker may still be reading the previous micro-batch's gradients
  // (a delayed update it may be running touches no gradient on the device).
  if (!first && !wait_first) STRATA_RETURN_IF_ERROR(step_->wait_grads(), "gradient worker");
  const auto backward_start = std::chrono::steady_clock::now();
  std::vector<int> queued;  // buckets whose backward is enqueued, not yet handed on
  for (int b = 0; b < static_cast<int>(reduce_buckets_.size()); ++b) {
    // A bucket's gradients leave the device together (one D2H batch behind
    // its last layer's backward), as reduce_bucket_size asks.
    StreamPins grads(store, Tier::kDevice, stream_);
    for (int l : reduce_buckets_[b]) {
      STRATA_RETURN_IF_ERROR(run_layer(l, &grads, micro, loss_grad_scale));
    }
    if (remote_ != nullptr) {
      // Across ranks the gradients are reduced once backward has run them.
      for (int l : reduce_buckets_[b]) {
        if (rdp_ == nullptr) STRATA_RETURN_IF_ERROR(download_grads(l));
      }
    } else {
      // Gradients the optimizer reduces on the device stay there (only this
      // rank's part of them crosses PCIe, after the reduction).
      bool copy_back = false;
      for (int l : reduce_buckets_[b]) copy_back = copy_back || !opt_->grads_reduced_on_device(l);
      STRATA_RETURN_IF_ERROR(grads.release(/*dirty=*/true, copy_back),
                             absl::StrCat("gradient bucket ", b, " to the host"));
    }
    if (!grads_during_backward_) continue;
    // overlap / delayed: a bucket's gradients go to the worker once its
    // overflow flags are known, one bucket behind the device.
    if (bucket_waits) {
      STRATA_RETURN_IF_ERROR(device_->record_event(bucket_events_[b], stream_));
      queued.push_back(b);
      if (queued.size() > 1) {
        STRATA_RETURN_IF_ERROR(finish_bucket(queued.front(), micro, st));
        queued.erase(queued.begin());
      }
    } else {
      STRATA_RETURN_IF_ERROR(finish_bucket(b, micro, st));
    }
  }
  for (int b : queued) STRATA_RETURN_IF_ERROR(finish_bucket(b, micro, st));
  if (!grads_during_backward_ || !bucket_waits) {
    // sync: the step's one host wait, for the whole backward, its flags and
    // the gradients' copies to the host (the store's streams join it).
    STRATA_RETURN_IF_ERROR(
        store != nullptr ? store->synchronize(stream_) : device_->synchronize_stream(stream_),
        "backward");
  }
  if (last) {
    step_->set_backward_seconds(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - backward_start).count());
  }
  // Valid now: the device has run the whole forward.
  *loss = model_->loss();
  // sync: DeepSpeed's order, every gradient after the whole backward.
  if (!grads_during_backward_) {
    for (int l = num_layers - 1; l >= 0; --l) read_overflow_flags(l, micro, st);
    for (int l = 0; l < num_buckets_; ++l) {
      if (rdp_ == nullptr && step_->overflowed()) break;
      STRATA_RETURN_IF_ERROR(hand_on_grads(l));
    }
  }
  return absl::OkStatus();
}

absl::Status TrainingEngine::check_overflow(int layer, const LayerContext& ctx) {
  const std::vector<ParamHandle>& ps = layers_[layer];
  auto* sums = static_cast<float*>(flags_device_);
  auto* flags = reinterpret_cast<int32_t*>(sums + flag_sums_.size());
  const size_t at = flag_offset_[layer];
  std::fill_n(flag_nonfinite_.begin() + at, ps.size(), 0);
  for (size_t i = 0; i < ps.size(); ++i) {
    STRATA_RETURN_IF_ERROR(device_->squared_norm(ctx.grads[i], dtype_, params_[ps[i]].numel,
                                                 sums + at + i, flags + at + i, stream_));
  }
  // Only the flags come back: a few bytes per param, in stream order.
  return device_->copy_to_host(flag_nonfinite_.data() + at, flags + at, ps.size() * sizeof(int32_t),
                               stream_);
}

absl::StatusOr<double> TrainingEngine::evaluate(int64_t batches) {
  if (batches < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("evaluate: batches must be at least 1 (got ", batches, ")"));
  }
  STRATA_RETURN_IF_ERROR(upload_params(), "evaluate");
  offload::TieredStore* store = opt_ != nullptr ? opt_->store() : nullptr;
  double loss_sum = 0;
  for (int64_t k = 0; k < batches; ++k) {
    for (int l = 0; l < static_cast<int>(layers_.size()); ++l) {
      LayerContext ctx{.device = device_,
                       .stream = stream_,
                       .dtype = dtype_,
                       .micro_batch = k,
                       .loss_grad_scale = 1.0,
                       .training = false};
      const bool gathered = opt_ != nullptr && opt_->params_sliced();
      absl::Cleanup release_gathered = [&] {
        if (gathered) opt_->release_full_params(l).IgnoreError();
      };
      StreamPins pins(store, Tier::kDevice, ctx.stream);
      STRATA_RETURN_IF_ERROR(layer_params(l, gathered, &pins, &ctx));
      STRATA_RETURN_IF_ERROR(model_->forward(l, ctx),
                             absl::StrCat("evaluate: batch ", k, ", forward of layer ", l));
      if (store != nullptr) STRATA_RETURN_IF_ERROR(pins.release(/*dirty=*/false));
    }
    STRATA_RETURN_IF_ERROR(device_->synchronize_stream(stream_),
                           absl::StrCat("evaluate: batch ", k));
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
  if (rdp_ != nullptr) {
    STRATA_ASSIGN_OR_RETURN(std::vector<float> mine, step_->read_state(h, kind));
    return gather_remote_fp32(h, mine);
  }
  return step_->read_state(h, kind);
}

absl::StatusOr<std::vector<float>> TrainingEngine::read_param(int layer, int param) {
  STRATA_ASSIGN_OR_RETURN(const ParamHandle h, handle(layer, param));
  if (rdp_ != nullptr) {
    STRATA_ASSIGN_OR_RETURN(std::vector<float> mine, step_->read_param(h));
    return gather_remote_fp32(h, mine);
  }
  return step_->read_param(h);
}

absl::Status TrainingEngine::save_checkpoint(const std::string& dir) {
  if (rdp_ != nullptr) return save_remote_shards(dir);
  return step_->save_state(dir, user_meta_);
}

absl::Status TrainingEngine::save_checkpoint_async(const std::string& dir) {
  // Across ranks through remotes the save is collective: synchronous.
  if (rdp_ != nullptr) return save_remote_shards(dir);
  return step_->save_state_async(dir, user_meta_);
}

absl::Status TrainingEngine::wait_for_checkpoint() { return step_->wait_for_save(); }

absl::Status TrainingEngine::load_checkpoint(const std::string& dir, CheckpointUse use) {
  params_uploaded_ = false;
  if (rdp_ != nullptr) return load_remote_shards(dir, use == CheckpointUse::kWeights);
  return step_->load_state(dir, use == CheckpointUse::kWeights);
}

absl::StatusOr<nlohmann::json> TrainingEngine::read_checkpoint_user_metadata(
    const std::string& dir) {
  // Across ranks every shard records the same (the reader checks); rank 0's.
  STRATA_ASSIGN_OR_RETURN(CheckpointShards files, open_checkpoint_shards(dir));
  return std::move(files.whole.user);
}

}  // namespace strata::engine
