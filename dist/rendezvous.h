// Rendezvous: this rank's seat in the job's store. Rank 0 starts the store
// on master_addr:master_port; every rank (rank 0 too, over loopback)
// connects to it, retrying until the timeout, and registers as its rank so
// the store can tell who has died. The backends swap their addresses / ids
// through store(), and ask explain_failure() after a collective fails.
//
// Ownership: the communicator owns its Rendezvous; destroying it says
// goodbye (a clean exit is not reported as a death) and, on rank 0, stops
// the store once the other ranks have closed their connections (or after
// min(timeout, 5 s)), so they can still learn which rank died. Threading: one thread at a time,
// like the communicator.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"
#include "dist/communicator.h"
#include "dist/store.h"

namespace strata::dist {

class Rendezvous {
 public:
  // Unavailable names master_addr:master_port when rank 0's store is not
  // reachable within `timeout` (or, on rank 0, when the port is taken).
  static absl::StatusOr<std::unique_ptr<Rendezvous>> join(const RankInfo& info,
                                                          std::chrono::milliseconds timeout);
  ~Rendezvous();

  StoreClient& store() { return *client_; }
  int rank() const { return rank_; }
  std::chrono::milliseconds timeout() const { return timeout_; }

  // The status to return when `what` failed with `detail` (the backend's
  // own message), from what the store knows: Unavailable naming the ranks
  // that have exited (with host and pid), rank 0 when its store is gone, or
  // the ranks that closed their communicator; DeadlineExceeded naming the
  // ranks that never joined; otherwise `code` (usually DeadlineExceeded)
  // saying no rank has exited, so one is stalled or slow.
  absl::Status explain_failure(absl::string_view what, absl::StatusCode code,
                               absl::string_view detail);

 private:
  Rendezvous() = default;
  int rank_ = 0;
  int world_ = 1;
  std::chrono::milliseconds timeout_{0};
  std::unique_ptr<StoreServer> server_;
  std::unique_ptr<StoreClient> client_;
};

}  // namespace strata::dist
