#include "daemon/session.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
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
                                                         tbb::task_arena* threads) {
  std::unique_ptr<Session> s(new Session);
  s->name_ = name;
  s->spec_ = spec;
  s->fp_ = fp;
  s->plan_ = std::move(plan);
  STRATA_ASSIGN_OR_RETURN(s->arena_, SharedArena::create("stratad-" + name, s->plan_.arena_bytes));
  // Host mode, as the C API's: device copies are memcpys with no modelled
  // link time. kHost params keep nothing on it but the store's scratch.
  gpu::SimDeviceOptions sim;
  sim.capacity_bytes = uint64_t{1} << 30;
  sim.h2d_gb_per_s = 1e6;
  sim.d2h_gb_per_s = 1e6;
  sim.copy_latency_us = 0;
  sim.costs.enabled = false;  // nor CUDA's synchronisation costs (as the C API's host mode)
  s->device_ = std::make_unique<gpu::SimDevice>(sim);
  engine::OffloadOptimizerOptions o;
  o.use_schedule = spec.use_schedule;
  o.speculation = spec.speculation;
  o.allow_buffered_io = spec.allow_buffered_io;
  o.exec.arena = threads;
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
  s->event_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (s->event_fd_ < 0) return errno_status(errno, "eventfd for the session's grad ring");
  s->pending_values_.resize(spec.params.size());
  s->pending_filled_.assign(spec.params.size(), 0);
  s->value_set_.assign(spec.params.size(), false);
  return s;
}

Session::~Session() {
  if (event_fd_ >= 0) ::close(event_fd_);
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
    ring_error_ = opt_->grad_ready(bucket);
  });
}

nlohmann::json Session::attach_body(bool created) const {
  nlohmann::json slots = nlohmann::json::array();
  for (const auto& s : plan_.slots) slots.push_back({s.param_offset, s.grad_offset});
  const bool all_set = std::all_of(value_set_.begin(), value_set_.end(), [](bool b) { return b; });
  return {{"created", created || (!all_set && opt_->steps() == 0)},
          {"dtype", std::string(dtype_name(plan_.dtype))},
          {"arena_bytes", arena_->bytes()},
          {"slots", slots},
          {"steps", opt_->steps()},
          {"optimizer_steps", opt_->optimizer_steps()},
          {"num_buckets", opt_->num_buckets()},
          {"ring_offset", 0},
          {"ring_entries", kRingEntries}};
}

absl::StatusOr<SessionReply> Session::handle(MsgType type, const nlohmann::json& body,
                                             const std::string& blob) {
  SessionReply reply;
  switch (type) {
    case MsgType::kSetValue:
      return set_value(body, blob);
    case MsgType::kReadState:
      return read_state(body);
    case MsgType::kBeginStep: {
      std::optional<double> scale;
      if (body.contains("loss_scale")) {
        STRATA_ASSIGN_OR_RETURN(scale, get_double(body, "loss_scale", 0x1p-126, 0x1p126));
      }
      STRATA_ASSIGN_OR_RETURN(double used, opt_->begin_step(scale));
      ring_error_ = absl::OkStatus();
      in_step_ = true;
      in_step_stat_.store(true);
      reply.body = {{"loss_scale", used}};
      return reply;
    }
    case MsgType::kGradReady: {
      STRATA_ASSIGN_OR_RETURN(int64_t b, get_int(body, "bucket", 0, opt_->num_buckets() - 1));
      STRATA_RETURN_IF_ERROR(opt_->grad_ready(static_cast<int>(b)));
      return reply;
    }
    case MsgType::kWaitGrads:
      STRATA_RETURN_IF_ERROR(ring_error_);
      STRATA_RETURN_IF_ERROR(opt_->wait_grads());
      return reply;
    case MsgType::kFinishStep: {
      absl::StatusOr<engine::OptimizerStepResult> r =
          ring_error_.ok()
              ? opt_->finish_step()
              : absl::StatusOr<engine::OptimizerStepResult>(opt_->abort_step(ring_error_));
      ring_error_ = absl::OkStatus();
      in_step_ = false;
      in_step_stat_.store(false);
      steps_.store(opt_->steps());
      if (!r.ok()) return r.status();
      reply.body = {{"step", r->step},
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
      return reply;
    }
    case MsgType::kAbortStep: {
      STRATA_ASSIGN_OR_RETURN(std::string why, get_string(body, "why", 4096));
      absl::Status s = opt_->abort_step(absl::AbortedError(why));
      in_step_ = false;
      in_step_stat_.store(false);
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
      reply.body = {{"steps", opt_->steps()}, {"optimizer_steps", opt_->optimizer_steps()}};
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

absl::StatusOr<SessionReply> Session::read_state(const nlohmann::json& body) {
  STRATA_ASSIGN_OR_RETURN(int64_t p, get_int(body, "param", 0, int64_t(spec_.params.size()) - 1));
  STRATA_ASSIGN_OR_RETURN(std::string kind_name, get_string(body, "kind", 16));
  STRATA_ASSIGN_OR_RETURN(engine::StateKind kind, parse_state_kind(kind_name));
  const uint64_t numel = spec_.params[p].numel;
  STRATA_ASSIGN_OR_RETURN(int64_t offset, get_int(body, "offset", 0, int64_t(numel) - 1));
  STRATA_ASSIGN_OR_RETURN(
      int64_t count,
      get_int(body, "count", 1, std::min<int64_t>(numel - offset, kMaxBlobBytes / 4)));
  STRATA_ASSIGN_OR_RETURN(std::vector<float> values,
                          opt_->read_state(static_cast<engine::ParamHandle>(p), kind));
  SessionReply r;
  r.blob.assign(reinterpret_cast<const char*>(values.data() + offset), count * sizeof(float));
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
  in_step_ = false;
  in_step_stat_.store(false);
  aborted_steps_.fetch_add(1);
  steps_.store(opt_->steps());
  return s;
}

nlohmann::json Session::stats() const {
  uint64_t used = 0;
  for (const auto& s : plan_.slots) used += 2 * s.bytes;
  const int pid = owner_pid_.load();
  return {{"name", name_},
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
