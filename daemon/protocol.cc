#include "daemon/protocol.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace strata::daemon {
namespace {

using Clock = std::chrono::steady_clock;

int remaining_ms(Clock::time_point deadline) {
  const auto left =
      std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left < 0 ? 0 : static_cast<int>(left);
}

// Waits until `sock` has `events`, `timeout_ms` at most (-1: forever, in
// 100 ms slices so `stop` is seen).
absl::Status wait_for(int sock, short events, int timeout_ms, const std::atomic<bool>* stop,
                      absl::string_view what, const RecvOptions* wake = nullptr) {
  const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms < 0 ? 0 : timeout_ms);
  for (;;) {
    if (stop != nullptr && stop->load(std::memory_order_acquire)) {
      return absl::CancelledError("stratad is shutting down");
    }
    int slice = 100;
    if (timeout_ms >= 0) {
      const int left = remaining_ms(deadline);
      if (left == 0) {
        return absl::DeadlineExceededError(
            absl::StrCat("timed out after ", timeout_ms, " ms waiting to ", what));
      }
      slice = std::min(slice, left);
    }
    pollfd p[2] = {{.fd = sock, .events = events, .revents = 0},
                   {.fd = wake != nullptr ? wake->wake_fd : -1, .events = POLLIN, .revents = 0}};
    const int r = ::poll(p, wake != nullptr && wake->wake_fd >= 0 ? 2 : 1, slice);
    if (r < 0) {
      if (errno == EINTR) continue;
      return errno_status(errno, "poll");
    }
    if (r > 0 && (p[1].revents & POLLIN) != 0) {
      uint64_t count;
      (void)!::read(wake->wake_fd, &count, sizeof count);  // nonblocking: 0 or the count
      if (wake->on_wake) STRATA_RETURN_IF_ERROR(wake->on_wake());
    }
    // POLLHUP/POLLERR: let the read or write report what happened.
    if (r > 0 && p[0].revents != 0) return absl::OkStatus();
  }
}

// Reads exactly `n` bytes; `*got_any` tells EOF-before-anything apart.
absl::Status read_exact(int sock, char* out, size_t n, int first_timeout_ms, int rest_timeout_ms,
                        const RecvOptions& o, std::vector<int>* fds, bool* started) {
  size_t done = 0;
  while (done < n) {
    const int t = *started ? rest_timeout_ms : first_timeout_ms;
    STRATA_RETURN_IF_ERROR(wait_for(sock, POLLIN, t, *started ? nullptr : o.stop,
                                    *started ? "read the rest of a message" : "read a message",
                                    *started ? nullptr : &o));
    iovec iov{.iov_base = out + done, .iov_len = n - done};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)];
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    const ssize_t r = ::recvmsg(sock, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (r < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      if (errno == ECONNRESET && !*started)
        return absl::UnavailableError("peer closed the connection");
      return errno_status(errno, "recvmsg");
    }
    bool bad_fd = (msg.msg_flags & MSG_CTRUNC) != 0;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; ++i) {
        int received;
        std::memcpy(&received, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        if (fds->size() < o.max_fds) {
          fds->push_back(received);
        } else {
          ::close(received);
          bad_fd = true;
        }
      }
    }
    if (bad_fd)
      return absl::InvalidArgumentError("a message carried an unexpected file descriptor");
    if (r == 0) {
      if (!*started) return absl::UnavailableError("peer closed the connection");
      return absl::DataLossError(
          absl::StrCat("peer closed the connection mid-message (", done, " of ", n, " bytes)"));
    }
    *started = true;
    done += static_cast<size_t>(r);
  }
  return absl::OkStatus();
}

absl::Status write_all(int sock, const char* data, size_t n, const std::vector<int>& fds,
                       int timeout_ms) {
  if (fds.size() > 4) return absl::InvalidArgumentError("at most 4 descriptors per message");
  const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  size_t done = 0;
  while (done < n) {
    STRATA_RETURN_IF_ERROR(
        wait_for(sock, POLLOUT, remaining_ms(deadline), nullptr, "send a message"));
    iovec iov{.iov_base = const_cast<char*>(data + done), .iov_len = n - done};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)];
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (!fds.empty() && done == 0) {
      const size_t bytes = sizeof(int) * fds.size();
      msg.msg_control = control;
      msg.msg_controllen = CMSG_SPACE(bytes);
      cmsghdr* c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(bytes);
      std::memcpy(CMSG_DATA(c), fds.data(), bytes);
    }
    const ssize_t r = ::sendmsg(sock, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (r < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      if (errno == EPIPE || errno == ECONNRESET) {
        return absl::UnavailableError("peer closed the connection");
      }
      return errno_status(errno, "sendmsg");
    }
    done += static_cast<size_t>(r);
  }
  return absl::OkStatus();
}

