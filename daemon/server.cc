#include "daemon/server.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>

#include "absl/strings/str_cat.h"
#include "core/build_info.h"
#include "core/file_util.h"
#include "core/format_bytes.h"
#include "core/host_info.h"
#include "core/log.h"
#include "core/memory_bandwidth.h"
#include "core/status.h"
#include "core/topology.h"

namespace strata::daemon {
namespace {

std::shared_ptr<spdlog::logger> logger() { return log::get("daemon"); }

absl::StatusOr<sockaddr_un> socket_address(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof addr.sun_path) {
    return absl::InvalidArgumentError(
        absl::StrCat("socket path '", path, "' must be 1 to ", sizeof addr.sun_path - 1, " bytes"));
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  return addr;
}

// A path that exists: another live stratad (refused), a stale socket
// (removed), or something else (refused).
absl::Status clear_old_socket(const std::string& path, const sockaddr_un& addr) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return absl::OkStatus();
    return errno_status(errno, "stat " + path);
  }
  if (!S_ISSOCK(st.st_mode)) {
    return absl::AlreadyExistsError(
        absl::StrCat(path, " exists and is not a socket; pass another --socket or remove it"));
  }
  const int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (probe < 0) return errno_status(errno, "socket");
  const int r = ::connect(probe, reinterpret_cast<const sockaddr*>(&addr), sizeof addr);
  const int err = errno;
  ::close(probe);
  if (r == 0) {
    return absl::AlreadyExistsError(absl::StrCat("another stratad is serving ", path,
                                                 "; stop it first or pass another --socket"));
  }
  if (err != ECONNREFUSED) return errno_status(err, "probing the existing socket " + path);
  if (::unlink(path.c_str()) != 0) return errno_status(errno, "removing the stale socket " + path);
  logger()->info("removed stale socket {}", path);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Server>> Server::start(ServerOptions options) {
  if (options.socket_path.empty()) options.socket_path = default_socket_path();
  if (options.host_mem_bytes == 0) options.host_mem_bytes = probe_host().memory.usable_bytes();
  std::unique_ptr<Server> s(new Server(std::move(options)));
  absl::StatusOr<Topology> topo = discover_topology();
  if (!topo.ok()) {
    logger()->warn("no hwloc topology ({}): one optimizer pool",
                   std::string(topo.status().message()));
  }
  s->pools_ = std::make_unique<OptimizerPools>(topo.ok() ? *topo : Topology{}, s->options_.threads);
  if (s->options_.roofline_gb_per_s > 0) {
    s->roofline_gb_per_s_.store(s->options_.roofline_gb_per_s);
  } else if (s->options_.roofline_gb_per_s == 0) {
    s->roofline_thread_ = std::thread([p = s.get()] {
      // Small arrays (still far beyond the LLC) keep the start cheap.
      auto r = measure_adam_stream({.elements = size_t{4} << 20, .threads = 0, .repeats = 3});
      if (r.ok()) p->roofline_gb_per_s_.store(r->gb_per_s);
    });
  }
  STRATA_RETURN_IF_ERROR(s->listen_socket());
  STRATA_RETURN_IF_ERROR(s->restore_sessions(), "--state-dir");
  s->accept_thread_ = std::thread([p = s.get()] { p->accept_loop(); });
  logger()->info("stratad {} listening on {} (host memory quota {}, {} optimizer threads)",
                 build_info().version, s->options_.socket_path,
                 format_bytes(double(s->options_.host_mem_bytes)),
                 s->options_.threads > 0 ? std::to_string(s->options_.threads) : "all");
  for (int i = 0; i < s->pools_->size(); ++i) {
    const PoolPlan& p = s->pools_->pool(i).plan;
    logger()->info("optimizer pool {}: NUMA node {}, {} threads", i, p.node, p.threads);
  }
  return s;
}

absl::Status Server::listen_socket() {
  const std::string& path = options_.socket_path;
  STRATA_ASSIGN_OR_RETURN(sockaddr_un addr, socket_address(path));
  const std::filesystem::path dir = std::filesystem::path(path).parent_path();
  if (!dir.empty()) {
    std::error_code ec;
    if (!std::filesystem::exists(dir, ec)) {
      if (dir.has_parent_path()) std::filesystem::create_directories(dir.parent_path(), ec);
      if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
        return errno_status(errno, "creating the socket directory " + dir.string());
      }
    }
  }
  STRATA_RETURN_IF_ERROR(clear_old_socket(path, addr));
  listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listen_fd_ < 0) return errno_status(errno, "socket");
  // umask makes the socket 0600 from its first moment (no chmod race).
  const mode_t old = ::umask(0177);
  const int r = ::bind(listen_fd_, reinterpret_cast<const sockaddr*>(&addr), sizeof addr);
  const int err = errno;
  ::umask(old);
  if (r != 0) return errno_status(err, "bind " + path);
  if (::chmod(path.c_str(), 0600) != 0) return errno_status(errno, "chmod 0600 " + path);
  if (::listen(listen_fd_, 64) != 0) return errno_status(errno, "listen " + path);
  return absl::OkStatus();
}

