#include "daemon/remote_optimizer.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "core/build_info.h"
#include "core/status.h"
#include "daemon/grad_ring.h"

namespace strata::daemon {
namespace {

absl::Status daemon_error(const std::string& socket_path, const absl::Status& s) {
  if (absl::IsUnavailable(s) || absl::IsDataLoss(s)) {
    return absl::UnavailableError(absl::StrCat("stratad at ", socket_path, " is gone (",
                                               s.message(),
                                               "); is it running? attach again once it is"));
  }
  if (absl::IsDeadlineExceeded(s)) {
    return absl::DeadlineExceededError(
        absl::StrCat("stratad at ", socket_path, " did not answer: ", s.message()));
  }
  return s;
}

double finite_or_inf(const nlohmann::json& body, const char* key) {
  auto it = body.find(key);
  if (it == body.end() || !it->is_number()) return std::numeric_limits<double>::infinity();
  return it->get<double>();
}

}  // namespace

absl::StatusOr<int> connect_to_stratad(const std::string& path, int timeout_ms) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof addr.sun_path) {
    return absl::InvalidArgumentError(absl::StrCat("socket path '", path, "' too long or empty"));
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return errno_status(errno, "socket");
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
    const int err = errno;
    ::close(fd);
    return absl::UnavailableError(absl::StrCat("cannot connect to stratad at ", path, ": ",
                                               std::strerror(err),
                                               " (start it with `stratad --socket ", path, "`)"));
  }
  absl::Status s = send_frame(fd, MsgType::kHello,
                              {{"protocol_version", kProtocolVersion},
                               {"strata_version", std::string(build_info().version)},
                               {"pid", ::getpid()}},
                              {}, {}, timeout_ms);
  absl::StatusOr<Frame> reply =
      s.ok() ? recv_frame(fd, {.idle_timeout_ms = timeout_ms, .body_timeout_ms = timeout_ms})
             : absl::StatusOr<Frame>(s);
  if (reply.ok() && reply->type == MsgType::kError) reply = status_from_error(reply->body);
  if (!reply.ok()) {
    ::close(fd);
    return annotate(daemon_error(path, reply.status()), "stratad handshake");
  }
  return fd;
}