uint64_t hash_text(const std::string& s) { return XXH3_64bits(s.data(), s.size()); }

std::string hex(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

absl::string_view speculation_name(engine::SpeculationPolicy p) {
  switch (p) {
    case engine::SpeculationPolicy::kAuto:
      return "auto";
    case engine::SpeculationPolicy::kAlways:
      return "always";
    case engine::SpeculationPolicy::kNever:
      return "never";
  }
  return "auto";
}

// The ds_config with sorted keys, split into the dtype sections and the rest.
absl::Status split_config(const std::string& text, std::string* dtypes, std::string* rest) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError("spec.config: not a JSON object");
  }
  nlohmann::json d = nlohmann::json::object();
  for (const char* key : {"fp16", "bf16", "bfloat16"}) {
    if (j.contains(key)) {
      d[key] = j[key];
      j.erase(key);
    }
  }
  *dtypes = d.dump();
  *rest = j.dump();
  return absl::OkStatus();
}

}  // namespace

void Frame::close_fds() {
  for (int fd : fds) ::close(fd);
  fds.clear();
}

bool is_known_type(uint16_t t) { return (t >= 1 && t <= kLastRequestType) || t == 100 || t == 101; }

nlohmann::json group_to_json(const engine::GroupHyperparams& g) {
  return {{"lr", g.lr},
          {"beta1", g.beta1},
          {"beta2", g.beta2},
          {"eps", g.eps},
          {"weight_decay", g.weight_decay},
          {"bias_correction", g.bias_correction}};
}

absl::StatusOr<engine::GroupHyperparams> group_from_json(const nlohmann::json& g,
                                                         const std::string& where) {
  if (!g.is_object()) return absl::InvalidArgumentError(where + ": not an object");
  engine::GroupHyperparams hp;
  STRATA_ASSIGN_OR_RETURN(hp.lr, get_double(g, "lr", 0, 1e6), where);
  STRATA_ASSIGN_OR_RETURN(hp.beta1, get_double(g, "beta1", 0, 1), where);
  STRATA_ASSIGN_OR_RETURN(hp.beta2, get_double(g, "beta2", 0, 1), where);
  STRATA_ASSIGN_OR_RETURN(hp.eps, get_double(g, "eps", 0, 1), where);
  STRATA_ASSIGN_OR_RETURN(hp.weight_decay, get_double(g, "weight_decay", 0, 1e6), where);
  STRATA_ASSIGN_OR_RETURN(hp.bias_correction, get_bool(g, "bias_correction"), where);
  return hp;
}

absl::string_view type_name(MsgType type) {
  switch (type) {
    case MsgType::kHello:
      return "hello";
    case MsgType::kAttach:
      return "attach";
    case MsgType::kSetValue:
      return "set_value";
    case MsgType::kBeginStep:
      return "begin_step";
    case MsgType::kGradReady:
      return "grad_ready";
    case MsgType::kWaitGrads:
      return "wait_grads";
    case MsgType::kFinishStep:
      return "finish_step";
    case MsgType::kAbortStep:
      return "abort_step";
    case MsgType::kReadState:
      return "read_state";
    case MsgType::kSave:
      return "save";
    case MsgType::kLoad:
      return "load";
    case MsgType::kDetach:
      return "detach";
    case MsgType::kStats:
      return "stats";
    case MsgType::kReportOverflow:
      return "report_overflow";
    case MsgType::kEndSession:
      return "end_session";
    case MsgType::kWriteState:
      return "write_state";
    case MsgType::kSetGroup:
      return "set_group";
    case MsgType::kSetOptimizerSteps:
      return "set_optimizer_steps";
    case MsgType::kFinishLocal:
      return "finish_local";
    case MsgType::kFinishGlobal:
      return "finish_global";
    case MsgType::kOk:
      return "ok";
    case MsgType::kError:
      return "error";
  }
  return "unknown";
}

