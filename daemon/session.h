// Session: one named training job's optimizer inside stratad.
//
// Holds the SharedArena (each param's compute-dtype value and gradient, in
// the layout `slots()` gives), a host-mode SimDevice, and an
// engine::OffloadOptimizer whose params are all ParamBinding::kHost into
// the arena: gradients are read and updated params written there, with no
// socket copy. The client that attached drives it with control messages
// (handle()); when it dies mid-step, client_lost() aborts the step
// (OffloadOptimizer::abort_step restores speculative updates and counters),
// so the arena holds the last completed step's params and a client that
// attaches again continues from there.
//
// Optimizer work runs on the session's pool (optimizer_pools.h) in turns its
// FairScheduler grants: a sync-mode grad_ready (the pass runs on the
// calling thread) and finish_step are one turn each; in overlap mode a
// bucket's pass runs on the optimizer's worker, so while other sessions
// share the pool the turn covers grad_ready and the wait for that pass
// (alone, the worker keeps overlapping buckets with no turn taken).
//
// Threading: handle() and client_lost() are called by the one connection
// that owns the session (Server serialises ownership); stats() from any
// thread (atomics and a mutex-guarded counter block).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/config/ds_config.h"
#include "daemon/grad_ring.h"
#include "daemon/optimizer_pools.h"
#include "daemon/protocol.h"
#include "daemon/shared_arena.h"
#include "engine/offload_optimizer.h"
#include "gpu/sim_device.h"

namespace strata::daemon {

struct ParamSlot {
  uint64_t param_offset = 0;  // in the arena
  uint64_t grad_offset = 0;
  uint64_t bytes = 0;  // numel * the compute dtype's size
};

// What a session would take, computed before anything is allocated so the
// server can check the quota first.
struct SessionPlan {
  config::DsConfig config;
  DType dtype = DType::kFloat32;
  std::vector<ParamSlot> slots;
  uint64_t arena_bytes = 0;
  // The arena plus the optimizer's own host tensors (fp32 master, exp_avg,
  // exp_avg_sq and gradient accumulator, and a compute-dtype copy).
  uint64_t charge_bytes = 0;
};
// `nvme_paths` (stratad's --nvme-path) replace the config's NVMe paths with
// <path>/<session> so sessions never share swap files.
absl::StatusOr<SessionPlan> plan_session(const std::string& name, const SessionSpec& spec,
                                         const std::vector<std::string>& nvme_paths);

struct SessionReply {
  nlohmann::json body = nlohmann::json::object();
  std::string blob;
};

class Session {
 public:
  // `pool` (may be null: TBB's default arena, no turns) is the stratad pool
  // the session is pinned to, shared with other sessions; it must outlive
  // the session. `pool_index` is reported by stats().
  static absl::StatusOr<std::unique_ptr<Session>> create(const std::string& name,
                                                         const SessionSpec& spec,
                                                         const Fingerprint& fp, SessionPlan plan,
                                                         OptimizerPool* pool, int pool_index = 0);
  ~Session();

  const std::string& name() const { return name_; }
  const SessionSpec& spec() const { return spec_; }
  const Fingerprint& fingerprint() const { return fp_; }
  uint64_t charge_bytes() const { return plan_.charge_bytes; }
  int pool_index() const { return pool_index_; }
  int arena_fd() const { return arena_->fd(); }
  int event_fd() const { return event_fd_; }

  // A new owner: the grad ring starts empty (what a dead client left in it
  // belonged to its aborted step).
  void reset_ring();
  // Takes the grad_ready entries the client pushed on the ring (in order).
  // A grad_ready that fails is kept and returned by the next wait_grads or
  // finish_step (which then aborts the step). InvalidArgument: the ring page
  // was overwritten or names an unknown bucket (a protocol error).
  absl::Status drain_ring();

  // The attach reply's fields: dtype, arena size, slots, step counters, the
  // groups' hyper-parameters as they are now (set_group may have changed
  // them since the spec; the spec, and so the fingerprint, keeps those the
  // session was created with), and
  // `created`: true for a new session, and for one whose params have not all
  // been given a value yet (its first client died during set_value), so the
  // attaching client gives them.
  nlohmann::json attach_body(bool created) const;
  // One control message from the owning client.
  absl::StatusOr<SessionReply> handle(MsgType type, const nlohmann::json& body,
                                      const std::string& blob);
  // The owner is gone (EOF, timeout, malformed message): a step in flight is
  // aborted with `why`. Returns what the abort reported.
  absl::Status client_lost(const std::string& why);