absl::StatusOr<std::unique_ptr<RemoteOptimizer>> RemoteOptimizer::attach(
    const RemoteOptions& options, const SessionSpec& spec) {
  std::unique_ptr<RemoteOptimizer> r(new RemoteOptimizer);
  r->socket_path_ = options.socket_path.empty() ? default_socket_path() : options.socket_path;
  r->timeout_ms_ = options.timeout_ms;
  STRATA_RETURN_IF_ERROR(check_session_name(options.session));
  STRATA_ASSIGN_OR_RETURN(Fingerprint fp, fingerprint(spec));
  STRATA_ASSIGN_OR_RETURN(r->fd_, connect_to_stratad(r->socket_path_, options.timeout_ms));
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(fp.combined()));
  STRATA_ASSIGN_OR_RETURN(Frame f, r->call(MsgType::kAttach, {{"session", options.session},
                                                              {"fingerprint", hex},
                                                              {"spec", spec_to_json(spec)}}));
  if (f.fds.size() != 2) {
    f.close_fds();
    return absl::InternalError("stratad's attach reply did not carry the arena and its eventfd");
  }
  const int arena_fd = f.fds[0];
  r->event_fd_ = f.fds[1];
  f.fds.clear();
  r->use_ring_ = options.use_ring;
  auto bytes = get_int(f.body, "arena_bytes", kRingBytes + 1, int64_t{1} << 50);
  if (!bytes.ok()) {
    ::close(arena_fd);
    return bytes.status();
  }
  STRATA_ASSIGN_OR_RETURN(r->arena_, SharedArena::map_client(arena_fd, uint64_t(*bytes)));
  STRATA_ASSIGN_OR_RETURN(bool created, get_bool(f.body, "created"));
  STRATA_ASSIGN_OR_RETURN(r->steps_, get_int(f.body, "steps", 0, INT64_MAX));
  STRATA_ASSIGN_OR_RETURN(r->optimizer_steps_, get_int(f.body, "optimizer_steps", 0, INT64_MAX));
  STRATA_ASSIGN_OR_RETURN(r->micro_batches_, get_int(f.body, "micro_batches", 0, INT64_MAX));
  STRATA_ASSIGN_OR_RETURN(int64_t nb, get_int(f.body, "num_buckets", 0, kMaxBucket));
  STRATA_ASSIGN_OR_RETURN(std::string dtype, get_string(f.body, "dtype", 8));
  r->created_ = created;
  r->num_buckets_ = static_cast<int>(nb);
  if (dtype == "fp32") {
    r->dtype_ = DType::kFloat32;
  } else if (dtype == "fp16") {
    r->dtype_ = DType::kFloat16;
  } else if (dtype == "bf16") {
    r->dtype_ = DType::kBFloat16;
  } else {
    return absl::InternalError("stratad sent an unknown dtype " + dtype);
  }
  auto slots = f.body.find("slots");
  if (slots == f.body.end() || !slots->is_array() || slots->size() != spec.params.size()) {
    return absl::InternalError("stratad's attach reply has no slot per param");
  }
  for (size_t i = 0; i < spec.params.size(); ++i) {
    const auto& s = (*slots)[i];
    const uint64_t bytes_each = spec.params[i].numel * dtype_size(r->dtype_);
    if (!s.is_array() || s.size() != 2 || !s[0].is_number_unsigned() ||
        !s[1].is_number_unsigned() || s[0].get<uint64_t>() > r->arena_->bytes() - bytes_each ||
        s[1].get<uint64_t>() > r->arena_->bytes() - bytes_each) {
      return absl::InternalError(
          absl::StrCat("stratad's slot for param ", i, " is outside the arena"));
    }
    r->slots_.emplace_back(s[0].get<uint64_t>(), s[1].get<uint64_t>());
    r->numel_.push_back(spec.params[i].numel);
  }
  auto groups = f.body.find("groups");
  if (groups == f.body.end() || !groups->is_array() || groups->size() != spec.groups.size()) {
    return absl::InternalError("stratad's attach reply has no hyper-parameters per group");
  }
  for (size_t g = 0; g < groups->size(); ++g) {
    STRATA_ASSIGN_OR_RETURN(engine::GroupHyperparams hp,
                            group_from_json((*groups)[g], absl::StrCat("stratad's group ", g)));
    r->groups_.push_back(hp);
  }
  return r;
}

RemoteOptimizer::~RemoteOptimizer() {
  if (fd_ >= 0) ::close(fd_);
  if (event_fd_ >= 0) ::close(event_fd_);
}

void* RemoteOptimizer::param(int p) const { return arena_->base() + slots_.at(p).first; }
void* RemoteOptimizer::grad(int p) const { return arena_->base() + slots_.at(p).second; }

absl::StatusOr<Frame> RemoteOptimizer::call(MsgType type, const nlohmann::json& body,
                                            absl::string_view blob) {
  if (fd_ < 0) {
    return absl::FailedPreconditionError("the connection to stratad is closed; attach again");
  }
  absl::Status s = send_frame(fd_, type, body, blob, {}, timeout_ms_);
  absl::StatusOr<Frame> reply =
      s.ok() ? recv_frame(fd_, {.idle_timeout_ms = timeout_ms_,
                                .body_timeout_ms = timeout_ms_,
                                .max_fds = type == MsgType::kAttach ? 2u : 0u})
             : absl::StatusOr<Frame>(s);
  if (!reply.ok()) {
    ::close(fd_);
    fd_ = -1;
    return daemon_error(socket_path_, reply.status());
  }
  if (reply->type == MsgType::kError) {
    reply->close_fds();
    absl::Status e = status_from_error(reply->body);
    return absl::Status(e.code(), absl::StrCat("stratad: ", e.message()));
  }
  if (reply->type != MsgType::kOk) {
    return absl::InternalError(
        absl::StrCat("stratad answered ", type_name(type), " with ", type_name(reply->type)));
  }
  return reply;
}