Server::~Server() { stop(); }

void Server::stop() {
  if (stop_.exchange(true)) return;
  if (roofline_thread_.joinable()) roofline_thread_.join();
  if (accept_thread_.joinable()) accept_thread_.join();
  for (auto& c : conns_) {
    if (c.thread.joinable()) c.thread.join();
  }
  conns_.clear();
  if (listen_fd_ >= 0) {
    ::close(listen_fd_);
    listen_fd_ = -1;
    ::unlink(options_.socket_path.c_str());
  }
  save_sessions();
  std::lock_guard<std::mutex> lock(mu_);
  logger()->info("stratad stopped ({} sessions)", sessions_.size());
  sessions_.clear();
}

void Server::save_sessions() {
  if (options_.state_dir.empty()) return;
  std::error_code ec;
  // What was saved before belongs to sessions that may have ended since.
  for (const auto& e : std::filesystem::directory_iterator(options_.state_dir, ec)) {
    std::filesystem::remove_all(e.path(), ec);
  }
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [name, e] : sessions_) {
    if (e->session == nullptr) continue;
    const std::string dir = options_.state_dir + "/" + name;
    absl::Status s = e->session->save_to(dir);
    if (s.ok()) {
      logger()->info("session {} saved to {} at step {}", name, dir,
                     e->session->stats().value("step", int64_t{0}));
    } else {
      logger()->error("session {} could not be saved: {}", name, std::string(s.message()));
      std::filesystem::remove_all(dir, ec);
    }
  }
}

absl::Status Server::restore_sessions() {
  if (options_.state_dir.empty()) return absl::OkStatus();
  std::error_code ec;
  std::filesystem::create_directories(options_.state_dir, ec);
  STRATA_ASSIGN_OR_RETURN(std::vector<std::string> names, list_directory(options_.state_dir));
  for (const std::string& name : names) {
    const std::string dir = options_.state_dir + "/" + name;
    if (!std::filesystem::exists(dir + "/spec.json")) continue;  // not a saved session
    absl::Status s = restore_session(name, dir);
    if (!s.ok())
      logger()->error("saved session {} not restored: {}", name, std::string(s.message()));
  }
  return absl::OkStatus();
}

