// RemoteOptimizer: the OffloadOptimizer seam served by stratad.
//
// attach() connects to stratad's socket, shakes hands (protocol and strata
// versions), and attaches to the named session with the spec's fingerprint:
// a new name creates the session, an existing one with the same fingerprint
// is resumed where its last completed step left it (a client that died
// mid-step lost only that step), a different fingerprint is refused naming
// what differs. The session's arena is mapped here: param(p) and grad(p)
// point at each param's compute-dtype value and gradient, shared with the
// daemon's optimizer (ParamBinding::kHost there): the framework writes
// gradients into grad(p) and reads updated params from param(p) after
// finish_step; nothing is copied through the socket.
//
// The step API mirrors engine::OffloadOptimizer's (begin_step, grad_ready,
// wait_grads, finish_step, abort_step, read_state, save/load). grad_ready
// goes through the session's shared-memory ring (grad_ring.h) with an
// eventfd wake-up and returns at once: the gradient must stay unchanged
// until wait_grads or finish_step returns (the seam's overlap-mode rule, in
// every mode), and a grad_ready the daemon could not do is returned by the
// next wait_grads or finish_step (finish_step then aborts the step). Every
// other call is one request and reply on the socket, bounded by
// options.timeout_ms; a dead or silent daemon is Unavailable /
// DeadlineExceeded naming the socket, and the connection is then unusable
// (attach again).
//
// Threading: one thread at a time (grad_ready from several threads must be
// serialised by the caller in this first increment). Errors: the daemon's
// Status, its message prefixed "stratad: ".
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/dtype.h"
#include "daemon/protocol.h"
#include "daemon/shared_arena.h"
#include "engine/offload_optimizer.h"
#include "nlohmann/json.hpp"

namespace strata::daemon {

struct RemoteOptions {
  std::string socket_path;  // empty: default_socket_path()
  std::string session;
  int timeout_ms = 120'000;  // any one reply (a finish_step of a large model takes a while)
  // grad_ready through the shared-memory ring (no round trip; a failure is
  // returned by the next wait_grads / finish_step) instead of the socket.
  bool use_ring = true;
};

class RemoteOptimizer {
 public:
  static absl::StatusOr<std::unique_ptr<RemoteOptimizer>> attach(const RemoteOptions& options,
                                                                 const SessionSpec& spec);
  ~RemoteOptimizer();  // closes the connection: a step in flight is aborted by the daemon

  // A new session, or one whose values were never all given: give every
  // param its value with set_value before the first step.
  bool created() const { return created_; }
  int64_t steps() const { return steps_; }  // finished steps, as the daemon counts them
  int64_t optimizer_steps() const { return optimizer_steps_; }
  // gradient_accumulation_steps per finished step, as the daemon counts
  // them (restored by load_state): where a client's data continues.
  int64_t micro_batches() const { return micro_batches_; }
  DType compute_dtype() const { return dtype_; }
  int num_params() const { return static_cast<int>(slots_.size()); }
  int num_buckets() const { return num_buckets_; }
  void* param(int p) const;
  void* grad(int p) const;
  uint64_t arena_bytes() const { return arena_->bytes(); }
  void* arena_base() const { return arena_->base(); }

  absl::Status set_value(int p, const float* values);
  absl::StatusOr<double> begin_step(std::optional<double> loss_scale = std::nullopt);
  absl::Status grad_ready(int bucket);
  absl::Status wait_grads();
  // An fp16 overflow the client found (its device-side check): the daemon
  // takes no further gradient this step and finish_step skips it.
  absl::Status report_overflow();
  absl::StatusOr<engine::OptimizerStepResult> finish_step();
  // finish_step in two halves (engine::OffloadOptimizer's of the same
  // names), for the sessions of one data-parallel job: the client sums the
  // local statistics over its ranks and hands the sums to finish_step_global.
  absl::StatusOr<engine::StepGradStats> finish_step_local();
  absl::StatusOr<engine::OptimizerStepResult> finish_step_global(engine::StepGradStats global);
  // With the config's fp16 loss scaler: the scale the next step's loss
  // must carry, as of the last finish_step (none before the first).
  std::optional<double> next_loss_scale() const { return next_loss_scale_; }
  absl::Status abort_step(absl::Status why);
  absl::StatusOr<std::vector<float>> read_state(int p, engine::StateKind kind);
  // Between steps, as engine::OffloadOptimizer's: a state tensor (fp32,
  // numel values; sent in chunks), a group's hyper-parameters, the Adam step
  // count that goes with written states.
  absl::Status write_state(int p, engine::StateKind kind, const float* values);
  absl::Status set_group(int g, const engine::GroupHyperparams& hp);
  absl::Status set_optimizer_steps(int64_t steps);
  // The session's groups as they are in force: from the attach reply (a
  // resumed session's set_group survives the client), then set_group's.
  int num_groups() const { return static_cast<int>(groups_.size()); }
  const engine::GroupHyperparams& group(int g) const { return groups_.at(g); }
  // The compute-dtype param as fp32, read from the arena.
  std::vector<float> read_param(int p) const;
  absl::Status save_state(const std::string& dir, const nlohmann::json& user_meta);
  absl::Status load_state(const std::string& dir, bool weights_only);
  // end_session: the daemon drops the session and frees its memory.
  absl::Status detach(bool end_session = false);

  // One request on a fresh connection without attaching: the daemon's stats
  // (what `strata top` prints).
  static absl::StatusOr<nlohmann::json> stats(const std::string& socket_path,
                                              int timeout_ms = 5000);
  // Likewise: ends the named session, which no client may be attached to
  // (`strata top --end-session NAME`).
  static absl::Status end_session(const std::string& socket_path, const std::string& session,
                                  int timeout_ms = 5000);

 private:
  RemoteOptimizer() = default;
  // A finish_step / finish_global reply, parsed; the counters follow it.
  absl::StatusOr<engine::OptimizerStepResult> step_result(const Frame& f);
  // One request and its reply on a fresh connection (stats, end_session).
  static absl::StatusOr<nlohmann::json> one_request(const std::string& socket_path, MsgType type,
                                                    const nlohmann::json& body, int timeout_ms);
  absl::StatusOr<Frame> call(MsgType type, const nlohmann::json& body, absl::string_view blob = {});

  std::string socket_path_;
  int fd_ = -1;
  int timeout_ms_ = 0;
  bool created_ = false;
  int64_t steps_ = 0, optimizer_steps_ = 0, micro_batches_ = 0;
  int num_buckets_ = 0;
  DType dtype_ = DType::kFloat32;
  std::vector<std::pair<uint64_t, uint64_t>> slots_;
  std::vector<uint64_t> numel_;
  std::vector<engine::GroupHyperparams> groups_;
  std::optional<double> next_loss_scale_;
  std::unique_ptr<SharedArena> arena_;
  bool use_ring_ = true;
  int event_fd_ = -1;
};

// Connects and shakes hands; the connected socket (caller closes it).
// Exposed for tests and `strata top`.
absl::StatusOr<int> connect_to_stratad(const std::string& socket_path, int timeout_ms);

}  // namespace strata::daemon