  // stratad's --state-dir: the session's checkpoint (dir/ckpt) and spec
  // (dir/spec.json), written between steps when stratad stops, read back
  // when it starts again (restore: the optimizer's load_state, which also
  // writes the params into the arena).
  absl::Status save_to(const std::string& dir);
  absl::Status restore_from(const std::string& dir);

  void set_owner(int pid) { owner_pid_.store(pid); }
  bool in_step() const { return in_step_; }  // the owner's thread only
  nlohmann::json stats() const;

 private:
  Session() = default;
  absl::StatusOr<SessionReply> set_value(const nlohmann::json& body, const std::string& blob);
  // A read_state / write_state request's param, state and element range
  // (checked against the param's size and the largest blob).
  struct StateRange {
    int64_t param = 0;
    engine::StateKind kind{};
    int64_t offset = 0;
    int64_t count = 0;
  };
  absl::StatusOr<StateRange> state_range(const nlohmann::json& body) const;
  absl::StatusOr<SessionReply> read_state(const nlohmann::json& body);
  absl::StatusOr<SessionReply> write_state(const nlohmann::json& body, const std::string& blob);
  absl::StatusOr<SessionReply> set_group(const nlohmann::json& body);
  // grad_ready of one bucket in the pool's turn (see the class comment).
  absl::Status bucket_ready(int bucket);
  // `job` in a turn of the pool's scheduler, charged `cost` bytes; at once
  // without a pool.
  absl::Status in_turn(uint64_t cost, const std::function<absl::Status()>& job,
                       bool more_soon = true);
  void count_step(const engine::OptimizerStepResult& r, double step_seconds);
  // The step is over (finished, failed or aborted).
  void end_step();
  // finish_step's (and finish_global's) reply, the step ended.
  absl::StatusOr<SessionReply> step_reply(const absl::StatusOr<engine::OptimizerStepResult>& r);

  std::string name_;
  SessionSpec spec_;
  Fingerprint fp_;
  SessionPlan plan_;
  std::unique_ptr<SharedArena> arena_;
  std::unique_ptr<gpu::SimDevice> device_;
  std::unique_ptr<engine::OffloadOptimizer> opt_;
  std::vector<std::vector<float>> pending_values_;  // set_value chunks in flight
  std::vector<uint64_t> pending_filled_;
  std::vector<bool> value_set_;  // set_value completed, per param
  // write_state chunks in flight: one (param, kind) at a time.
  struct PendingState {
    int64_t param = -1;
    engine::StateKind kind = engine::StateKind::kMaster;
    std::vector<float> values;
    uint64_t filled = 0;
  };
  PendingState pending_state_;
  bool in_step_ = false;
  bool finish_half_ = false;  // finish_local done, finish_global next
  int event_fd_ = -1;
  uint32_t ring_tail_ = 0;   // the daemon's own copy: the page's is only published
  absl::Status ring_error_;  // the first failed grad_ready from the ring this step

  OptimizerPool* pool_ = nullptr;
  int pool_index_ = 0;
  FairScheduler::SessionId sched_id_ = 0;
  bool overlap_ = false;               // grad_ready queues on the optimizer's worker
  std::vector<uint64_t> bucket_cost_;  // bytes of a bucket's pass (Adam-like: 28 B/param)
  uint64_t step_cost_ = 0;             // every bucket's
  double step_started_ = 0;            // monotonic seconds at begin_step

  // What `strata top` shows: totals and the last finished step's rates.
  struct Counters {
    uint64_t optimizer_bytes = 0;
    double optimizer_seconds = 0;
    uint64_t nvme_read_bytes = 0, nvme_write_bytes = 0;
    double last_step_seconds = 0;
    double last_optimizer_gb_per_s = 0;
    double last_nvme_read_gb_per_s = 0, last_nvme_write_gb_per_s = 0;
  };
  mutable std::mutex counters_mu_;
  Counters counters_;

  std::atomic<int> owner_pid_{0};
  std::atomic<int64_t> steps_{0};
  std::atomic<bool> in_step_stat_{false};
  std::atomic<int64_t> aborted_steps_{0};
};

}  // namespace strata::daemon
