// TCP helpers for the rendezvous store and the launcher: blocking sockets
// whose every wait has a deadline, and a free-port picker.
//
// All functions speak Status (errno converted here, once). Sockets are
// O_CLOEXEC; the caller owns (and closes) every fd returned. Thread-safe:
// no shared state.
#pragma once

#include <chrono>
#include <cstddef>
#include <string>

#include "absl/status/statusor.h"

namespace strata::dist {

using Clock = std::chrono::steady_clock;

// A port on `host` that was free a moment ago (bound to port 0, read back,
// released). Another process may take it before the caller binds it; tests
// and the launcher accept that small race, as torchrun does.
absl::StatusOr<int> pick_free_port(const std::string& host = "127.0.0.1");

// Listens on host:port (SO_REUSEADDR, so a restarted job can rebind at
// once). A host that is not an address of this machine falls back to all
// interfaces, so MASTER_ADDR may be the name others reach rank 0 by.
absl::StatusOr<int> listen_tcp(const std::string& host, int port, int backlog = 128);

// One connection attempt to host:port, bounded by `deadline`. Unavailable
// (with the errno text) when refused or unreachable; DeadlineExceeded when
// the deadline passes first.
absl::StatusOr<int> connect_tcp(const std::string& host, int port, Clock::time_point deadline);

// Sends / receives exactly `size` bytes, resuming short transfers and EINTR.
// DeadlineExceeded when `deadline` passes; Unavailable when the peer closed
// (before the first byte: `closed_cleanly` is set when given) or reset.
absl::Status send_all(int fd, const void* data, size_t size, Clock::time_point deadline);
absl::Status recv_all(int fd, void* data, size_t size, Clock::time_point deadline,
                      bool* closed_cleanly = nullptr);

// "host:port" of the socket's local / remote end ("?" when unknown).
std::string local_address(int fd);
std::string peer_address(int fd);

}  // namespace strata::dist
