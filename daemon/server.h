// Server: stratad's socket, its connections and its sessions.
//
// start() prepares the socket (its directory created 0700, the socket bound
// 0600; an existing path another live stratad answers on is refused, a stale
// one removed) and starts an accept thread; each accepted connection is
// served on its own thread. A peer whose SO_PEERCRED uid is neither the
// daemon's nor root gets a kError and is closed, and the refusal is logged
// with its pid and uid.
//
// Sessions (session.h) live until a client ends them (detach with
// end_session) or stratad stops; a client that disconnects, dies or sends a
// malformed message loses its step in flight (aborted) but not its session.
// One client owns a session at a time; an attach to an owned session waits
// attach_wait_ms for the owner to go (a killed client's EOF may still be in
// flight), then is refused naming the owner's pid. The host-memory quotas
// (host_mem_bytes for all sessions together, session_quota_bytes for each)
// are checked at attach; a refusal says how much the session needs and how
// much is free. Sessions run on optimizer_pools.h's pools (one per NUMA
// node), each pinned at creation to the pool with the fewest sessions.
//
// Threading: start/stop from one thread; stats() from any. stop() (also the
// destructor) aborts steps in flight, closes every connection, joins the
// threads and removes the socket.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/optimizer_pools.h"
#include "daemon/protocol.h"
#include "daemon/session.h"
#include "nlohmann/json.hpp"
#include "oneapi/tbb/task_arena.h"

namespace strata::daemon {

struct ServerOptions {
  std::string socket_path;      // empty: default_socket_path()
  uint64_t host_mem_bytes = 0;  // 0: what the host can count on at start (MemAvailable, cgroup)
  std::vector<std::string> nvme_paths;
  int threads = 0;                   // optimizer threads for all sessions; 0: one per core
  uint64_t session_quota_bytes = 0;  // host memory one session may take; 0: no limit
  // The Adam-like stream's GB/s (core/memory_bandwidth.h) that `strata top`
  // divides each session's optimizer GB/s by: 0 measures it in the
  // background at start (about 0.3 s of every core), < 0 leaves it unknown.
  double roofline_gb_per_s = 0;
  int frame_timeout_ms = 5000;         // hello, and the rest of a started message
  int step_idle_timeout_ms = 600'000;  // a client silent this long mid-step loses the step
  int attach_wait_ms = 3000;
  // Non-empty: stop() saves every session here (<dir>/<session>/{ckpt,
  // spec.json}) and start() offers them again for reattach.
  std::string state_dir;
  // Connections open at once (each has a thread); more are refused.
  int max_connections = 1024;
};

class Server {
 public:
  static absl::StatusOr<std::unique_ptr<Server>> start(ServerOptions options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  void stop();
  const std::string& socket_path() const { return options_.socket_path; }
  // What `strata top` shows: {daemon_pid, host_mem_total_bytes,
  // host_mem_used_bytes, sessions: [...]}.
  nlohmann::json stats() const;
  // Ends a session no client is attached to, freeing its host memory and
  // NVMe swap: NotFound for an unknown name, FailedPrecondition naming the
  // attached client's pid.
  absl::Status end_idle_session(const std::string& name);

 private:
  struct Entry {
    std::unique_ptr<Session> session;  // null while being created
    uint64_t owner = 0;                // connection id, 0: none
    int owner_pid = 0;
  };
  struct Conn {
    std::thread thread;
    std::atomic<bool> done{false};
    int fd = -1;
  };

  explicit Server(ServerOptions options) : options_(std::move(options)) {}
  absl::Status listen_socket();
  absl::Status restore_sessions();
  absl::Status restore_session(const std::string& name, const std::string& dir);
  void save_sessions();
  absl::StatusOr<std::unique_ptr<Session>> make_session(const std::string& name,
                                                        const SessionSpec& spec);
  void accept_loop();
  void serve(Conn* conn, uint64_t id, int pid, int uid);
  absl::StatusOr<Session*> attach(uint64_t conn_id, int pid, const nlohmann::json& body,
                                  bool* created);
  void release(uint64_t conn_id, const std::string& name, bool end_session, const std::string& why);
  // Under mu_: the session leaves the table and gives back its share of
  // --host-mem and its pool (the last Entry reference frees it).
  void drop_session_locked(const std::string& name, const Entry& e);

  ServerOptions options_;
  int listen_fd_ = -1;
  std::atomic<bool> stop_{false};
  std::thread accept_thread_;
  std::list<Conn> conns_;                  // accept thread only
  std::unique_ptr<OptimizerPools> pools_;  // outlives the sessions (declared before them)
  std::atomic<double> roofline_gb_per_s_{0};
  std::thread roofline_thread_;

  mutable std::mutex mu_;
  std::condition_variable released_;
  std::map<std::string, std::shared_ptr<Entry>> sessions_;
  uint64_t used_bytes_ = 0;
};

}  // namespace strata::daemon