absl::Status RemoteOptimizer::set_value(int p, const float* values) {
  if (p < 0 || p >= num_params()) return absl::InvalidArgumentError("set_value: unknown param");
  const uint64_t numel = numel_[p], chunk = kMaxBlobBytes / 4;
  for (uint64_t off = 0; off < numel; off += chunk) {
    const uint64_t count = std::min(chunk, numel - off);
    STRATA_RETURN_IF_ERROR(
        call(MsgType::kSetValue, {{"param", p}, {"offset", off}, {"count", count}},
             absl::string_view(reinterpret_cast<const char*>(values + off), count * 4))
            .status());
  }
  return absl::OkStatus();
}

absl::StatusOr<double> RemoteOptimizer::begin_step(std::optional<double> loss_scale) {
  nlohmann::json body = nlohmann::json::object();
  if (loss_scale) body["loss_scale"] = *loss_scale;
  STRATA_ASSIGN_OR_RETURN(Frame f, call(MsgType::kBeginStep, body));
  next_loss_scale_.reset();  // the reply's scale is the one in force now
  return get_double(f.body, "loss_scale", 0, std::numeric_limits<double>::max());
}

absl::Status RemoteOptimizer::grad_ready(int bucket) {
  if (bucket < 0 || bucket >= num_buckets_) {
    return absl::InvalidArgumentError(
        absl::StrCat("grad_ready: bucket ", bucket, " of ", num_buckets_));
  }
  if (use_ring_ && fd_ >= 0 &&
      ring_push(reinterpret_cast<GradRingPage*>(arena_->base()), static_cast<uint32_t>(bucket))) {
    const uint64_t one = 1;
    if (::write(event_fd_, &one, sizeof one) == sizeof one) return absl::OkStatus();
    // An eventfd at its limit is still readable: the daemon wakes anyway.
    if (errno == EAGAIN) return absl::OkStatus();
    return errno_status(errno, "waking stratad (eventfd)");
  }
  // Ring full or off: the socket (the daemon drains the ring first).
  return call(MsgType::kGradReady, {{"bucket", bucket}}).status();
}

absl::Status RemoteOptimizer::wait_grads() {
  return call(MsgType::kWaitGrads, nlohmann::json::object()).status();
}

absl::Status RemoteOptimizer::report_overflow() {
  return call(MsgType::kReportOverflow, nlohmann::json::object()).status();
}

absl::StatusOr<engine::OptimizerStepResult> RemoteOptimizer::finish_step() {
  STRATA_ASSIGN_OR_RETURN(Frame f, call(MsgType::kFinishStep, nlohmann::json::object()));
  return step_result(f);
}

absl::StatusOr<engine::StepGradStats> RemoteOptimizer::finish_step_local() {
  STRATA_ASSIGN_OR_RETURN(Frame f, call(MsgType::kFinishLocal, nlohmann::json::object()));
  engine::StepGradStats stats;
  STRATA_ASSIGN_OR_RETURN(stats.sum_squares, get_double(f.body, "sum_squares", 0, HUGE_VAL));
  STRATA_ASSIGN_OR_RETURN(stats.nonfinite, get_bool(f.body, "nonfinite"));
  return stats;
}

absl::StatusOr<engine::OptimizerStepResult> RemoteOptimizer::finish_step_global(
    engine::StepGradStats global) {
  // JSON has no inf: a non-finite sum travels as the flag.
  const bool nonfinite = global.nonfinite || !std::isfinite(global.sum_squares);
  STRATA_ASSIGN_OR_RETURN(
      Frame f, call(MsgType::kFinishGlobal, {{"sum_squares", nonfinite ? 0.0 : global.sum_squares},
                                             {"nonfinite", nonfinite}}));
  return step_result(f);
}

