#include "dist/store.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/status.h"
#include "dist/net.h"

namespace strata::dist {
namespace {

enum Op : uint8_t { kSet = 1, kGet = 2, kCheck = 3, kHello = 4, kGoodbye = 5, kRoster = 6 };
enum Reply : uint8_t { kOk = 0, kMissing = 1, kBadRequest = 2, kConflict = 3 };

// A request must arrive whole this soon after its first byte.
constexpr std::chrono::seconds kBodyTimeout{30};

void put_u32(std::string& out, uint32_t v) {
  char b[4];
  std::memcpy(b, &v, 4);
  out.append(b, 4);
}
void put_str(std::string& out, absl::string_view v) {
  put_u32(out, static_cast<uint32_t>(v.size()));
  out.append(v.data(), v.size());
}

// Reads fields from a frame body; every read is checked against what is left.
class Reader {
 public:
  explicit Reader(absl::string_view body) : rest_(body) {}
  bool u8(uint8_t* v) {
    if (rest_.empty()) return false;
    *v = static_cast<uint8_t>(rest_[0]);
    rest_.remove_prefix(1);
    return true;
  }
  bool u32(uint32_t* v) {
    if (rest_.size() < 4) return false;
    std::memcpy(v, rest_.data(), 4);
    rest_.remove_prefix(4);
    return true;
  }
  bool i32(int32_t* v) {
    uint32_t u;
    if (!u32(&u)) return false;
    std::memcpy(v, &u, 4);
    return true;
  }
  bool str(std::string* v) {
    uint32_t n;
    if (!u32(&n) || n > rest_.size()) return false;
    v->assign(rest_.data(), n);
    rest_.remove_prefix(n);
    return true;
  }
  bool done() const { return rest_.empty(); }

 private:
  absl::string_view rest_;
};

std::string frame(const std::string& body) {
  std::string out;
  out.reserve(body.size() + 4);
  put_u32(out, static_cast<uint32_t>(body.size()));
  out += body;
  return out;
}

}  // namespace

// ---------------------------------------------------------------- server

struct StoreServer::Impl {
  int listen_fd = -1;
  int port = 0;
  std::atomic<bool> stopping{false};
  std::thread acceptor;

  std::mutex mu;
  std::map<std::string, std::string, std::less<>> data;
  struct RankEntry {
    std::string description;
    bool gone = false;
    bool left = false;  // gone after goodbye
  };
  std::map<int, RankEntry> ranks;
  int world_size = 0;  // from the first hello
  std::vector<int> open_fds;
  std::vector<std::thread> workers;

