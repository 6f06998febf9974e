#include "daemon/session.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "core/file_util.h"
#include "core/status.h"

namespace strata::daemon {
namespace {

// JSON has no inf / NaN: they travel as null.
nlohmann::json finite_or_null(double v) {
  return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr);
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// What a pass over a param moves (Adam-like: fp32 master, exp_avg,
// exp_avg_sq read and written, the gradient read, the compute copy written):
// the scheduler's cost unit, so sessions are charged in proportion to work.
constexpr uint64_t kPassBytesPerParam = 28;

}  // namespace

absl::StatusOr<SessionPlan> plan_session(const std::string& name, const SessionSpec& spec,
                                         const std::vector<std::string>& nvme_paths) {
  SessionPlan plan;
  std::vector<std::string> warnings;
  STRATA_ASSIGN_OR_RETURN(plan.config,
                          config::parse_ds_config(spec.config_json, "session config", &warnings));
  if (!nvme_paths.empty()) {
    auto& paths = plan.config.zero.offload_optimizer.nvme_paths;
    paths.clear();
    for (const auto& p : nvme_paths) paths.push_back(p + "/" + name);
  }
  plan.dtype = plan.config.fp16.enabled   ? DType::kFloat16
               : plan.config.bf16.enabled ? DType::kBFloat16
                                          : DType::kFloat32;
  const uint64_t dsize = dtype_size(plan.dtype);
  uint64_t offset = kRingBytes, numel = 0;  // the grad ring's page first
  for (const auto& p : spec.params) {
    ParamSlot s;
    s.bytes = p.numel * dsize;
    s.param_offset = offset;
    offset += arena_align(s.bytes);
    s.grad_offset = offset;
    offset += arena_align(s.bytes);
    plan.slots.push_back(s);
    numel += p.numel;
  }
  plan.arena_bytes = offset;
  plan.charge_bytes = offset + numel * (4 * 4 + dsize);
  return plan;
}

absl::StatusOr<std::unique_ptr<Session>> Session::create(const std::string& name,
                                                         const SessionSpec& spec,
                                                         const Fingerprint& fp, SessionPlan plan,
                                                         OptimizerPool* pool, int pool_index) {
  std::unique_ptr<Session> s(new Session);
  s->pool_ = pool;
  s->pool_index_ = pool_index;
  s->name_ = name;
  s->spec_ = spec;
  s->fp_ = fp;
  s->plan_ = std::move(plan);
  STRATA_ASSIGN_OR_RETURN(s->arena_, SharedArena::create("stratad-" + name, s->plan_.arena_bytes));
  if (pool != nullptr && pool->plan.node >= 0) {
    // Only matters with several pools; one node's binding changes nothing.
    (void)bind_to_node(s->arena_->base(), s->arena_->bytes(), pool->plan.node);
  }
  // Host mode, as the C API's: device copies are memcpys with no modelled
  // link time. kHost params keep nothing on it but the store's scratch.
  s->device_ = std::make_unique<gpu::SimDevice>(gpu::host_mode_options());
  engine::OffloadOptimizerOptions o;
  o.use_schedule = spec.use_schedule;
  o.speculation = spec.speculation;
  o.allow_buffered_io = spec.allow_buffered_io;
  o.exec.arena = pool != nullptr ? pool->arena.get() : nullptr;
  STRATA_ASSIGN_OR_RETURN(
      s->opt_, engine::OffloadOptimizer::create(s->plan_.config, s->device_.get(), std::move(o)),
      "session '" + name + "'");
  if (s->opt_->compute_dtype() != s->plan_.dtype) {
    return absl::InternalError(
        "the optimizer's compute dtype is not the one the arena was sized for");
  }
  for (size_t g = 0; g < spec.groups.size(); ++g) {
    s->opt_->add_group(spec.groups[g]);
  }
  for (size_t i = 0; i < spec.params.size(); ++i) {
    const auto& p = spec.params[i];
    const auto& slot = s->plan_.slots[i];
    engine::ParamDesc d{.name = p.name,
                        .numel = p.numel,
                        .bucket = p.bucket,
                        .group = p.group,
                        .binding = engine::ParamBinding::kHost,
                        .param = s->arena_->base() + slot.param_offset,
                        .grad = s->arena_->base() + slot.grad_offset};
    STRATA_RETURN_IF_ERROR(s->opt_->add_param(d).status(), "session '" + name + "'");
  }
  STRATA_RETURN_IF_ERROR(s->opt_->finalize(), "session '" + name + "'");
  s->overlap_ = s->plan_.config.strata.overlap != config::OverlapMode::kSync;
  s->bucket_cost_.assign(s->opt_->num_buckets(), 0);
  for (const auto& p : spec.params) s->bucket_cost_[p.bucket] += p.numel * kPassBytesPerParam;
  for (uint64_t c : s->bucket_cost_) s->step_cost_ += c;
  if (pool != nullptr) s->sched_id_ = pool->scheduler.add_session();
  s->event_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (s->event_fd_ < 0) return errno_status(errno, "eventfd for the session's grad ring");
  s->pending_values_.resize(spec.params.size());
  s->pending_filled_.assign(spec.params.size(), 0);
  s->value_set_.assign(spec.params.size(), false);
  return s;
}

Session::~Session() {
  if (pool_ != nullptr && sched_id_ != 0) pool_->scheduler.remove_session(sched_id_);
  if (event_fd_ >= 0) ::close(event_fd_);
}

absl::Status Session::in_turn(uint64_t cost, const std::function<absl::Status()>& job,
                              bool more_soon) {
  if (pool_ == nullptr) return job();
  return pool_->scheduler.run(sched_id_, cost, job, more_soon);
}

absl::Status Session::bucket_ready(int bucket) {
  if (!overlap_) {
    return in_turn(bucket_cost_[bucket], [&] { return opt_->grad_ready(bucket); });
  }
  if (pool_ == nullptr || pool_->scheduler.session_count() <= 1) return opt_->grad_ready(bucket);
  return in_turn(bucket_cost_[bucket], [&] {
    STRATA_RETURN_IF_ERROR(opt_->grad_ready(bucket));
    return opt_->wait_grads();
  });
}

void Session::count_step(const engine::OptimizerStepResult& r, double step_seconds) {
  const size_t nvme = static_cast<size_t>(offload::Tier::kNvme);
  std::lock_guard<std::mutex> lock(counters_mu_);
  Counters& c = counters_;
  c.optimizer_bytes += r.optimizer_bytes;
  c.optimizer_seconds += r.optimizer_seconds;
  // NVMe's counters: bytes_in written to disk, bytes_out read from it.
  c.nvme_write_bytes += r.bytes_in[nvme];
  c.nvme_read_bytes += r.bytes_out[nvme];
  c.last_step_seconds = step_seconds;
  c.last_optimizer_gb_per_s =
      r.optimizer_seconds > 0 ? double(r.optimizer_bytes) / r.optimizer_seconds / 1e9 : 0;
  c.last_nvme_read_gb_per_s = step_seconds > 0 ? double(r.bytes_out[nvme]) / step_seconds / 1e9 : 0;
  c.last_nvme_write_gb_per_s = step_seconds > 0 ? double(r.bytes_in[nvme]) / step_seconds / 1e9 : 0;
}

void Session::reset_ring() {
  auto* ring = reinterpret_cast<GradRingPage*>(arena_->base());
  std::atomic_ref<uint32_t>(ring->head).store(0);
  std::atomic_ref<uint32_t>(ring->tail).store(0);
  ring_tail_ = 0;
  uint64_t count;
  (void)!::read(event_fd_, &count, sizeof count);
}

absl::Status Session::drain_ring() {
  auto* ring = reinterpret_cast<GradRingPage*>(arena_->base());
  return ring_take(ring, &ring_tail_, opt_->num_buckets(), [&](int bucket) {
    if (!ring_error_.ok()) return;  // the step is lost already; its finish aborts it
    if (!in_step_) {
      ring_error_ = absl::FailedPreconditionError("grad_ready (from the ring) outside a step");
      return;
    }
    ring_error_ = bucket_ready(bucket);
  });
}

nlohmann::json Session::attach_body(bool created) const {
  nlohmann::json slots = nlohmann::json::array();
  for (const auto& s : plan_.slots) slots.push_back({s.param_offset, s.grad_offset});
  const bool all_set = std::all_of(value_set_.begin(), value_set_.end(), [](bool b) { return b; });
  nlohmann::json groups = nlohmann::json::array();
  for (int g = 0; g < opt_->num_groups(); ++g) groups.push_back(group_to_json(opt_->group(g)));
  return {{"created", created || (!all_set && opt_->steps() == 0)},
          {"dtype", std::string(dtype_name(plan_.dtype))},
          {"arena_bytes", arena_->bytes()},
          {"slots", slots},
          {"steps", opt_->steps()},
          {"optimizer_steps", opt_->optimizer_steps()},
          {"micro_batches", opt_->micro_batches()},
          {"num_buckets", opt_->num_buckets()},
          {"groups", groups},
          {"ring_offset", 0},
          {"ring_entries", kRingEntries}};
}

void Session::end_step() {
  finish_half_ = false;
  in_step_ = false;
  in_step_stat_.store(false);
  steps_.store(opt_->steps());
}

absl::StatusOr<SessionReply> Session::step_reply(
    const absl::StatusOr<engine::OptimizerStepResult>& r) {
  if (r.ok()) count_step(*r, now_seconds() - step_started_);
  end_step();
  if (!r.ok()) return r.status();
  SessionReply reply;
  reply.body = {{"step", r->step},
                {"micro_batches", opt_->micro_batches()},
                {"loss_scale", r->loss_scale},
                {"skipped", r->skipped},
                {"overflow", r->overflow},
                {"grad_norm", finite_or_null(r->grad_norm)},
                {"clip_coef", finite_or_null(r->clip_coef)},
                {"lr", r->lr},
                {"speculative_buckets", r->speculative_buckets},
                {"rolled_back_buckets", r->rolled_back_buckets},
                {"grad_seconds", r->grad_seconds},
                {"optimizer_seconds", r->optimizer_seconds}};
  // The scale the next step's loss must carry (a skipped step backed the
  // scaler off): a framework scaling its own backward needs it before its
  // next begin_step.
  if (opt_->loss_scaler() != nullptr) reply.body["next_loss_scale"] = opt_->loss_scaler()->scale();
  return reply;
}

absl::StatusOr<SessionReply> Session::handle(MsgType type, const nlohmann::json& body,
                                             const std::string& blob) {
  SessionReply reply;
  if (finish_half_ && type != MsgType::kFinishGlobal && type != MsgType::kAbortStep) {
    return absl::FailedPreconditionError(absl::StrCat(
        "'", type_name(type), "' between finish_local and finish_global; send finish_global"));
  }
  switch (type) {
    case MsgType::kSetValue:
      return set_value(body, blob);
    case MsgType::kReadState:
      return read_state(body);
    case MsgType::kWriteState:
      return write_state(body, blob);
    case MsgType::kSetGroup:
      return set_group(body);
    case MsgType::kSetOptimizerSteps: {
      STRATA_ASSIGN_OR_RETURN(int64_t steps, get_int(body, "steps", 0, INT64_MAX));
      STRATA_RETURN_IF_ERROR(opt_->set_optimizer_steps(steps));
      reply.body = {{"optimizer_steps", opt_->optimizer_steps()}};
      return reply;
    }
    case MsgType::kBeginStep: {
      std::optional<double> scale;
      if (body.contains("loss_scale")) {
        STRATA_ASSIGN_OR_RETURN(scale, get_double(body, "loss_scale", 0x1p-126, 0x1p126));
      }
      STRATA_ASSIGN_OR_RETURN(double used, opt_->begin_step(scale));
      ring_error_ = absl::OkStatus();
      in_step_ = true;
      in_step_stat_.store(true);
      step_started_ = now_seconds();
      reply.body = {{"loss_scale", used}};
      return reply;
    }
    case MsgType::kGradReady: {
      STRATA_ASSIGN_OR_RETURN(int64_t b, get_int(body, "bucket", 0, opt_->num_buckets() - 1));
      STRATA_RETURN_IF_ERROR(bucket_ready(static_cast<int>(b)));
      return reply;
    }
    case MsgType::kReportOverflow:
      if (!in_step_) return absl::FailedPreconditionError("report_overflow outside a step");
      opt_->report_overflow();
      return reply;
    case MsgType::kWaitGrads:
      STRATA_RETURN_IF_ERROR(ring_error_);
      STRATA_RETURN_IF_ERROR(opt_->wait_grads());
      return reply;
    case MsgType::kFinishStep:
    case MsgType::kFinishLocal: {
      // (Between the halves handle() refuses both, above.)
      const bool whole = type == MsgType::kFinishStep;
      absl::StatusOr<engine::OptimizerStepResult> r =
          absl::InternalError("finish_step did not run");
      absl::StatusOr<engine::StepGradStats> local = absl::InternalError("finish_local did not run");
      if (ring_error_.ok()) {
        // The decided passes (all of sync mode's but what grad_ready ran,
        // overlap's rollbacks and redos): one turn, charged a full step.
        // finish_local does the statistics only: the step is charged once,
        // to finish_global, which does those passes.
        absl::Status turn = in_turn(
            whole ? step_cost_ : 0,
            [&] {
              if (whole) {
                r = opt_->finish_step();
              } else {
                local = opt_->finish_step_local();
              }
              return absl::OkStatus();
            },
            /*more_soon=*/!whole);
        if (!turn.ok()) {
          r = opt_->abort_step(turn);
          local = r.status();
        }
      } else {
        r = opt_->abort_step(ring_error_);
        local = r.status();
      }
      ring_error_ = absl::OkStatus();
      if (!whole) {
        if (!local.ok()) {
          end_step();
          return local.status();
        }
        finish_half_ = true;
        reply.body = {{"sum_squares", local->sum_squares}, {"nonfinite", local->nonfinite}};
        return reply;
      }
      return step_reply(r);
    }
    case MsgType::kFinishGlobal: {
      if (!finish_half_) {
        return absl::FailedPreconditionError(
            "finish_global without finish_local in this step; send finish_local first");
      }
      STRATA_ASSIGN_OR_RETURN(double sum_sq, get_double(body, "sum_squares", 0, HUGE_VAL));
      STRATA_ASSIGN_OR_RETURN(bool nonfinite, get_bool(body, "nonfinite"));
      finish_half_ = false;
      absl::StatusOr<engine::OptimizerStepResult> r =
          absl::InternalError("finish_global did not run");
      absl::Status turn = in_turn(
          step_cost_,
          [&] {
            r = opt_->finish_step_global({.sum_squares = sum_sq, .nonfinite = nonfinite});
            return absl::OkStatus();
          },
          /*more_soon=*/false);
      if (!turn.ok()) r = opt_->abort_step(turn);
      return step_reply(r);
    }
    case MsgType::kAbortStep: {
      STRATA_ASSIGN_OR_RETURN(std::string why, get_string(body, "why", 4096));
      absl::Status s = opt_->abort_step(absl::AbortedError(why));
      end_step();
      ring_error_ = absl::OkStatus();
      reply.body = {{"message", std::string(s.message())}};
      return reply;
    }
    case MsgType::kSave: {
      STRATA_ASSIGN_OR_RETURN(std::string dir, get_string(body, "dir", 4096));
      auto meta = body.find("user_meta");
      if (meta == body.end() || !meta->is_object()) {
        return absl::InvalidArgumentError("field 'user_meta' is not an object");
      }
      STRATA_RETURN_IF_ERROR(opt_->save_state(dir, *meta));
      return reply;
    }
    case MsgType::kLoad: {
      STRATA_ASSIGN_OR_RETURN(std::string dir, get_string(body, "dir", 4096));
      STRATA_ASSIGN_OR_RETURN(bool weights_only, get_bool(body, "weights_only"));
      STRATA_RETURN_IF_ERROR(opt_->load_state(dir, weights_only));
      steps_.store(opt_->steps());
      reply.body = {{"steps", opt_->steps()},
                    {"optimizer_steps", opt_->optimizer_steps()},
                    {"micro_batches", opt_->micro_batches()}};
      return reply;
    }
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("message '", type_name(type), "' is not a session request"));
  }
}