absl::Status check_header(const unsigned char* h, uint32_t* json_len, uint32_t* blob_len,
                          MsgType* type) {
  uint32_t magic;
  uint16_t t, flags;
  std::memcpy(&magic, h, 4);
  std::memcpy(&t, h + 4, 2);
  std::memcpy(&flags, h + 6, 2);
  std::memcpy(json_len, h + 8, 4);
  std::memcpy(blob_len, h + 12, 4);
  if (magic != kFrameMagic) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad frame magic 0x", hex(magic).substr(8), " (not a stratad client?)"));
  }
  if (flags != 0)
    return absl::InvalidArgumentError(absl::StrCat("frame flags ", flags, ", want 0"));
  if (!is_known_type(t))
    return absl::InvalidArgumentError(absl::StrCat("unknown message type ", t));
  if (*json_len == 0 || *json_len > kMaxJsonBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("message JSON length ", *json_len, " outside [1, ", kMaxJsonBytes, "]"));
  }
  if (*blob_len > kMaxBlobBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("message blob length ", *blob_len, " above the limit ", kMaxBlobBytes));
  }
  *type = static_cast<MsgType>(t);
  return absl::OkStatus();
}

absl::StatusOr<nlohmann::json> parse_body(absl::string_view text) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError("message body is not valid JSON");
  if (!j.is_object()) return absl::InvalidArgumentError("message body is not a JSON object");
  return j;
}

absl::Status send_frame(int sock, MsgType type, const nlohmann::json& body, absl::string_view blob,
                        const std::vector<int>& fds, int timeout_ms) {
  const std::string text = body.dump();
  if (text.size() > kMaxJsonBytes || blob.size() > kMaxBlobBytes) {
    return absl::InvalidArgumentError(absl::StrCat("message ", type_name(type), " too large (",
                                                   text.size(), " + ", blob.size(), " bytes)"));
  }
  std::string out(kFrameHeaderBytes, '\0');
  const uint32_t magic = kFrameMagic, jl = static_cast<uint32_t>(text.size()),
                 bl = static_cast<uint32_t>(blob.size());
  const uint16_t t = static_cast<uint16_t>(type), flags = 0;
  std::memcpy(out.data(), &magic, 4);
  std::memcpy(out.data() + 4, &t, 2);
  std::memcpy(out.data() + 6, &flags, 2);
  std::memcpy(out.data() + 8, &jl, 4);
  std::memcpy(out.data() + 12, &bl, 4);
  out += text;
  out.append(blob.data(), blob.size());
  return write_all(sock, out.data(), out.size(), fds, timeout_ms);
}

absl::StatusOr<Frame> recv_frame(int sock, const RecvOptions& o) {
  Frame f;
  bool started = false;
  unsigned char header[kFrameHeaderBytes];
  absl::Status s = read_exact(sock, reinterpret_cast<char*>(header), sizeof header,
                              o.idle_timeout_ms, o.body_timeout_ms, o, &f.fds, &started);
  auto fail = [&](absl::Status st) -> absl::StatusOr<Frame> {
    f.close_fds();
    return st;
  };
  if (!s.ok()) return fail(s);
  uint32_t jl, bl;
  if (s = check_header(header, &jl, &bl, &f.type); !s.ok()) return fail(s);
  std::string text(jl, '\0');
  if (s = read_exact(sock, text.data(), jl, o.body_timeout_ms, o.body_timeout_ms, o, &f.fds,
                     &started);
      !s.ok()) {
    return fail(s);
  }
  f.blob.resize(bl);
  if (bl > 0) {
    if (s = read_exact(sock, f.blob.data(), bl, o.body_timeout_ms, o.body_timeout_ms, o, &f.fds,
                       &started);
        !s.ok()) {
      return fail(s);
    }
  }
  auto body = parse_body(text);
  if (!body.ok()) return fail(body.status());
  f.body = std::move(*body);
  return f;
}

