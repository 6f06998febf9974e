#include "dist/rendezvous.h"

#include <unistd.h>

#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/status.h"
#include "dist/net.h"

namespace strata::dist {

absl::StatusOr<std::unique_ptr<Rendezvous>> Rendezvous::join(const RankInfo& info,
                                                             std::chrono::milliseconds timeout) {
  std::unique_ptr<Rendezvous> r(new Rendezvous());
  r->rank_ = info.rank;
  r->world_ = info.world_size;
  r->timeout_ = timeout;
  if (info.rank == 0) {
    STRATA_ASSIGN_OR_RETURN(r->server_, StoreServer::start(info.master_addr, info.master_port),
                            absl::StrCat("MASTER_ADDR:MASTER_PORT ", info.master_addr, ":",
                                         info.master_port, " (is another job using the port?)"));
  }
  STRATA_ASSIGN_OR_RETURN(r->client_,
                          StoreClient::connect(info.master_addr, info.master_port, timeout),
                          absl::StrCat("rank ", info.rank));
  std::string local = r->client_->local_address();
  STRATA_RETURN_IF_ERROR(r->client_->hello(info.rank, info.world_size,
                                           absl::StrCat(local.substr(0, local.rfind(':')), ", pid ",
                                                        static_cast<long>(getpid()))),
                         absl::StrCat("rank ", info.rank, " registering with the store"));
  return r;
}

Rendezvous::~Rendezvous() {
  if (client_ != nullptr) (void)client_->goodbye();
  client_.reset();
  // Others may still be failing over this rank's last collective and need
  // the store to say who died; a normal end costs the time the slowest rank
  // takes to close its communicator.
  if (server_ != nullptr)
    server_->linger(rank_, std::min<std::chrono::milliseconds>(timeout_, std::chrono::seconds(5)));
  server_.reset();
}

absl::Status Rendezvous::explain_failure(absl::string_view what, absl::StatusCode code,
                                         absl::string_view detail) {
  const std::string head = absl::StrCat(what, " on rank ", rank_, " failed: ");
  // The store sees a dead rank's socket close at about the moment the
  // backend does; after a broken connection give it a moment to catch up.
  // After a timeout a death would have shown long ago: ask once.
  const auto deadline =
      code == absl::StatusCode::kDeadlineExceeded
          ? Clock::now()
          : Clock::now() + std::min<std::chrono::milliseconds>(timeout_, std::chrono::seconds(1));
  auto names = [](const std::vector<std::string>& v, const char* one, const char* many) {
    return absl::StrCat(absl::StrJoin(v, ", "), v.size() == 1 ? one : many);
  };
  for (;;) {
    auto roster = client_->roster();
    if (!roster.ok()) {
      return absl::UnavailableError(
          absl::StrCat(head, "rank 0 (the rendezvous store at ", client_->server_address(),
                       ") is unreachable, so it has most likely exited (",
                       roster.status().message(), "); backend: ", detail));
    }
    std::vector<std::string> died, left, missing;
    std::vector<bool> seen(world_, false);
    for (const auto& d : *roster) {
      if (d.rank >= 0 && d.rank < world_) seen[d.rank] = true;
      if (d.rank == rank_ || d.state == RankState::State::kAlive) continue;
      (d.state == RankState::State::kLeft ? left : died)
          .push_back(absl::StrCat("rank ", d.rank, " (", d.description, ")"));
    }
    for (int r = 0; r < world_; ++r) {
      if (!seen[r]) missing.push_back(absl::StrCat("rank ", r));
    }
    if (!died.empty()) {
      return absl::UnavailableError(
          absl::StrCat(head, names(died, " has", " have"), " exited; backend: ", detail));
    }
    if (Clock::now() >= deadline) {
      if (!left.empty()) {
        return absl::UnavailableError(
            absl::StrCat(head, names(left, " has", " have"),
                         " closed its communicator (left the job) while this rank still "
                         "expected it in a collective; backend: ",
                         detail));
      }
      if (!missing.empty()) {
        return absl::DeadlineExceededError(absl::StrCat(
            head, names(missing, " has", " have"), " not joined the rendezvous at ",
            client_->server_address(), " within ", timeout_.count(),
            " ms (not started, or started with another MASTER_ADDR / MASTER_PORT); backend: ",
            detail));
      }
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return absl::Status(code, absl::StrCat(head,
                                         "no rank has exited, so a rank is stalled or slower "
                                         "than the timeout of ",
                                         timeout_.count(), " ms; backend: ", detail));
}

}  // namespace strata::dist