absl::StatusOr<SessionReply> Session::set_value(const nlohmann::json& body,
                                                const std::string& blob) {
  if (in_step_) return absl::FailedPreconditionError("set_value during a step");
  STRATA_ASSIGN_OR_RETURN(int64_t p, get_int(body, "param", 0, int64_t(spec_.params.size()) - 1));
  const uint64_t numel = spec_.params[p].numel;
  STRATA_ASSIGN_OR_RETURN(int64_t offset, get_int(body, "offset", 0, int64_t(numel) - 1));
  STRATA_ASSIGN_OR_RETURN(
      int64_t count,
      get_int(body, "count", 1, std::min<int64_t>(numel - offset, kMaxBlobBytes / 4)));
  if (blob.size() != static_cast<uint64_t>(count) * 4) {
    return absl::InvalidArgumentError(
        absl::StrCat("set_value: blob of ", blob.size(), " bytes for ", count, " fp32 values"));
  }
  // Chunks arrive in order; a new offset 0 starts the param over.
  if (offset == 0) pending_filled_[p] = 0;
  if (static_cast<uint64_t>(offset) != pending_filled_[p]) {
    return absl::InvalidArgumentError(absl::StrCat("set_value: param ", p, " chunk at ", offset,
                                                   ", expected ", pending_filled_[p]));
  }
  auto& v = pending_values_[p];
  v.resize(numel);
  std::memcpy(v.data() + offset, blob.data(), blob.size());
  pending_filled_[p] += count;
  if (pending_filled_[p] == numel) {
    absl::Status s = opt_->set_value(static_cast<engine::ParamHandle>(p), v.data());
    std::vector<float>().swap(v);
    pending_filled_[p] = 0;
    STRATA_RETURN_IF_ERROR(s);
    value_set_[p] = true;
  }
  return SessionReply{};
}

