// BindingClient: a RemoteOptimizer for a framework whose params and
// gradients live in its own memory: host memory (kHost bindings) or its
// device's memory (kDevice bindings), as the C API and Python bind them.
//
// The framework registers its params on an engine::OffloadOptimizer as it
// would in-process (bindings, groups), but never finalizes it: that
// optimizer only holds the registration. attach() sends the registration to
// stratad as the session's spec (stratad binds every param to the session's
// shared arena, kHost on its side); from then on the framework's memory and
// the arena are kept in step by copies:
//   grad_ready(bucket)  copies the bucket's gradients into the arena, then
//                       pushes the bucket, so the framework may reuse its
//                       gradient buffers at once (unlike in-process). kDevice:
//                       the copy runs on the client's stream after the
//                       optimizer-style `grad_written` event, and the push
//                       waits for that copy's event only (no device-wide
//                       synchronisation);
//   finish_step         copies the updated params back: kHost before it
//                       returns, kDevice queued on the client's stream per
//                       bucket, params_ready(bucket) saying when they landed
//                       (as in-process); a skipped step copies nothing (the
//                       params did not change);
//   set_value, load_state, attach to an existing session
//                       copy the params back before they return (kDevice too,
//                       as in-process's set_value and load_state do).
// The arena is registered with the device (pinned for DMA: cudaHostRegister)
// while the client lives, when any param is kDevice; the destructor waits
// for the client's copies and unregisters it before the arena is unmapped.
// begin_step, set_value and load_state wait for the last step's param copies
// first (stream order, not the device): stratad may rewrite the arena after.
// The values are bit for bit what an in-process OffloadOptimizer with the
// same registration gives (the arena holds the compute-dtype gradient and
// param exactly as the device does).
// A RemoteOptimizer call that fails leaves the framework's params as they
// were (the copy back follows only a success).
//
// Threading: one thread at a time (RemoteOptimizer's rule), except
// grad_ready and report_overflow, which any thread may call at once with
// each other and with wait_grads / finish_step (they are serialised
// inside). Errors: the daemon's, prefixed "stratad: "; the device's (a
// copy, pinning the arena); a kDevice param without a device is
// InvalidArgument.
#pragma once

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/remote_optimizer.h"
#include "engine/offload_optimizer.h"
#include "gpu/device.h"

namespace strata::daemon {

class BindingClient {
 public:
  // `registration` (unfinalized) must outlive the client; `spec` carries
  // the config text and flags (its groups and params are filled from
  // `registration`). `device`: the one kDevice params live on (it must
  // outlive the client); may be null when every param is kHost.
  static absl::StatusOr<std::unique_ptr<BindingClient>> attach(
      const RemoteOptions& options, SessionSpec spec, const engine::OffloadOptimizer& registration,
      gpu::Device* device = nullptr);
  ~BindingClient();
  BindingClient(const BindingClient&) = delete;
  BindingClient& operator=(const BindingClient&) = delete;

  RemoteOptimizer& remote() { return *remote_; }
  bool created() const { return remote_->created(); }

  absl::Status set_value(int p, const float* values);
  absl::StatusOr<double> begin_step(std::optional<double> loss_scale = std::nullopt);
  // grad_written: an event after which the bucket's kDevice gradients are
  // complete (none: they are when the call is made).
  absl::Status grad_ready(int bucket, std::optional<gpu::EventId> grad_written = std::nullopt);
  // Between micro-batches: the session has taken every gradient handed
  // over (the framework may overwrite its buffers). Serialised with
  // report_overflow, which another thread may call meanwhile.
  absl::Status wait_grads();
  // The framework's own fp16 overflow check fired: the session takes no
  // further gradient this step and finish_step skips it. Any thread, at
  // once with grad_ready and wait_grads (serialised with them on the one
  // connection, so a bucket pushed before it is taken before it).
  absl::Status report_overflow();
  absl::StatusOr<engine::OptimizerStepResult> finish_step();
  absl::Status load_state(const std::string& dir, bool weights_only);
  // The event after which the bucket's kDevice params hold the last update;
  // none for a bucket without kDevice params (or an unknown one).
  std::optional<gpu::EventId> params_ready(int bucket) const;
  // The compute-dtype param as fp32, read from the arena.
  std::vector<float> read_param(int p) const;
  // Whether the arena is registered with the device (kDevice params).
  bool arena_pinned() const { return pinned_; }

 private:
  BindingClient() = default;
  // Arena -> the framework's param memory; p < 0: every param. kDevice
  // copies are queued on the client's stream, each bucket's event recorded
  // after its copies; wait: the stream is synchronised before returning.
  absl::Status copy_params_out(int p, bool wait);
  // The last queued param copies have read the arena.
  absl::Status wait_param_copies();

  const engine::OffloadOptimizer* reg_ = nullptr;
  gpu::Device* device_ = nullptr;  // non-null when some param is kDevice
  gpu::StreamId stream_ = 0;
  gpu::EventId grad_copied_ = 0;
  std::vector<std::optional<gpu::EventId>> bucket_events_;  // per bucket with kDevice params
  bool pinned_ = false;
  std::mutex grad_mu_;  // grad_ready's copies, event and push
  std::unique_ptr<RemoteOptimizer> remote_;
};

}  // namespace strata::daemon
