#include "daemon/binding_client.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/dtype.h"
#include "core/status.h"

namespace strata::daemon {

absl::StatusOr<std::unique_ptr<BindingClient>> BindingClient::attach(
    const RemoteOptions& options, SessionSpec spec, const engine::OffloadOptimizer& registration,
    gpu::Device* device) {
  spec.groups.clear();
  spec.params.clear();
  for (int g = 0; g < registration.num_groups(); ++g) spec.groups.push_back(registration.group(g));
  bool any_device = false;
  for (int p = 0; p < registration.num_params(); ++p) {
    const engine::ParamDesc& d = registration.param(p);
    if (d.binding == engine::ParamBinding::kDevice) {
      if (device == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(
            "param '", d.name, "' is bound to device memory, but no device was given"));
      }
      any_device = true;
    } else if (d.binding != engine::ParamBinding::kHost) {
      return absl::InvalidArgumentError(absl::StrCat(
          "param '", d.name, "': stratad serves params bound to host or device memory only"));
    }
    spec.params.push_back({d.name, d.numel, d.bucket, d.group});
  }
  auto client = std::unique_ptr<BindingClient>(new BindingClient());
  client->reg_ = &registration;
  STRATA_ASSIGN_OR_RETURN(client->remote_, RemoteOptimizer::attach(options, spec));
  if (client->remote_->compute_dtype() != registration.compute_dtype()) {
    return absl::InternalError("stratad's session has another compute dtype than this config");
  }
  if (any_device) {
    // The copies run at DMA speed and queue without a staging wait only
    // from pinned memory; the session's arena is all of it.
    STRATA_RETURN_IF_ERROR(
        device->register_host_memory(client->remote_->arena_base(), client->remote_->arena_bytes()),
        "pinning stratad's shared memory for the device's copies");
    client->device_ = device;
    client->pinned_ = true;
    STRATA_ASSIGN_OR_RETURN(client->stream_, device->create_stream());
    STRATA_ASSIGN_OR_RETURN(client->grad_copied_, device->create_event());
    client->bucket_events_.assign(registration.num_buckets(), std::nullopt);
    for (int p = 0; p < registration.num_params(); ++p) {
      const engine::ParamDesc& d = registration.param(p);
      std::optional<gpu::EventId>& e = client->bucket_events_[d.bucket];
      if (d.binding == engine::ParamBinding::kDevice && !e.has_value()) {
        STRATA_ASSIGN_OR_RETURN(e, device->create_event());
      }
    }
  }
  if (!client->remote_->created()) {
    STRATA_RETURN_IF_ERROR(client->copy_params_out(-1, /*wait=*/true),
                           "copying the session's params to the framework");
  }
  return client;
}

BindingClient::~BindingClient() {
  if (device_ == nullptr) return;
  // Queued param copies read the arena, which remote_ unmaps after this.
  device_->synchronize_stream(stream_).IgnoreError();
  for (const std::optional<gpu::EventId>& e : bucket_events_) {
    if (e.has_value()) device_->destroy_event(*e);
  }
  if (grad_copied_ != 0) device_->destroy_event(grad_copied_);
  if (stream_ != 0) device_->destroy_stream(stream_);
  if (pinned_) device_->unregister_host_memory(remote_->arena_base()).IgnoreError();
}

absl::Status BindingClient::copy_params_out(int param, bool wait) {
  const size_t dsize = dtype_size(remote_->compute_dtype());
  std::vector<char> touched(bucket_events_.size(), 0);
  for (int p = 0; p < reg_->num_params(); ++p) {
    if (param >= 0 && p != param) continue;
    const engine::ParamDesc& d = reg_->param(p);
    const size_t bytes = d.numel * dsize;
    if (d.binding == engine::ParamBinding::kHost) {
      std::memcpy(d.param, remote_->param(p), bytes);
      continue;
    }
    STRATA_RETURN_IF_ERROR(device_->copy_to_device(d.param, remote_->param(p), bytes, stream_),
                           absl::StrCat("copying param ", d.name, " to the device"));
    touched[d.bucket] = 1;
  }
  for (size_t b = 0; b < touched.size(); ++b) {
    if (touched[b]) STRATA_RETURN_IF_ERROR(device_->record_event(*bucket_events_[b], stream_));
  }
  return wait ? wait_param_copies() : absl::OkStatus();
}