absl::StatusOr<Session::StateRange> Session::state_range(const nlohmann::json& body) const {
  StateRange r;
  STRATA_ASSIGN_OR_RETURN(r.param, get_int(body, "param", 0, int64_t(spec_.params.size()) - 1));
  STRATA_ASSIGN_OR_RETURN(std::string kind_name, get_string(body, "kind", 16));
  STRATA_ASSIGN_OR_RETURN(r.kind, parse_state_kind(kind_name));
  const uint64_t numel = spec_.params[r.param].numel;
  STRATA_ASSIGN_OR_RETURN(r.offset, get_int(body, "offset", 0, int64_t(numel) - 1));
  STRATA_ASSIGN_OR_RETURN(
      r.count, get_int(body, "count", 1, std::min<int64_t>(numel - r.offset, kMaxBlobBytes / 4)));
  return r;
}

absl::StatusOr<SessionReply> Session::read_state(const nlohmann::json& body) {
  STRATA_ASSIGN_OR_RETURN(const StateRange range, state_range(body));
  const auto [p, kind, offset, count] = range;
  STRATA_ASSIGN_OR_RETURN(std::vector<float> values,
                          opt_->read_state(static_cast<engine::ParamHandle>(p), kind));
  SessionReply r;
  r.blob.assign(reinterpret_cast<const char*>(values.data() + offset), count * sizeof(float));
  return r;
}