absl::Status Server::restore_session(const std::string& name, const std::string& dir) {
  STRATA_RETURN_IF_ERROR(check_session_name(name));
  STRATA_ASSIGN_OR_RETURN(std::string text, read_file(dir + "/spec.json"));
  STRATA_ASSIGN_OR_RETURN(nlohmann::json j, parse_body(text), "spec.json");
  if (!j.contains("spec")) return absl::DataLossError("spec.json has no spec");
  STRATA_ASSIGN_OR_RETURN(SessionSpec spec, spec_from_json(j["spec"]), "spec.json");
  STRATA_ASSIGN_OR_RETURN(std::unique_ptr<Session> session, make_session(name, spec));
  STRATA_RETURN_IF_ERROR(session->restore_from(dir));
  auto entry = std::make_shared<Entry>();
  entry->session = std::move(session);
  logger()->info("session {} restored from {} at step {}", name, dir,
                 entry->session->stats().value("step", int64_t{0}));
  std::lock_guard<std::mutex> lock(mu_);
  sessions_[name] = std::move(entry);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Session>> Server::make_session(const std::string& name,
                                                              const SessionSpec& spec) {
  STRATA_ASSIGN_OR_RETURN(Fingerprint fp, fingerprint(spec));
  STRATA_ASSIGN_OR_RETURN(SessionPlan plan, plan_session(name, spec, options_.nvme_paths),
                          "session " + name);
  if (options_.session_quota_bytes > 0 && plan.charge_bytes > options_.session_quota_bytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("session ", name, " needs ", format_bytes(double(plan.charge_bytes)),
                     " of host memory (arena ", format_bytes(double(plan.arena_bytes)),
                     " + optimizer states), over the per-session quota of ",
                     format_bytes(double(options_.session_quota_bytes)),
                     " (--session-quota); offload its states to NVMe or raise --session-quota"));
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    const uint64_t total = options_.host_mem_bytes;
    const uint64_t free = total > used_bytes_ ? total - used_bytes_ : 0;
    if (plan.charge_bytes > free) {
      return absl::ResourceExhaustedError(
          absl::StrCat("session ", name, " needs ", format_bytes(double(plan.charge_bytes)),
                       " of host memory (arena ", format_bytes(double(plan.arena_bytes)),
                       " + optimizer states); stratad has ", format_bytes(double(free)),
                       " free of ", format_bytes(double(total)),
                       " (--host-mem); end an idle session (strata top lists them; strata top "
                       "--end-session NAME) or raise --host-mem"));
    }
    used_bytes_ += plan.charge_bytes;
  }
  const uint64_t charge = plan.charge_bytes;
  const int pool = pools_->pick();
  auto session = Session::create(name, spec, fp, std::move(plan), &pools_->pool(pool), pool);
  if (!session.ok()) {
    pools_->release(pool);
    std::lock_guard<std::mutex> lock(mu_);
    used_bytes_ -= charge;
  }
  return session;
}

void Server::accept_loop() {
  uint64_t next_id = 1;
  while (!stop_.load()) {
    for (auto it = conns_.begin(); it != conns_.end();) {
      if (it->done.load()) {
        it->thread.join();
        it = conns_.erase(it);
      } else {
        ++it;
      }
    }
    pollfd p{.fd = listen_fd_, .events = POLLIN, .revents = 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno != EINTR && errno != EAGAIN && errno != ECONNABORTED) {
        logger()->warn("accept failed: {}", std::strerror(errno));
      }
      continue;
    }
    ucred cred{};
    socklen_t len = sizeof cred;
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
      logger()->warn("SO_PEERCRED failed ({}); connection closed", std::strerror(errno));
      ::close(fd);
      continue;
    }
    const uid_t me = ::geteuid();
    if (cred.uid != me && cred.uid != 0) {
      logger()->warn("refused a connection from pid {} uid {}: stratad serves uid {} and root",
                     cred.pid, cred.uid, me);
      (void)send_frame(
          fd, MsgType::kError,
          error_body(absl::PermissionDeniedError(absl::StrCat(
              "stratad serves uid ", me, " and root; this client runs as uid ", cred.uid))),
          {}, {}, 1000);
      ::close(fd);
      continue;
    }
    if (conns_.size() >= static_cast<size_t>(options_.max_connections)) {
      logger()->warn("refused a connection from pid {}: {} connections open", cred.pid,
                     conns_.size());
      (void)send_frame(fd, MsgType::kError,
                       error_body(absl::ResourceExhaustedError(absl::StrCat(
                           "stratad has ", conns_.size(), " connections open (its limit)"))),
                       {}, {}, 1000);
      ::close(fd);
      continue;
    }
    Conn& c = conns_.emplace_back();
    c.fd = fd;
    const uint64_t id = next_id++;
    c.thread = std::thread([this, &c, id, cred] { serve(&c, id, cred.pid, cred.uid); });
  }
}

