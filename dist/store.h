// The rendezvous store: a small TCP key/value service rank 0 runs on
// MASTER_ADDR:MASTER_PORT (torch's TCPStore plays the same part), which the
// ranks use to swap transport addresses (Gloo) or the NCCL unique id, and to
// tell each other which rank has died.
//
// Wire format (both ends on the same job, little-endian hosts): a frame is
// a u32 body length then the body; a request body is an op byte and its
// fields (strings as u32 length + bytes, ints as i32), a reply body a status
// byte and the op's result. Every length is checked against the frame and
// kMaxFrameBytes; a malformed frame makes the server close that connection.
//
// Liveness: a client that says hello(rank) is that rank's connection; if it
// closes without goodbye() (the process exited or crashed), the server
// lists the rank as died in roster(); one that closes after goodbye() as
// having left (it closed its communicator, maybe while others still
// expected it in a collective); a rank never seen never joined. The kernel closes a dead process's
// sockets, so a rank that _exit()s or is killed shows up within a moment.
//
// Threading: StoreServer serves each connection on its own thread and is
// safe to destroy at any time (it closes every connection and joins).
// StoreClient is one connection, one request at a time: callers serialize.
// Errors: Unavailable when the server cannot be reached or the connection
// drops (the message names host:port), DeadlineExceeded when a wait or get
// outlives its timeout (it names the keys still missing).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"

namespace strata::dist {

inline constexpr uint32_t kMaxFrameBytes = 64u << 20;

class StoreServer {
 public:
  // Listens on host:port (port 0: any free port; see port()).
  static absl::StatusOr<std::unique_ptr<StoreServer>> start(const std::string& host, int port);
  ~StoreServer();
  StoreServer(const StoreServer&) = delete;
  StoreServer& operator=(const StoreServer&) = delete;

  int port() const;

  // Waits (up to `max`) until every registered rank but `self` has closed
  // its connection: rank 0 keeps the store up while the others may still
  // need it to explain a failure (which rank died), instead of taking it
  // down under them.
  void linger(int self, std::chrono::milliseconds max);

  struct Impl;

 private:
  explicit StoreServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// A rank as the store knows it, from its hello on.
struct RankState {
  enum class State { kAlive, kDied, kLeft };
  int rank = -1;
  std::string description;  // what the rank said in hello (host, pid)
  // kDied: its connection closed without goodbye (the process ended);
  // kLeft: after goodbye (it closed its communicator).
  State state = State::kAlive;
};

class StoreClient {
 public:
  // Connects to host:port, retrying (refused, unreachable) every 50 ms
  // until `timeout`: rank 0 may start later than the others. `timeout` also
  // bounds each request later on.
  static absl::StatusOr<std::unique_ptr<StoreClient>> connect(const std::string& host, int port,
                                                              std::chrono::milliseconds timeout);
  ~StoreClient();
  StoreClient(const StoreClient&) = delete;
  StoreClient& operator=(const StoreClient&) = delete;

  absl::Status set(absl::string_view key, absl::string_view value);
  // Waits (up to `timeout`) until `key` is set and returns its value.
  absl::StatusOr<std::string> get(absl::string_view key, std::chrono::milliseconds timeout);
  // Waits (up to `timeout`) until every key is set.
  absl::Status wait(std::span<const std::string> keys, std::chrono::milliseconds timeout);
  // Whether every key is set now.
  absl::StatusOr<bool> check(std::span<const std::string> keys);

  // Registers this connection as `rank` of `world_size`; `description`
  // (host, pid) is what roster() will say about it. InvalidArgument when
  // another live connection is already that rank, or the world size differs
  // from the first rank's (RANK / WORLD_SIZE set wrong on some node).
  absl::Status hello(int rank, int world_size, absl::string_view description);
  // Marks a clean exit: closing after goodbye is not a death.
  absl::Status goodbye();
  // Every rank that has said hello, in rank order, and whether it is still
  // connected. Ranks missing from it never joined.
  absl::StatusOr<std::vector<RankState>> roster();

  // "host:port" of the server, for messages.
  const std::string& server_address() const { return server_; }
  // This end's address ("ip:port"): the interface that reaches rank 0.
  std::string local_address() const;

 private:
  StoreClient(int fd, std::string server, std::chrono::milliseconds timeout);
  // One request and its reply body (status byte first).
  absl::StatusOr<std::string> call(const std::string& request);

  int fd_;
  std::string server_;
  std::chrono::milliseconds timeout_;
  absl::Status broken_;  // after a transport error every call fails with it
};

}  // namespace strata::dist