absl::StatusOr<int64_t> get_int(const nlohmann::json& j, absl::string_view key, int64_t min,
                                int64_t max) {
  auto it = j.find(key);
  if (it == j.end()) return absl::InvalidArgumentError(absl::StrCat("field '", key, "' missing"));
  if (!it->is_number_integer()) {
    return absl::InvalidArgumentError(absl::StrCat("field '", key, "' is not an integer"));
  }
  const bool too_big = it->is_number_unsigned() && it->get<uint64_t>() > uint64_t(INT64_MAX);
  const int64_t v = too_big ? 0 : it->get<int64_t>();
  if (too_big || v < min || v > max) {
    return absl::InvalidArgumentError(
        absl::StrCat("field '", key, "' = ", it->dump(), " outside [", min, ", ", max, "]"));
  }
  return v;
}

absl::StatusOr<double> get_double(const nlohmann::json& j, absl::string_view key, double min,
                                  double max) {
  auto it = j.find(key);
  if (it == j.end()) return absl::InvalidArgumentError(absl::StrCat("field '", key, "' missing"));
  if (!it->is_number()) {
    return absl::InvalidArgumentError(absl::StrCat("field '", key, "' is not a number"));
  }
  const double v = it->get<double>();
  if (!std::isfinite(v) || v < min || v > max) {
    return absl::InvalidArgumentError(
        absl::StrCat("field '", key, "' = ", it->dump(), " outside [", min, ", ", max, "]"));
  }
  return v;
}

absl::StatusOr<bool> get_bool(const nlohmann::json& j, absl::string_view key) {
  auto it = j.find(key);
  if (it == j.end()) return absl::InvalidArgumentError(absl::StrCat("field '", key, "' missing"));
  if (!it->is_boolean()) {
    return absl::InvalidArgumentError(absl::StrCat("field '", key, "' is not a boolean"));
  }
  return it->get<bool>();
}

absl::StatusOr<std::string> get_string(const nlohmann::json& j, absl::string_view key,
                                       size_t max_len) {
  auto it = j.find(key);
  if (it == j.end()) return absl::InvalidArgumentError(absl::StrCat("field '", key, "' missing"));
  if (!it->is_string()) {
    return absl::InvalidArgumentError(absl::StrCat("field '", key, "' is not a string"));
  }
  const auto& s = it->get_ref<const std::string&>();
  if (s.size() > max_len) {
    return absl::InvalidArgumentError(
        absl::StrCat("field '", key, "' is ", s.size(), " bytes, at most ", max_len));
  }
  return s;
}

absl::StatusOr<uint64_t> get_u64_hex(const nlohmann::json& j, absl::string_view key) {
  STRATA_ASSIGN_OR_RETURN(std::string s, get_string(j, key, 16));
  if (s.size() != 16 || s.find_first_not_of("0123456789abcdef") != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat("field '", key, "' is not 16 hex digits"));
  }
  return std::strtoull(s.c_str(), nullptr, 16);
}

nlohmann::json error_body(const absl::Status& status) {
  return {{"code", static_cast<int>(status.code())}, {"message", std::string(status.message())}};
}

absl::Status status_from_error(const nlohmann::json& body) {
  auto code = get_int(body, "code", 1, 16);
  auto message = get_string(body, "message", kMaxJsonBytes);
  if (!code.ok() || !message.ok()) {
    return absl::InternalError("stratad sent a malformed error reply");
  }
  return absl::Status(static_cast<absl::StatusCode>(*code), *message);
}

nlohmann::json spec_to_json(const SessionSpec& spec) {
  nlohmann::json groups = nlohmann::json::array(), params = nlohmann::json::array();
  for (const auto& g : spec.groups) groups.push_back(group_to_json(g));
  for (const auto& p : spec.params) {
    params.push_back(
        {{"name", p.name}, {"numel", p.numel}, {"bucket", p.bucket}, {"group", p.group}});
  }
  return {{"config", spec.config_json},
          {"groups", groups},
          {"params", params},
          {"use_schedule", spec.use_schedule},
          {"speculation", speculation_name(spec.speculation)},
          {"allow_buffered_io", spec.allow_buffered_io}};
}