void Server::serve(Conn* conn, uint64_t id, int pid, int uid) {
  const int fd = conn->fd;
  std::string session_name;
  Session* session = nullptr;
  std::string lost_why = absl::StrCat("client pid ", pid, " disconnected mid-step");
  auto reply_error = [&](const absl::Status& s) {
    (void)send_frame(fd, MsgType::kError, error_body(s), {}, {}, options_.frame_timeout_ms);
  };
  RecvOptions ro{.idle_timeout_ms = options_.frame_timeout_ms,
                 .body_timeout_ms = options_.frame_timeout_ms,
                 .stop = &stop_};
  // Handshake.
  auto hello = recv_frame(fd, ro);
  absl::Status hs = hello.ok() ? absl::OkStatus() : hello.status();
  if (hs.ok() && hello->type != MsgType::kHello) {
    hs = absl::InvalidArgumentError("the first message must be hello");
  }
  if (hs.ok()) {
    auto version = get_int(hello->body, "protocol_version", 0, 1 << 30);
    auto strata_version = get_string(hello->body, "strata_version", 64);
    if (!version.ok()) {
      hs = version.status();
    } else if (!strata_version.ok()) {
      hs = strata_version.status();
    } else if (*version != kProtocolVersion) {
      hs = absl::FailedPreconditionError(absl::StrCat(
          "protocol version ", *version, " refused: stratad speaks version ", kProtocolVersion));
    } else if (*strata_version != build_info().version) {
      hs = absl::FailedPreconditionError(absl::StrCat("strata version ", *strata_version,
                                                      " refused: stratad is strata ",
                                                      std::string(build_info().version)));
    }
  }
  if (hs.ok()) {
    hs = send_frame(fd, MsgType::kOk,
                    {{"protocol_version", kProtocolVersion},
                     {"strata_version", std::string(build_info().version)},
                     {"pid", ::getpid()}},
                    {}, {}, options_.frame_timeout_ms);
  } else {
    logger()->info("handshake with pid {} uid {} refused: {}", pid, uid, std::string(hs.message()));
    if (!absl::IsUnavailable(hs)) reply_error(hs);
  }

  while (hs.ok()) {
    ro.idle_timeout_ms = -1;
    if (session != nullptr && session->in_step()) {
      ro.idle_timeout_ms = options_.step_idle_timeout_ms;
    }
    auto f = recv_frame(fd, ro);
    if (!f.ok()) {
      const absl::Status& s = f.status();
      if (absl::IsUnavailable(s)) break;  // closed between messages
      if (absl::IsCancelled(s)) {
        lost_why = "stratad is shutting down";
        break;
      }
      logger()->warn("connection from pid {}: {}; closing it", pid, std::string(s.message()));
      lost_why = absl::StrCat("client pid ", pid, ": ", s.message());
      reply_error(s);
      break;
    }
    absl::Status s;
    // grad_ready pushed on the ring before this message is taken first.
    if (session != nullptr) {
      if (s = session->drain_ring(); !s.ok()) {
        reply_error(s);
        lost_why = absl::StrCat("client pid ", pid, ": ", s.message());
        break;
      }
    }
    nlohmann::json body = nlohmann::json::object();
    std::string blob;
    std::vector<int> pass_fds;
    bool close_after = false;
    switch (f->type) {
      case MsgType::kStats:
        body = stats();
        break;
      case MsgType::kEndSession: {
        auto name = get_string(f->body, "session", 64);
        s = name.ok() ? end_idle_session(*name) : name.status();
        close_after = !name.ok();
        break;
      }
      case MsgType::kAttach: {
        if (session != nullptr) {
          s = absl::FailedPreconditionError("already attached to session " + session_name);
          break;
        }
        bool created = false;
        auto a = attach(id, pid, f->body, &created);
        if (!a.ok()) {
          s = a.status();
          logger()->info("attach from pid {} refused: {}", pid, std::string(s.message()));
          break;
        }
        session = *a;
        session_name = session->name();
        body = session->attach_body(created);
        session->reset_ring();
        pass_fds = {session->arena_fd(), session->event_fd()};
        ro.wake_fd = session->event_fd();
        ro.on_wake = [session] { return session->drain_ring(); };
        logger()->info("pid {} attached to session {} ({}, step {})", pid, session_name,
                       created ? "new" : "resumed", body.value("steps", int64_t{0}));
        break;
      }
      case MsgType::kDetach: {
        auto end = f->body.contains("end_session") ? get_bool(f->body, "end_session")
                                                   : absl::StatusOr<bool>(false);
        if (!end.ok()) {
          s = end.status();
          close_after = true;
          break;
        }
        if (session != nullptr) {
          release(id, session_name, *end, absl::StrCat("client pid ", pid, " detached mid-step"));
          session = nullptr;
          // The session may be gone (ended), its eventfd closed and the
          // number reused: this connection stops watching it.
          ro.wake_fd = -1;
          ro.on_wake = nullptr;
        }
        break;
      }
      case MsgType::kHello:
      case MsgType::kOk:
      case MsgType::kError:
        s = absl::InvalidArgumentError(
            absl::StrCat("unexpected '", type_name(f->type), "' message from a client"));
        close_after = true;
        break;
      default: {
        if (session == nullptr) {
          s = absl::FailedPreconditionError(
              absl::StrCat("'", type_name(f->type), "' before attach"));
          break;
        }
        auto r = session->handle(f->type, f->body, f->blob);
        if (r.ok()) {
          body = std::move(r->body);
          blob = std::move(r->blob);
        } else {
          s = r.status();
          // A malformed field is a protocol error: the connection goes.
          // (Save and load name paths: their InvalidArgument is the user's.)
          close_after =
              absl::IsInvalidArgument(s) && f->type != MsgType::kSave && f->type != MsgType::kLoad;
        }
      }
    }
    f->close_fds();
    absl::Status sent =
        s.ok() ? send_frame(fd, MsgType::kOk, body, blob, pass_fds, options_.frame_timeout_ms)
               : send_frame(fd, MsgType::kError, error_body(s), {}, {}, options_.frame_timeout_ms);
    if (!sent.ok()) {
      lost_why = absl::StrCat("client pid ", pid, ": ", sent.message());
      break;
    }
    if (close_after) {
      lost_why = absl::StrCat("client pid ", pid, " sent a malformed message: ", s.message());
      break;
    }
  }
  if (session != nullptr) release(id, session_name, false, lost_why);
  ::close(fd);
  conn->done.store(true);
}