absl::StatusOr<SessionReply> Session::write_state(const nlohmann::json& body,
                                                  const std::string& blob) {
  // The optimizer refuses it mid-step too; refusing the first chunk keeps
  // a half-received tensor from waiting for the step's end.
  if (in_step_) return absl::FailedPreconditionError("write_state during a step");
  STRATA_ASSIGN_OR_RETURN(const StateRange range, state_range(body));
  const auto [p, kind, offset, count] = range;
  if (blob.size() != static_cast<uint64_t>(count) * 4) {
    return absl::InvalidArgumentError(
        absl::StrCat("write_state: blob of ", blob.size(), " bytes for ", count, " fp32 values"));
  }
  // Chunks of one tensor arrive in order; an offset 0 starts a tensor over
  // (whatever was pending is dropped: its sender gave up on it).
  PendingState& ps = pending_state_;
  if (offset == 0) {
    ps.param = p;
    ps.kind = kind;
    ps.filled = 0;
  }
  if (ps.param != p || ps.kind != kind || static_cast<uint64_t>(offset) != ps.filled) {
    return absl::InvalidArgumentError(absl::StrCat("write_state: param ", p, " ",
                                                   state_kind_name(kind), " chunk at ", offset,
                                                   " does not continue the tensor in flight"));
  }
  const uint64_t numel = spec_.params[p].numel;
  ps.values.resize(numel);
  std::memcpy(ps.values.data() + offset, blob.data(), blob.size());
  ps.filled += count;
  if (ps.filled == numel) {
    absl::Status s = opt_->write_state(static_cast<engine::ParamHandle>(p), kind, ps.values.data());
    std::vector<float>().swap(ps.values);
    ps = PendingState{};
    STRATA_RETURN_IF_ERROR(s);
  }
  return SessionReply{};
}

