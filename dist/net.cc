#include "dist/net.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace strata::dist {
namespace {

struct AddrInfoDeleter {
  void operator()(addrinfo* ai) const { freeaddrinfo(ai); }
};
using AddrInfoPtr = std::unique_ptr<addrinfo, AddrInfoDeleter>;

absl::StatusOr<AddrInfoPtr> resolve(const std::string& host, int port, bool passive) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = passive ? AI_PASSIVE : 0;
  addrinfo* res = nullptr;
  const std::string service = std::to_string(port);
  int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &res);
  if (rc != 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot resolve host '", host, "': ", gai_strerror(rc)));
  }
  return AddrInfoPtr(res);
}

int remaining_ms(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  if (left.count() <= 0) return 0;
  return left.count() > 1'000'000'000 ? 1'000'000'000 : static_cast<int>(left.count());
}

// Waits for `events` on fd until the deadline: OK, DeadlineExceeded, or the
// poll error.
absl::Status wait_fd(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    pollfd p{fd, events, 0};
    int rc = poll(&p, 1, remaining_ms(deadline));
    if (rc > 0) return absl::OkStatus();
    if (rc == 0) return absl::DeadlineExceededError("timed out");
    if (errno != EINTR) return errno_status(errno, "poll");
  }
}

std::string format_address(const sockaddr_storage& ss) {
  char host[NI_MAXHOST];
  char serv[NI_MAXSERV];
  if (getnameinfo(reinterpret_cast<const sockaddr*>(&ss), sizeof(ss), host, sizeof(host), serv,
                  sizeof(serv), NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
    return "?";
  }
  return ss.ss_family == AF_INET6 ? absl::StrCat("[", host, "]:", serv)
                                  : absl::StrCat(host, ":", serv);
}

}  // namespace

absl::StatusOr<int> pick_free_port(const std::string& host) {
  STRATA_ASSIGN_OR_RETURN(int fd, listen_tcp(host, 0, 1));
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  int rc = getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  int err = errno;
  close(fd);
  if (rc != 0) return errno_status(err, "getsockname");
  return ntohs(ss.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port
                                        : reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
}

absl::StatusOr<int> listen_tcp(const std::string& host, int port, int backlog) {
  int last_err = EADDRNOTAVAIL;
  auto try_bind = [&](const std::string& h) -> absl::StatusOr<int> {
    STRATA_ASSIGN_OR_RETURN(AddrInfoPtr ai, resolve(h, port, true));
    for (addrinfo* a = ai.get(); a != nullptr; a = a->ai_next) {
      int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
      if (fd < 0) {
        last_err = errno;
        continue;
      }
      int one = 1;
      setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
      if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, backlog) == 0) return fd;
      last_err = errno;
      close(fd);
    }
    return errno_status(last_err, absl::StrCat("listening on ", h.empty() ? "*" : h, ":", port));
  };
  auto fd = try_bind(host);
  // MASTER_ADDR may name this host by an address it cannot bind (NAT, a
  // floating IP): serve on every interface instead.
  if (!fd.ok() && last_err == EADDRNOTAVAIL && !host.empty()) return try_bind("");
  return fd;
}

absl::StatusOr<int> connect_tcp(const std::string& host, int port, Clock::time_point deadline) {
  STRATA_ASSIGN_OR_RETURN(AddrInfoPtr ai, resolve(host, port, false));
  absl::Status last = absl::UnavailableError("no address");
  for (addrinfo* a = ai.get(); a != nullptr; a = a->ai_next) {
    int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
    if (fd < 0) {
      last = errno_status(errno, "socket");
      continue;
    }
    int rc = connect(fd, a->ai_addr, a->ai_addrlen);
    if (rc != 0 && errno == EINPROGRESS) {
      absl::Status waited = wait_fd(fd, POLLOUT, deadline);
      if (!waited.ok()) {
        close(fd);
        return absl::DeadlineExceededError(
            absl::StrCat("connecting to ", host, ":", port, ": timed out"));
      }
      int err = 0;
      socklen_t len = sizeof(err);
      getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
      rc = err == 0 ? 0 : -1;
      errno = err;
    }
    if (rc == 0) {
      int flags = fcntl(fd, F_GETFL);
      fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      return fd;
    }
    last = absl::UnavailableError(
        absl::StrCat("connecting to ", host, ":", port, ": ", strerror(errno)));
    close(fd);
  }
  return last;
}

absl::Status send_all(int fd, const void* data, size_t size, Clock::time_point deadline) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    STRATA_RETURN_IF_ERROR(wait_fd(fd, POLLOUT, deadline), "sending");
    ssize_t n = send(fd, p, size, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return absl::UnavailableError(absl::StrCat("sending: ", strerror(errno)));
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status recv_all(int fd, void* data, size_t size, Clock::time_point deadline,
                      bool* closed_cleanly) {
  char* p = static_cast<char*>(data);
  size_t got = 0;
  if (closed_cleanly != nullptr) *closed_cleanly = false;
  while (got < size) {
    STRATA_RETURN_IF_ERROR(wait_fd(fd, POLLIN, deadline), "receiving");
    ssize_t n = recv(fd, p + got, size - got, MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return absl::UnavailableError(absl::StrCat("receiving: ", strerror(errno)));
    }
    if (n == 0) {
      if (got == 0 && closed_cleanly != nullptr) *closed_cleanly = true;
      return absl::UnavailableError(got == 0 ? "connection closed by peer"
                                             : "connection closed by peer mid-message");
    }
    got += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

std::string local_address(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return "?";
  return format_address(ss);
}

std::string peer_address(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return "?";
  return format_address(ss);
}

}  // namespace strata::dist
