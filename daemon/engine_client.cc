#include "daemon/engine_client.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "core/config/ds_config.h"
#include "core/status.h"

namespace strata::daemon {
namespace {

class EngineClient final : public engine::HostBoundOptimizer {
 public:
  explicit EngineClient(std::unique_ptr<RemoteOptimizer> remote) : remote_(std::move(remote)) {}

  void* param_memory(engine::ParamHandle p) override { return remote_->param(p); }
  void* grad_memory(engine::ParamHandle p) override { return remote_->grad(p); }
  bool needs_values() const override { return remote_->created(); }
  std::pair<void*, uint64_t> host_region() const override {
    return {remote_->arena_base(), remote_->arena_bytes()};
  }

  absl::Status set_value(engine::ParamHandle p, const float* value) override {
    return remote_->set_value(p, value);
  }
  absl::StatusOr<double> begin_step(std::optional<double> loss_scale) override {
    overflow_ = overflow_unsent_ = false;
    return remote_->begin_step(loss_scale);
  }
  absl::Status grad_ready(int bucket) override { return remote_->grad_ready(bucket); }
  absl::Status wait_grads() override {
    STRATA_RETURN_IF_ERROR(send_overflow());
    return remote_->wait_grads();
  }
  void report_overflow() override { overflow_ = overflow_unsent_ = true; }
  bool overflowed() const override { return overflow_; }
  // The daemon's kAuto speculation times the step from begin_step to the
  // last grad_ready itself.
  void set_backward_seconds(double) override {}
  absl::StatusOr<engine::OptimizerStepResult> finish_step() override {
    if (absl::Status s = send_overflow(); !s.ok()) return abort_step(s);
    return remote_->finish_step();
  }
  absl::StatusOr<engine::StepGradStats> finish_step_local() override {
    if (absl::Status s = send_overflow(); !s.ok()) return abort_step(s);
    return remote_->finish_step_local();
  }
  absl::StatusOr<engine::OptimizerStepResult> finish_step_global(
      engine::StepGradStats global) override {
    return remote_->finish_step_global(global);
  }
  absl::Status abort_step(absl::Status why) override {
    overflow_ = overflow_unsent_ = false;
    return remote_->abort_step(std::move(why));
  }

  absl::StatusOr<std::vector<float>> read_state(engine::ParamHandle p,
                                                engine::StateKind kind) override {
    return remote_->read_state(p, kind);
  }
  absl::StatusOr<std::vector<float>> read_param(engine::ParamHandle p) override {
    if (p < 0 || p >= remote_->num_params()) {
      return absl::InvalidArgumentError(absl::StrCat("read_param: no param ", p));
    }
    return remote_->read_param(p);
  }
  absl::Status save_state(const std::string& dir, const nlohmann::json& user_meta) override {
    return remote_->save_state(std::filesystem::absolute(dir).string(), user_meta);
  }
  absl::Status save_state_async(const std::string& dir, const nlohmann::json& user_meta) override {
    return save_state(dir, user_meta);
  }
  absl::Status wait_for_save() override { return absl::OkStatus(); }
  absl::Status load_state(const std::string& dir, bool weights_only) override {
    return remote_->load_state(std::filesystem::absolute(dir).string(), weights_only);
  }
  const engine::CheckpointLoadStats& last_load_stats() const override { return load_stats_; }

  DType compute_dtype() const override { return remote_->compute_dtype(); }
  int64_t optimizer_steps() const override { return remote_->optimizer_steps(); }
  int64_t steps() const override { return remote_->steps(); }
  int64_t micro_batches() const override { return remote_->micro_batches(); }
  // The daemon refuses a step itself after a partly written update.
  absl::Status partly_stepped() const override { return absl::OkStatus(); }

 private:
  absl::Status send_overflow() {
    if (!overflow_unsent_) return absl::OkStatus();
    overflow_unsent_ = false;
    return remote_->report_overflow();
  }

  std::unique_ptr<RemoteOptimizer> remote_;
  bool overflow_ = false;                   // reported this step
  bool overflow_unsent_ = false;            // not yet told to the daemon
  engine::CheckpointLoadStats load_stats_;  // the daemon's load; not reported
};

}  // namespace

engine::HostBoundFactory engine_client_factory(RemoteOptions options) {
  return [options](const engine::HostBoundRegistration& reg)
             -> absl::StatusOr<std::unique_ptr<engine::HostBoundOptimizer>> {
    SessionSpec spec;
    spec.config_json = config::to_json(*reg.config).dump();
    spec.groups = {reg.group};
    for (const engine::ParamDesc& d : reg.params) {
      spec.params.push_back({d.name, d.numel, d.bucket, d.group});
    }
    spec.use_schedule = reg.use_schedule;
    spec.speculation = reg.speculation;
    spec.allow_buffered_io = reg.allow_buffered_io;
    STRATA_ASSIGN_OR_RETURN(std::unique_ptr<RemoteOptimizer> remote,
                            RemoteOptimizer::attach(options, spec));
    return std::make_unique<EngineClient>(std::move(remote));
  };
}

}  // namespace strata::daemon