absl::StatusOr<SessionSpec> spec_from_json(const nlohmann::json& j) {
  if (!j.is_object()) return absl::InvalidArgumentError("field 'spec' is not an object");
  SessionSpec s;
  STRATA_ASSIGN_OR_RETURN(s.config_json, get_string(j, "config", kMaxJsonBytes), "spec");
  STRATA_ASSIGN_OR_RETURN(s.use_schedule, get_bool(j, "use_schedule"), "spec");
  STRATA_ASSIGN_OR_RETURN(s.allow_buffered_io, get_bool(j, "allow_buffered_io"), "spec");
  STRATA_ASSIGN_OR_RETURN(std::string spec_name, get_string(j, "speculation", 16), "spec");
  if (spec_name == "auto") {
    s.speculation = engine::SpeculationPolicy::kAuto;
  } else if (spec_name == "always") {
    s.speculation = engine::SpeculationPolicy::kAlways;
  } else if (spec_name == "never") {
    s.speculation = engine::SpeculationPolicy::kNever;
  } else {
    return absl::InvalidArgumentError("spec.speculation: want auto, always or never");
  }
  auto groups = j.find("groups");
  if (groups == j.end() || !groups->is_array() || groups->empty() || groups->size() > kMaxGroups) {
    return absl::InvalidArgumentError(
        absl::StrCat("spec.groups: want an array of 1 to ", kMaxGroups, " groups"));
  }
  for (size_t i = 0; i < groups->size(); ++i) {
    STRATA_ASSIGN_OR_RETURN(engine::GroupHyperparams hp,
                            group_from_json((*groups)[i], absl::StrCat("spec.groups[", i, "]")));
    s.groups.push_back(hp);
  }
  auto params = j.find("params");
  if (params == j.end() || !params->is_array() || params->empty() || params->size() > kMaxParams) {
    return absl::InvalidArgumentError(
        absl::StrCat("spec.params: want an array of 1 to ", kMaxParams, " params"));
  }
  for (size_t i = 0; i < params->size(); ++i) {
    const auto& p = (*params)[i];
    const std::string where = absl::StrCat("spec.params[", i, "]");
    if (!p.is_object()) return absl::InvalidArgumentError(where + ": not an object");
    ParamSpec ps;
    STRATA_ASSIGN_OR_RETURN(ps.name, get_string(p, "name", kMaxNameBytes), where);
    STRATA_ASSIGN_OR_RETURN(int64_t numel, get_int(p, "numel", 1, int64_t(kMaxNumel)), where);
    STRATA_ASSIGN_OR_RETURN(int64_t bucket, get_int(p, "bucket", 0, kMaxBucket - 1), where);
    STRATA_ASSIGN_OR_RETURN(int64_t group, get_int(p, "group", 0, int64_t(s.groups.size()) - 1),
                            where);
    if (ps.name.empty()) return absl::InvalidArgumentError(where + ": empty name");
    ps.numel = static_cast<uint64_t>(numel);
    ps.bucket = static_cast<int>(bucket);
    ps.group = static_cast<int>(group);
    s.params.push_back(std::move(ps));
  }
  return s;
}

uint64_t Fingerprint::combined() const {
  const uint64_t parts[3] = {layout, dtypes, optimizer};
  return XXH3_64bits(parts, sizeof parts);
}

absl::StatusOr<Fingerprint> fingerprint(const SessionSpec& spec) {
  std::string dtypes, rest;
  STRATA_RETURN_IF_ERROR(split_config(spec.config_json, &dtypes, &rest));
  nlohmann::json layout = nlohmann::json::array();
  for (const auto& p : spec.params) layout.push_back({p.name, p.numel, p.bucket, p.group});
  nlohmann::json opt = nlohmann::json::array();
  for (const auto& g : spec.groups) opt.push_back(group_to_json(g));
  const nlohmann::json optimizer = {{"config", rest},
                                    {"groups", opt},
                                    {"use_schedule", spec.use_schedule},
                                    {"speculation", speculation_name(spec.speculation)}};
  return Fingerprint{.layout = hash_text(layout.dump()),
                     .dtypes = hash_text(dtypes),
                     .optimizer = hash_text(optimizer.dump())};
}

