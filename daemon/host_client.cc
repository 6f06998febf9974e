#include "daemon/host_client.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/dtype.h"
#include "core/status.h"

namespace strata::daemon {

absl::StatusOr<std::unique_ptr<HostClient>> HostClient::attach(
    const RemoteOptions& options, SessionSpec spec, const engine::OffloadOptimizer& registration) {
  spec.groups.clear();
  spec.params.clear();
  for (int g = 0; g < registration.num_groups(); ++g) spec.groups.push_back(registration.group(g));
  for (int p = 0; p < registration.num_params(); ++p) {
    const engine::ParamDesc& d = registration.param(p);
    if (d.binding != engine::ParamBinding::kHost) {
      return absl::InvalidArgumentError(absl::StrCat(
          "param '", d.name, "': stratad serves host-memory params only so far (CPU tensors)"));
    }
    spec.params.push_back({d.name, d.numel, d.bucket, d.group});
  }
  auto client = std::unique_ptr<HostClient>(new HostClient());
  client->reg_ = &registration;
  STRATA_ASSIGN_OR_RETURN(client->remote_, RemoteOptimizer::attach(options, spec));
  if (client->remote_->compute_dtype() != registration.compute_dtype()) {
    return absl::InternalError("stratad's session has another compute dtype than this config");
  }
  if (!client->remote_->created()) client->copy_params_out();
  return client;
}

void HostClient::copy_params_out(int param) {
  const size_t dsize = dtype_size(remote_->compute_dtype());
  for (int p = 0; p < reg_->num_params(); ++p) {
    if (param >= 0 && p != param) continue;
    const engine::ParamDesc& d = reg_->param(p);
    std::memcpy(d.param, remote_->param(p), d.numel * dsize);
  }
}

absl::Status HostClient::set_value(int p, const float* values) {
  STRATA_RETURN_IF_ERROR(remote_->set_value(p, values));
  copy_params_out(p);
  return absl::OkStatus();
}

absl::Status HostClient::grad_ready(int bucket) {
  if (bucket < 0 || bucket >= reg_->num_buckets()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "grad_ready: bucket ", bucket, " does not exist (", reg_->num_buckets(), " buckets)"));
  }
  const size_t dsize = dtype_size(remote_->compute_dtype());
  for (const int p : reg_->bucket_params(bucket)) {
    const engine::ParamDesc& d = reg_->param(p);
    std::memcpy(remote_->grad(p), d.grad, d.numel * dsize);
  }
  return remote_->grad_ready(bucket);
}

absl::StatusOr<engine::OptimizerStepResult> HostClient::finish_step() {
  STRATA_ASSIGN_OR_RETURN(engine::OptimizerStepResult r, remote_->finish_step());
  copy_params_out();
  return r;
}

absl::Status HostClient::load_state(const std::string& dir, bool weights_only) {
  STRATA_RETURN_IF_ERROR(remote_->load_state(dir, weights_only));
  copy_params_out();
  return absl::OkStatus();
}

std::vector<float> HostClient::read_param(int p) const { return remote_->read_param(p); }

}  // namespace strata::daemon
