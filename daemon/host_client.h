// HostClient: a RemoteOptimizer for a framework whose params and gradients
// live in its own host memory (the C API's and Python's kHost bindings).
//
// The framework registers its params on an engine::OffloadOptimizer as it
// would in-process (kHost bindings, groups), but never finalizes it: that
// optimizer only holds the registration. attach() sends the registration to
// stratad as the session's spec; from then on the framework's memory and the
// session's arena are kept in step by copies:
//   grad_ready(bucket)  copies the bucket's gradients into the arena, then
//                       pushes the bucket (so the framework may reuse its
//                       gradient buffers at once, unlike in-process);
//   finish_step, set_value, load_state, and attach to an existing session
//                       copy the updated params back into the framework's.
// A RemoteOptimizer call that fails leaves the framework's params as they
// were (the copy back follows only a success).
//
// Threading: one thread at a time (RemoteOptimizer's rule); grad_ready from
// several threads must be serialised by the caller. Errors: the daemon's,
// prefixed "stratad: "; a binding that is not kHost is InvalidArgument.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/remote_optimizer.h"
#include "engine/offload_optimizer.h"

namespace strata::daemon {

class HostClient {
 public:
  // `registration` (unfinalized, every param kHost) must outlive the client;
  // `spec` carries the config text and flags (its groups and params are
  // filled from `registration`).
  static absl::StatusOr<std::unique_ptr<HostClient>> attach(
      const RemoteOptions& options, SessionSpec spec, const engine::OffloadOptimizer& registration);

  RemoteOptimizer& remote() { return *remote_; }
  bool created() const { return remote_->created(); }

  absl::Status set_value(int p, const float* values);
  absl::Status grad_ready(int bucket);
  absl::StatusOr<engine::OptimizerStepResult> finish_step();
  absl::Status load_state(const std::string& dir, bool weights_only);
  // The compute-dtype param as fp32, read from the arena.
  std::vector<float> read_param(int p) const;
  // Arena -> the framework's param memory; p < 0: every param.
  void copy_params_out(int p = -1);

 private:
  HostClient() = default;
  const engine::OffloadOptimizer* reg_ = nullptr;
  std::unique_ptr<RemoteOptimizer> remote_;
};

}  // namespace strata::daemon