  void accept_loop() {
    while (!stopping.load()) {
      int fd = accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) {
        if (stopping.load()) return;
        if (errno == EINTR || errno == ECONNABORTED) continue;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));  // EMFILE and kin
        continue;
      }
      std::lock_guard<std::mutex> lock(mu);
      if (stopping.load()) {
        close(fd);
        return;
      }
      open_fds.push_back(fd);
      workers.emplace_back([this, fd] { serve(fd); });
    }
  }

  // Answers one request; false when it is malformed (the connection closes).
  bool handle(absl::string_view body, int* rank, bool* goodbye, std::string* reply) {
    Reader r(body);
    uint8_t op = 0;
    if (!r.u8(&op)) return false;
    reply->clear();
    switch (op) {
      case kSet: {
        std::string key, value;
        if (!r.str(&key) || !r.str(&value) || !r.done()) return false;
        std::lock_guard<std::mutex> lock(mu);
        data[key] = std::move(value);
        reply->push_back(kOk);
        return true;
      }
      case kGet: {
        std::string key;
        if (!r.str(&key) || !r.done()) return false;
        std::lock_guard<std::mutex> lock(mu);
        auto it = data.find(key);
        if (it == data.end()) {
          reply->push_back(kMissing);
        } else {
          reply->push_back(kOk);
          put_str(*reply, it->second);
        }
        return true;
      }
      case kCheck: {
        uint32_t n = 0;
        if (!r.u32(&n)) return false;
        bool all = true;
        std::lock_guard<std::mutex> lock(mu);
        for (uint32_t i = 0; i < n; ++i) {
          std::string key;
          if (!r.str(&key)) return false;
          all = all && data.count(key) > 0;
        }
        if (!r.done()) return false;
        reply->push_back(all ? kOk : kMissing);
        return true;
      }
      case kHello: {
        int32_t who = -1, world = 0;
        std::string description;
        if (!r.i32(&who) || !r.i32(&world) || !r.str(&description) || !r.done() || who < 0 ||
            world < 1) {
          return false;
        }
        std::lock_guard<std::mutex> lock(mu);
        std::string conflict;
        if (world_size == 0) world_size = world;
        auto it = ranks.find(who);
        if (world != world_size) {
          conflict = absl::StrCat("rank ", who, " (", description, ") has WORLD_SIZE=", world,
                                  " but the job's first rank had ", world_size,
                                  "; set the same WORLD_SIZE on every rank");
        } else if (who >= world) {
          conflict = absl::StrCat("rank ", who, " is not below WORLD_SIZE=", world);
        } else if (it != ranks.end() && !it->second.gone) {
          conflict = absl::StrCat("rank ", who, " is already in the job (", it->second.description,
                                  "), so ", description,
                                  " cannot join as it too; is RANK unique on every process?");
        }
        if (!conflict.empty()) {
          reply->push_back(kConflict);
          put_str(*reply, conflict);
          return true;
        }
        ranks[who] = RankEntry{std::move(description)};
        *rank = who;
        reply->push_back(kOk);
        return true;
      }
      case kGoodbye:
        if (!r.done()) return false;
        *goodbye = true;
        reply->push_back(kOk);
        return true;
      case kRoster: {
        if (!r.done()) return false;
        std::lock_guard<std::mutex> lock(mu);
        reply->push_back(kOk);
        put_u32(*reply, static_cast<uint32_t>(ranks.size()));
        for (const auto& [who, entry] : ranks) {
          put_u32(*reply, static_cast<uint32_t>(who));
          put_str(*reply, entry.description);
          reply->push_back(static_cast<char>(!entry.gone  ? RankState::State::kAlive
                                             : entry.left ? RankState::State::kLeft
                                                          : RankState::State::kDied));
        }
        return true;
      }
      default:
        return false;
    }
  }

  void serve(int fd) {
    int rank = -1;
    bool goodbye = false;
    std::string body, reply;
    for (;;) {
      // Idle connections (a rank training for days) wait without a deadline;
      // stop() wakes them with shutdown().
      pollfd p{fd, POLLIN, 0};
      if (poll(&p, 1, -1) < 0) {
        if (errno == EINTR) continue;
        break;
      }
      uint32_t len = 0;
      if (!recv_all(fd, &len, 4, Clock::now() + kBodyTimeout).ok()) break;
      if (len == 0 || len > kMaxFrameBytes) break;
      body.resize(len);
      if (!recv_all(fd, body.data(), len, Clock::now() + kBodyTimeout).ok()) break;
      if (!handle(body, &rank, &goodbye, &reply)) {
        std::string bad(1, static_cast<char>(kBadRequest));
        (void)send_all(fd, frame(bad).data(), bad.size() + 4, Clock::now() + kBodyTimeout);
        break;
      }
      std::string out = frame(reply);
      if (!send_all(fd, out.data(), out.size(), Clock::now() + kBodyTimeout).ok()) break;
    }
    std::lock_guard<std::mutex> lock(mu);
    if (rank >= 0 && !stopping.load()) {
      ranks[rank].gone = true;
      ranks[rank].left = goodbye;
    }
    std::erase(open_fds, fd);
    close(fd);
  }
};

StoreServer::StoreServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

absl::StatusOr<std::unique_ptr<StoreServer>> StoreServer::start(const std::string& host, int port) {
  auto impl = std::make_unique<Impl>();
  STRATA_ASSIGN_OR_RETURN(impl->listen_fd, listen_tcp(host, port),
                          "starting the rendezvous store (rank 0)");
  std::string local = dist::local_address(impl->listen_fd);
  impl->port = std::stoi(local.substr(local.rfind(':') + 1));
  Impl* raw = impl.get();
  impl->acceptor = std::thread([raw] { raw->accept_loop(); });
  return std::unique_ptr<StoreServer>(new StoreServer(std::move(impl)));
}

StoreServer::~StoreServer() {
  impl_->stopping.store(true);
  shutdown(impl_->listen_fd, SHUT_RDWR);
  impl_->acceptor.join();
  std::vector<std::thread> workers;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    for (int fd : impl_->open_fds) shutdown(fd, SHUT_RDWR);
    workers.swap(impl_->workers);
  }
  for (auto& t : workers) t.join();
  close(impl_->listen_fd);
}

int StoreServer::port() const { return impl_->port; }

void StoreServer::linger(int self, std::chrono::milliseconds max) {
  const auto deadline = Clock::now() + max;
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(impl_->mu);
      bool alone = true;
      for (const auto& [who, entry] : impl_->ranks) alone = alone && (who == self || entry.gone);
      if (alone) return;
    }
    if (Clock::now() >= deadline) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

// ---------------------------------------------------------------- client

StoreClient::StoreClient(int fd, std::string server, std::chrono::milliseconds timeout)
    : fd_(fd), server_(std::move(server)), timeout_(timeout) {}

StoreClient::~StoreClient() { close(fd_); }

absl::StatusOr<std::unique_ptr<StoreClient>> StoreClient::connect(
    const std::string& host, int port, std::chrono::milliseconds timeout) {
  const std::string server = absl::StrCat(host, ":", port);
  const auto deadline = Clock::now() + timeout;
  absl::Status last;
  for (;;) {
    auto fd = connect_tcp(host, port, deadline);
    if (fd.ok()) {
      return std::unique_ptr<StoreClient>(new StoreClient(*fd, server, timeout));
    }
    last = fd.status();
    const auto now = Clock::now();
    if (now >= deadline) break;
    std::this_thread::sleep_for(
        std::min<Clock::duration>(std::chrono::milliseconds(50), deadline - now));
  }
  return absl::UnavailableError(absl::StrCat(
      "cannot reach the rendezvous store of rank 0 at ", server, " within ", timeout.count(),
      " ms (", last.message(),
      "); is rank 0 running, and are MASTER_ADDR / MASTER_PORT the same on every rank?"));
}