absl::StatusOr<SessionReply> Session::set_group(const nlohmann::json& body) {
  STRATA_ASSIGN_OR_RETURN(int64_t g, get_int(body, "group", 0, int64_t(opt_->num_groups()) - 1));
  auto hp_json = body.find("hp");
  if (hp_json == body.end()) return absl::InvalidArgumentError("field 'hp' is missing");
  STRATA_ASSIGN_OR_RETURN(engine::GroupHyperparams hp, group_from_json(*hp_json, "field 'hp'"));
  // The optimizer's own checks (mid-step: FailedPrecondition) answer the
  // rest; the spec keeps the groups the session was created with (its
  // fingerprint), the optimizer has the ones in force.
  STRATA_RETURN_IF_ERROR(opt_->set_group(static_cast<int>(g), hp));
  SessionReply r;
  r.body = {{"hp", group_to_json(opt_->group(static_cast<int>(g)))}};
  return r;
}

absl::Status Session::save_to(const std::string& dir) {
  STRATA_RETURN_IF_ERROR(opt_->save_state(dir + "/ckpt", {{"stratad_session", name_}}),
                         "session " + name_);
  return write_file_atomic(
      dir + "/spec.json", nlohmann::json{{"session", name_}, {"spec", spec_to_json(spec_)}}.dump());
}