absl::Status BindingClient::wait_param_copies() {
  if (device_ == nullptr) return absl::OkStatus();
  return device_->synchronize_stream(stream_);
}

absl::Status BindingClient::set_value(int p, const float* values) {
  STRATA_RETURN_IF_ERROR(wait_param_copies());
  STRATA_RETURN_IF_ERROR(remote_->set_value(p, values));
  return copy_params_out(p, /*wait=*/true);
}

absl::StatusOr<double> BindingClient::begin_step(std::optional<double> loss_scale) {
  // This step's finish_step rewrites the arena the last step's copies read.
  STRATA_RETURN_IF_ERROR(wait_param_copies());
  return remote_->begin_step(loss_scale);
}

absl::Status BindingClient::grad_ready(int bucket, std::optional<gpu::EventId> grad_written) {
  if (bucket < 0 || bucket >= reg_->num_buckets()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "grad_ready: bucket ", bucket, " does not exist (", reg_->num_buckets(), " buckets)"));
  }
  std::lock_guard lock(grad_mu_);
  const size_t dsize = dtype_size(remote_->compute_dtype());
  bool queued = false;
  for (const int p : reg_->bucket_params(bucket)) {
    const engine::ParamDesc& d = reg_->param(p);
    const size_t bytes = d.numel * dsize;
    if (d.binding == engine::ParamBinding::kHost) {
      std::memcpy(remote_->grad(p), d.grad, bytes);
      continue;
    }
    if (!queued && grad_written.has_value()) {
      STRATA_RETURN_IF_ERROR(device_->wait_event(stream_, *grad_written),
                             absl::StrCat("bucket ", bucket, ": waiting for its gradient"));
    }
    queued = true;
    STRATA_RETURN_IF_ERROR(device_->copy_to_host(remote_->grad(p), d.grad, bytes, stream_),
                           absl::StrCat("copying the gradient of ", d.name));
  }
  if (queued) {
    // Only this copy is waited for: the stream's earlier param copies and
    // the framework's other work go on.
    STRATA_RETURN_IF_ERROR(device_->record_event(grad_copied_, stream_));
    STRATA_RETURN_IF_ERROR(device_->synchronize_event(grad_copied_),
                           absl::StrCat("copying the gradients of bucket ", bucket));
  }
  return remote_->grad_ready(bucket);
}

absl::Status BindingClient::report_overflow() {
  std::lock_guard lock(grad_mu_);
  return remote_->report_overflow();
}

absl::Status BindingClient::wait_grads() {
  std::lock_guard lock(grad_mu_);
  return remote_->wait_grads();
}

absl::StatusOr<engine::OptimizerStepResult> BindingClient::finish_step() {
  absl::StatusOr<engine::OptimizerStepResult> finished;
  {
    std::lock_guard lock(grad_mu_);  // a late report_overflow goes before or after, whole
    finished = remote_->finish_step();
  }
  STRATA_ASSIGN_OR_RETURN(engine::OptimizerStepResult r, std::move(finished));
  if (!r.skipped) {
    STRATA_RETURN_IF_ERROR(copy_params_out(-1, /*wait=*/false),
                           "copying the updated params to the framework");
  }
  return r;
}

absl::Status BindingClient::load_state(const std::string& dir, bool weights_only) {
  STRATA_RETURN_IF_ERROR(wait_param_copies());
  STRATA_RETURN_IF_ERROR(remote_->load_state(dir, weights_only));
  return copy_params_out(-1, /*wait=*/true);
}

std::optional<gpu::EventId> BindingClient::params_ready(int bucket) const {
  if (bucket < 0 || bucket >= static_cast<int>(bucket_events_.size())) return std::nullopt;
  return bucket_events_[bucket];
}

std::vector<float> BindingClient::read_param(int p) const { return remote_->read_param(p); }

}  // namespace strata::daemon