absl::StatusOr<Session*> Server::attach(uint64_t conn_id, int pid, const nlohmann::json& body,
                                        bool* created) {
  STRATA_ASSIGN_OR_RETURN(std::string name, get_string(body, "session", 64));
  STRATA_RETURN_IF_ERROR(check_session_name(name));
  STRATA_ASSIGN_OR_RETURN(uint64_t want_fp, get_u64_hex(body, "fingerprint"));
  auto spec_it = body.find("spec");
  if (spec_it == body.end()) return absl::InvalidArgumentError("field 'spec' missing");
  STRATA_ASSIGN_OR_RETURN(SessionSpec spec, spec_from_json(*spec_it));
  STRATA_ASSIGN_OR_RETURN(Fingerprint fp, fingerprint(spec));
  if (fp.combined() != want_fp) {
    return absl::InvalidArgumentError(
        "the fingerprint sent does not match the spec sent (client and stratad from different "
        "strata builds?)");
  }
  std::unique_lock<std::mutex> lock(mu_);
  auto it = sessions_.find(name);
  if (it != sessions_.end()) {
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::milliseconds(options_.attach_wait_ms);
    released_.wait_until(lock, deadline, [&] {
      it = sessions_.find(name);
      return it == sessions_.end() || it->second->owner == 0;
    });
  }
  if (it != sessions_.end()) {
    Entry& e = *it->second;
    if (e.owner != 0) {
      return absl::FailedPreconditionError(absl::StrCat("session ", name, " is attached by pid ",
                                                        e.owner_pid,
                                                        "; detach it or pick another name"));
    }
    if (!(e.session->fingerprint() == fp)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "session ", name,
          " exists with another fingerprint: ", describe_mismatch(e.session->spec(), spec)));
    }
    e.owner = conn_id;
    e.owner_pid = pid;
    e.session->set_owner(pid);
    *created = false;
    return e.session.get();
  }
  // A placeholder owned by this connection keeps a concurrent attach to the
  // same name waiting while the session is built outside the lock.
  auto entry = std::make_shared<Entry>();
  entry->owner = conn_id;
  entry->owner_pid = pid;
  sessions_[name] = entry;
  lock.unlock();
  auto session = make_session(name, spec);
  lock.lock();
  if (!session.ok()) {
    sessions_.erase(name);
    released_.notify_all();
    return session.status();
  }
  entry->session = std::move(*session);
  entry->session->set_owner(pid);
  *created = true;
  return entry->session.get();
}

