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
  STRATA_RETURN_IF_ERROR(
      r->client_->hello(info.rank, absl::StrCat(local.substr(0, local.rfind(':')), ", pid ",
                                                static_cast<long>(getpid()))),
      absl::StrCat("rank ", info.rank, " registering with the store"));
  return r;
}

Rendezvous::~Rendezvous() {
  if (client_ != nullptr) (void)client_->goodbye();
  client_.reset();
  server_.reset();
}

absl::Status Rendezvous::explain_failure(absl::string_view what, absl::StatusCode code,
                                         absl::string_view detail) {
  const std::string head = absl::StrCat(what, " on rank ", rank_, " failed: ");
  // The store sees a dead rank's socket close at about the moment the
  // backend does; give it a moment to catch up before concluding none died.
  const auto deadline =
      Clock::now() + std::min<std::chrono::milliseconds>(timeout_, std::chrono::seconds(1));
  for (;;) {
    auto dead = client_->dead_ranks();
    if (!dead.ok()) {
      return absl::UnavailableError(absl::StrCat(head, "rank 0 (the rendezvous store at ",
                                                 client_->server_address(),
                                                 ") is unreachable, so it has most likely exited (",
                                                 dead.status().message(), "); backend: ", detail));
    }
    if (!dead->empty()) {
      std::vector<std::string> names;
      for (const auto& d : *dead)
        names.push_back(absl::StrCat("rank ", d.rank, " (", d.description, ")"));
      return absl::UnavailableError(absl::StrCat(head, absl::StrJoin(names, ", "),
                                                 dead->size() == 1 ? " has" : " have",
                                                 " exited; backend: ", detail));
    }
    if (Clock::now() >= deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return absl::Status(code, absl::StrCat(head,
                                         "no rank has exited, so a rank is stalled or slower "
                                         "than the timeout of ",
                                         timeout_.count(), " ms; backend: ", detail));
}

}  // namespace strata::dist