absl::StatusOr<engine::OptimizerStepResult> RemoteOptimizer::step_result(const Frame& f) {
  engine::OptimizerStepResult r;
  STRATA_ASSIGN_OR_RETURN(r.step, get_int(f.body, "step", 0, INT64_MAX));
  STRATA_ASSIGN_OR_RETURN(r.loss_scale, get_double(f.body, "loss_scale", 0, 1e300));
  STRATA_ASSIGN_OR_RETURN(r.skipped, get_bool(f.body, "skipped"));
  STRATA_ASSIGN_OR_RETURN(r.overflow, get_bool(f.body, "overflow"));
  r.grad_norm = finite_or_inf(f.body, "grad_norm");
  r.clip_coef = finite_or_inf(f.body, "clip_coef");
  r.lr = f.body.value("lr", 0.0);
  r.speculative_buckets = f.body.value("speculative_buckets", 0);
  r.rolled_back_buckets = f.body.value("rolled_back_buckets", 0);
  r.grad_seconds = f.body.value("grad_seconds", 0.0);
  r.optimizer_seconds = f.body.value("optimizer_seconds", 0.0);
  steps_ = r.step;
  micro_batches_ = f.body.value("micro_batches", micro_batches_);
  if (!r.skipped) ++optimizer_steps_;
  if (f.body.contains("next_loss_scale")) {
    STRATA_ASSIGN_OR_RETURN(next_loss_scale_, get_double(f.body, "next_loss_scale", 0, 1e300));
  }
  return r;
}

absl::Status RemoteOptimizer::abort_step(absl::Status why) {
  auto f = call(MsgType::kAbortStep, {{"why", std::string(why.message()).substr(0, 4096)}});
  if (!f.ok())
    return annotate(why, absl::StrCat("abort through stratad failed: ", f.status().message()));
  return absl::Status(why.code(), f->body.value("message", std::string(why.message())));
}

absl::StatusOr<std::vector<float>> RemoteOptimizer::read_state(int p, engine::StateKind kind) {
  if (p < 0 || p >= num_params()) return absl::InvalidArgumentError("read_state: unknown param");
  const uint64_t numel = numel_[p], chunk = kMaxBlobBytes / 4;
  std::vector<float> out(numel);
  for (uint64_t off = 0; off < numel; off += chunk) {
    const uint64_t count = std::min(chunk, numel - off);
    STRATA_ASSIGN_OR_RETURN(
        Frame f,
        call(MsgType::kReadState,
             {{"param", p}, {"kind", state_kind_name(kind)}, {"offset", off}, {"count", count}}));
    if (f.blob.size() != count * 4) return absl::InternalError("stratad: short read_state reply");
    std::memcpy(out.data() + off, f.blob.data(), f.blob.size());
  }
  return out;
}

absl::Status RemoteOptimizer::write_state(int p, engine::StateKind kind, const float* values) {
  if (p < 0 || p >= num_params()) return absl::InvalidArgumentError("write_state: unknown param");
  const uint64_t numel = numel_[p], chunk = kMaxBlobBytes / 4;
  for (uint64_t off = 0; off < numel; off += chunk) {
    const uint64_t count = std::min(chunk, numel - off);
    STRATA_RETURN_IF_ERROR(
        call(MsgType::kWriteState,
             {{"param", p}, {"kind", state_kind_name(kind)}, {"offset", off}, {"count", count}},
             absl::string_view(reinterpret_cast<const char*>(values + off), count * 4))
            .status());
  }
  return absl::OkStatus();
}