std::string describe_mismatch(const SessionSpec& a, const SessionSpec& b) {
  std::vector<std::string> diffs;
  if (a.params.size() != b.params.size()) {
    diffs.push_back(absl::StrCat("param layout differs: the session has ", a.params.size(),
                                 " params, the request ", b.params.size()));
  } else {
    for (size_t i = 0; i < a.params.size(); ++i) {
      const auto& x = a.params[i];
      const auto& y = b.params[i];
      if (x.name != y.name || x.numel != y.numel || x.bucket != y.bucket || x.group != y.group) {
        diffs.push_back(absl::StrCat("param layout differs at param ", i, ": the session has '",
                                     x.name, "' numel ", x.numel, " bucket ", x.bucket, " group ",
                                     x.group, ", the request '", y.name, "' numel ", y.numel,
                                     " bucket ", y.bucket, " group ", y.group));
        break;
      }
    }
  }
  std::string da, ra, db, rb;
  const bool parsed =
      split_config(a.config_json, &da, &ra).ok() && split_config(b.config_json, &db, &rb).ok();
  if (parsed && da != db) {
    diffs.push_back(
        absl::StrCat("dtypes differ: the session's config has ", da, ", the request's ", db));
  }
  if (!parsed || ra != rb) diffs.push_back("optimizer config differs (the ds_config text)");
  if (a.groups.size() != b.groups.size()) {
    diffs.push_back(absl::StrCat("optimizer config differs: the session has ", a.groups.size(),
                                 " groups, the request ", b.groups.size()));
  } else {
    for (size_t i = 0; i < a.groups.size(); ++i) {
      if (group_to_json(a.groups[i]) != group_to_json(b.groups[i])) {
        diffs.push_back(absl::StrCat("optimizer config differs in group ", i, ": the session has ",
                                     group_to_json(a.groups[i]).dump(), ", the request ",
                                     group_to_json(b.groups[i]).dump()));
        break;
      }
    }
  }
  if (a.use_schedule != b.use_schedule || a.speculation != b.speculation) {
    diffs.push_back("optimizer options differ (use_schedule / speculation)");
  }
  std::string out;
  for (const auto& d : diffs) out += (out.empty() ? "" : "; ") + d;
  return out;
}

absl::Status check_session_name(absl::string_view name) {
  if (name.empty() || name.size() > 64 || name[0] == '.' ||
      name.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") !=
          absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("session name '", name.substr(0, 80),
                     "': want 1-64 of [A-Za-z0-9._-], not starting with '.'"));
  }
  return absl::OkStatus();
}

std::string rank_session_name(const std::string& session, int rank, int world_size) {
  return world_size > 1 ? absl::StrCat(session, ".rank", rank) : session;
}

std::optional<RankSession> parse_rank_session_name(absl::string_view name) {
  const size_t dot = name.rfind(".rank");
  if (dot == absl::string_view::npos || dot == 0) return std::nullopt;
  const absl::string_view digits = name.substr(dot + 5);
  int rank = 0;
  const bool all_digits =
      std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; });
  if (digits.empty() || digits.size() > 7 || !all_digits ||
      (digits.size() > 1 && digits[0] == '0') || !absl::SimpleAtoi(digits, &rank)) {
    return std::nullopt;
  }
  return RankSession{.job = std::string(name.substr(0, dot)), .rank = rank};
}

std::string default_socket_path() {
  const char* xdg = std::getenv("XDG_RUNTIME_DIR");
  if (xdg != nullptr && xdg[0] == '/') return std::string(xdg) + "/strata/stratad.sock";
  return "/run/strata/stratad.sock";
}

absl::string_view state_kind_name(engine::StateKind kind) {
  switch (kind) {
    case engine::StateKind::kMaster:
      return "master";
    case engine::StateKind::kExpAvg:
      return "exp_avg";
    case engine::StateKind::kExpAvgSq:
      return "exp_avg_sq";
    case engine::StateKind::kGradAccum:
      return "grad_accum";
  }
  return "master";
}

absl::StatusOr<engine::StateKind> parse_state_kind(absl::string_view name) {
  for (auto k : {engine::StateKind::kMaster, engine::StateKind::kExpAvg,
                 engine::StateKind::kExpAvgSq, engine::StateKind::kGradAccum}) {
    if (state_kind_name(k) == name) return k;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "state kind '", name.substr(0, 32), "': want master, exp_avg, exp_avg_sq or grad_accum"));
}

}  // namespace strata::daemon