absl::Status Session::restore_from(const std::string& dir) {
  STRATA_RETURN_IF_ERROR(opt_->load_state(dir + "/ckpt", /*weights_only=*/false),
                         "session " + name_);
  steps_.store(opt_->steps());
  value_set_.assign(value_set_.size(), true);
  return absl::OkStatus();
}

absl::Status Session::client_lost(const std::string& why) {
  if (!in_step_) return absl::OkStatus();
  absl::Status s = opt_->abort_step(absl::AbortedError(why));
  end_step();
  aborted_steps_.fetch_add(1);
  return s;
}

nlohmann::json Session::stats() const {
  uint64_t used = 0;
  for (const auto& s : plan_.slots) used += 2 * s.bytes;
  const int pid = owner_pid_.load();
  Counters c;
  {
    std::lock_guard<std::mutex> lock(counters_mu_);
    c = counters_;
  }
  // The client's ring entries not yet taken (read racily: a figure for top).
  auto* ring = reinterpret_cast<GradRingPage*>(arena_->base());
  const uint32_t head = std::atomic_ref<uint32_t>(ring->head).load(std::memory_order_relaxed);
  const uint32_t tail = std::atomic_ref<uint32_t>(ring->tail).load(std::memory_order_relaxed);
  return {{"name", name_},
          {"pool", pool_index_},
          {"numa_node", pool_ != nullptr ? pool_->plan.node : 0},
          {"queued_jobs", pool_ != nullptr ? pool_->scheduler.queued_jobs(sched_id_) : 0},
          {"ring_depth", std::min<uint32_t>(head - tail, kRingEntries)},
          {"scheduled_bytes", pool_ != nullptr ? pool_->scheduler.charged_bytes(sched_id_) : 0},
          {"optimizer_bytes", c.optimizer_bytes},
          {"optimizer_seconds", c.optimizer_seconds},
          {"optimizer_gb_per_s", c.last_optimizer_gb_per_s},
          {"nvme_read_bytes", c.nvme_read_bytes},
          {"nvme_write_bytes", c.nvme_write_bytes},
          {"nvme_read_gb_per_s", c.last_nvme_read_gb_per_s},
          {"nvme_write_gb_per_s", c.last_nvme_write_gb_per_s},
          {"step_seconds", c.last_step_seconds},
          {"pid", pid},
          {"attached", pid != 0},
          {"step", steps_.load()},
          {"in_step", in_step_stat_.load()},
          {"aborted_steps", aborted_steps_.load()},
          {"arena_used_bytes", used},
          {"arena_total_bytes", arena_->bytes()},
          {"host_bytes", plan_.charge_bytes},
          {"dtype", std::string(dtype_name(plan_.dtype))}};
}

}  // namespace strata::daemon