absl::Status RemoteOptimizer::set_group(int g, const engine::GroupHyperparams& hp) {
  if (g < 0 || g >= num_groups()) {
    return absl::InvalidArgumentError(
        absl::StrCat("set_group: no group ", g, " (", num_groups(), " groups)"));
  }
  STRATA_ASSIGN_OR_RETURN(Frame f,
                          call(MsgType::kSetGroup, {{"group", g}, {"hp", group_to_json(hp)}}));
  auto now = f.body.find("hp");
  if (now == f.body.end()) return absl::InternalError("stratad's set_group reply has no hp");
  STRATA_ASSIGN_OR_RETURN(groups_[g], group_from_json(*now, "stratad's set_group reply"));
  return absl::OkStatus();
}

absl::Status RemoteOptimizer::set_optimizer_steps(int64_t steps) {
  if (steps < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("set_optimizer_steps: the step count must be >= 0 (got ", steps, ")"));
  }
  STRATA_ASSIGN_OR_RETURN(Frame f, call(MsgType::kSetOptimizerSteps, {{"steps", steps}}));
  STRATA_ASSIGN_OR_RETURN(optimizer_steps_, get_int(f.body, "optimizer_steps", 0, INT64_MAX));
  return absl::OkStatus();
}

std::vector<float> RemoteOptimizer::read_param(int p) const {
  const uint64_t n = numel_.at(p);
  std::vector<float> out(n);
  const void* src = param(p);
  switch (dtype_) {
    case DType::kFloat32:
      std::memcpy(out.data(), src, n * sizeof(float));
      break;
    case DType::kFloat16:
      convert_fp16_to_fp32(static_cast<const uint16_t*>(src), out.data(), n);
      break;
    case DType::kBFloat16:
      convert_bf16_to_fp32(static_cast<const uint16_t*>(src), out.data(), n);
      break;
  }
  return out;
}

absl::Status RemoteOptimizer::save_state(const std::string& dir, const nlohmann::json& user_meta) {
  return call(MsgType::kSave, {{"dir", dir}, {"user_meta", user_meta}}).status();
}

absl::Status RemoteOptimizer::load_state(const std::string& dir, bool weights_only) {
  STRATA_ASSIGN_OR_RETURN(Frame f,
                          call(MsgType::kLoad, {{"dir", dir}, {"weights_only", weights_only}}));
  steps_ = f.body.value("steps", steps_);
  optimizer_steps_ = f.body.value("optimizer_steps", optimizer_steps_);
  micro_batches_ = f.body.value("micro_batches", micro_batches_);
  next_loss_scale_.reset();  // the checkpoint's scaler replaced it
  return absl::OkStatus();
}

absl::Status RemoteOptimizer::detach(bool end_session) {
  absl::Status s = call(MsgType::kDetach, {{"end_session", end_session}}).status();
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  return s;
}

absl::StatusOr<nlohmann::json> RemoteOptimizer::stats(const std::string& socket_path,
                                                      int timeout_ms) {
  return one_request(socket_path, MsgType::kStats, nlohmann::json::object(), timeout_ms);
}

absl::Status RemoteOptimizer::end_session(const std::string& socket_path,
                                          const std::string& session, int timeout_ms) {
  return one_request(socket_path, MsgType::kEndSession, {{"session", session}}, timeout_ms)
      .status();
}

absl::StatusOr<nlohmann::json> RemoteOptimizer::one_request(const std::string& socket_path,
                                                            MsgType type,
                                                            const nlohmann::json& body,
                                                            int timeout_ms) {
  STRATA_ASSIGN_OR_RETURN(int fd, connect_to_stratad(socket_path, timeout_ms));
  absl::Status s = send_frame(fd, type, body, {}, {}, timeout_ms);
  auto f = s.ok() ? recv_frame(fd, {.idle_timeout_ms = timeout_ms, .body_timeout_ms = timeout_ms})
                  : absl::StatusOr<Frame>(s);
  ::close(fd);
  if (!f.ok()) return daemon_error(socket_path, f.status());
  if (f->type == MsgType::kError) return status_from_error(f->body);
  return f->body;
}

}  // namespace strata::daemon
