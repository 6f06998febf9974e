#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "dist/backends.h"
#include "dist/communicator.h"

namespace strata::dist {

absl::StatusOr<std::unique_ptr<Communicator>> connect(const RankInfo& info,
                                                      const CommOptions& options) {
  if (info.world_size < 1 || info.rank < 0 || info.rank >= info.world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank ", info.rank, " is not a rank of a world of ", info.world_size));
  }
  if (info.master_port < 1 || info.master_port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("master port ", info.master_port, " is not in 1..65535"));
  }
  if (options.timeout.count() <= 0) {
    return absl::InvalidArgumentError("the communicator timeout must be positive");
  }
  if (options.backend == Backend::kNccl) STRATA_RETURN_IF_ERROR(check_nccl(options));
  if (info.world_size == 1) {
    if (options.backend == Backend::kGloo) return make_local_communicator(Backend::kGloo);
    // NCCL's buffers are device memory: even one rank goes through NCCL.
    return make_nccl_communicator(info, options, nullptr);
  }
  STRATA_ASSIGN_OR_RETURN(std::unique_ptr<Rendezvous> rendezvous,
                          Rendezvous::join(info, options.timeout));
  if (options.backend == Backend::kGloo) {
    return make_gloo_communicator(info, options, std::move(rendezvous));
  }
  return make_nccl_communicator(info, options, std::move(rendezvous));
}

}  // namespace strata::dist