absl::StatusOr<std::string> StoreClient::call(const std::string& request) {
  if (!broken_.ok()) return broken_;
  const auto deadline = Clock::now() + timeout_;
  std::string out = frame(request);
  absl::Status st = send_all(fd_, out.data(), out.size(), deadline);
  uint32_t len = 0;
  if (st.ok()) st = recv_all(fd_, &len, 4, deadline);
  if (st.ok() && (len == 0 || len > kMaxFrameBytes)) {
    st = absl::DataLossError(absl::StrCat("reply of ", len, " bytes"));
  }
  std::string body;
  if (st.ok()) {
    body.resize(len);
    st = recv_all(fd_, body.data(), len, deadline);
  }
  if (st.ok() && static_cast<uint8_t>(body[0]) == kBadRequest) {
    st = absl::InternalError("the store refused a request as malformed");
  }
  if (!st.ok()) {
    broken_ = absl::UnavailableError(
        absl::StrCat("rendezvous store of rank 0 at ", server_, ": ", st.message()));
    return broken_;
  }
  return body;
}

absl::Status StoreClient::set(absl::string_view key, absl::string_view value) {
  std::string req(1, static_cast<char>(kSet));
  put_str(req, key);
  put_str(req, value);
  return call(req).status();
}

absl::StatusOr<std::string> StoreClient::get(absl::string_view key,
                                             std::chrono::milliseconds timeout) {
  std::string req(1, static_cast<char>(kGet));
  put_str(req, key);
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    STRATA_ASSIGN_OR_RETURN(std::string body, call(req));
    if (static_cast<uint8_t>(body[0]) == kOk) {
      Reader r(absl::string_view(body).substr(1));
      std::string value;
      if (!r.str(&value) || !r.done()) {
        return absl::DataLossError(absl::StrCat("malformed reply from the store at ", server_));
      }
      return value;
    }
    if (Clock::now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat("key '", key, "' not set in the store at ",
                                                      server_, " within ", timeout.count(), " ms"));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

absl::StatusOr<bool> StoreClient::check(std::span<const std::string> keys) {
  std::string req(1, static_cast<char>(kCheck));
  put_u32(req, static_cast<uint32_t>(keys.size()));
  for (const auto& k : keys) put_str(req, k);
  STRATA_ASSIGN_OR_RETURN(std::string body, call(req));
  return static_cast<uint8_t>(body[0]) == kOk;
}

absl::Status StoreClient::wait(std::span<const std::string> keys,
                               std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    STRATA_ASSIGN_OR_RETURN(bool all, check(keys));
    if (all) return absl::OkStatus();
    if (Clock::now() >= deadline) {
      std::vector<std::string> missing;
      for (const auto& k : keys) {
        STRATA_ASSIGN_OR_RETURN(bool there, check(std::span<const std::string>(&k, 1)));
        if (!there) missing.push_back(k);
      }
      return absl::DeadlineExceededError(absl::StrCat("keys not set in the store at ", server_,
                                                      " within ", timeout.count(),
                                                      " ms: ", absl::StrJoin(missing, ", ")));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

absl::Status StoreClient::hello(int rank, int world_size, absl::string_view description) {
  std::string req(1, static_cast<char>(kHello));
  put_u32(req, static_cast<uint32_t>(rank));
  put_u32(req, static_cast<uint32_t>(world_size));
  put_str(req, description);
  STRATA_ASSIGN_OR_RETURN(std::string body, call(req));
  if (static_cast<uint8_t>(body[0]) == kConflict) {
    Reader r(absl::string_view(body).substr(1));
    std::string why;
    if (!r.str(&why)) why = "refused";
    return absl::InvalidArgumentError(why);
  }
  return absl::OkStatus();
}

absl::Status StoreClient::goodbye() { return call(std::string(1, kGoodbye)).status(); }

absl::StatusOr<std::vector<RankState>> StoreClient::roster() {
  STRATA_ASSIGN_OR_RETURN(std::string body, call(std::string(1, kRoster)));
  Reader r(absl::string_view(body).substr(1));
  uint32_t n = 0;
  const auto malformed =
      absl::DataLossError(absl::StrCat("malformed roster reply from the store at ", server_));
  if (!r.u32(&n)) return malformed;
  std::vector<RankState> out;
  for (uint32_t i = 0; i < n; ++i) {
    RankState d;
    int32_t who;
    uint8_t state = 0;
    if (!r.i32(&who) || !r.str(&d.description) || !r.u8(&state) || state > 2) return malformed;
    d.rank = who;
    d.state = static_cast<RankState::State>(state);
    out.push_back(std::move(d));
  }
  if (!r.done()) return malformed;
  return out;
}

std::string StoreClient::local_address() const { return dist::local_address(fd_); }

}  // namespace strata::dist