void Server::release(uint64_t conn_id, const std::string& name, bool end_session,
                     const std::string& why) {
  std::unique_lock<std::mutex> lock(mu_);
  auto it = sessions_.find(name);
  if (it == sessions_.end() || it->second->owner != conn_id) return;
  std::shared_ptr<Entry> e = it->second;
  lock.unlock();
  // The owner is this thread: no one else touches the optimizer meanwhile.
  absl::Status s = e->session->client_lost(why);
  if (!s.ok()) logger()->warn("session {}: step aborted: {}", name, std::string(s.message()));
  e->session->set_owner(0);
  lock.lock();
  if (end_session) {
    drop_session_locked(name, *e);
    logger()->info("session {} ended", name);
  } else {
    e->owner = 0;
    e->owner_pid = 0;
  }
  released_.notify_all();
}

void Server::drop_session_locked(const std::string& name, const Entry& e) {
  used_bytes_ -= e.session->charge_bytes();
  pools_->release(e.session->pool_index());
  sessions_.erase(name);
}

absl::Status Server::end_idle_session(const std::string& name) {
  STRATA_RETURN_IF_ERROR(check_session_name(name));
  std::shared_ptr<Entry> e;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = sessions_.find(name);
    if (it == sessions_.end() || it->second->session == nullptr) {
      return absl::NotFoundError(
          absl::StrCat("stratad has no session ", name, " (strata top lists them)"));
    }
    if (it->second->owner != 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("session ", name, " is attached by pid ", it->second->owner_pid,
                       "; stop that client first, then end the session"));
    }
    e = it->second;
    drop_session_locked(name, *e);
    released_.notify_all();
  }
  logger()->info("session {} ended (no client attached)", name);
  return absl::OkStatus();  // e, the last owner, frees the session here
}

nlohmann::json Server::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  const double roofline = roofline_gb_per_s_.load();
  nlohmann::json sessions = nlohmann::json::array();
  for (const auto& [name, e] : sessions_) {
    if (e->session == nullptr) continue;
    nlohmann::json st = e->session->stats();
    const double gbs = st.value("optimizer_gb_per_s", 0.0);
    st["roofline_ratio"] = roofline > 0 ? gbs / roofline : 0.0;
    sessions.push_back(std::move(st));
  }
  // The sessions of data-parallel jobs (NAME.rank<r>), each holding a
  // rank's slice: together one copy of the job's model.
  struct Job {
    int sessions = 0;
    uint64_t host_bytes = 0;
    int64_t min_step = INT64_MAX, max_step = INT64_MIN;
  };
  std::map<std::string, Job> jobs;
  for (const nlohmann::json& st : sessions) {
    const std::optional<RankSession> rs = parse_rank_session_name(st.value("name", ""));
    if (!rs) continue;
    Job& j = jobs[rs->job];
    const int64_t step = st.value("step", int64_t{0});
    ++j.sessions;
    j.host_bytes += st.value("host_bytes", uint64_t{0});
    j.min_step = std::min(j.min_step, step);
    j.max_step = std::max(j.max_step, step);
  }
  nlohmann::json job_list = nlohmann::json::array();
  for (const auto& [name, j] : jobs) {
    job_list.push_back({{"name", name},
                        {"sessions", j.sessions},
                        {"host_bytes", j.host_bytes},
                        {"min_step", j.min_step},
                        {"max_step", j.max_step}});
  }
  nlohmann::json pools = nlohmann::json::array();
  for (int i = 0; i < pools_->size(); ++i) {
    OptimizerPool& p = pools_->pool(i);
    pools.push_back({{"numa_node", p.plan.node},
                     {"threads", p.plan.threads},
                     {"sessions", p.scheduler.session_count()},
                     {"active_sessions", p.scheduler.active_sessions()}});
  }
  return {{"daemon_pid", ::getpid()},
          {"strata_version", std::string(build_info().version)},
          {"protocol_version", kProtocolVersion},
          {"socket", options_.socket_path},
          {"host_mem_total_bytes", options_.host_mem_bytes},
          {"host_mem_used_bytes", used_bytes_},
          {"session_quota_bytes", options_.session_quota_bytes},
          {"roofline_gb_per_s", roofline},
          {"pools", pools},
          {"sessions", sessions},
          {"jobs", job_list}};
}

}  // namespace strata::daemon
