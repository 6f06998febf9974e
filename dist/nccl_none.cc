// Built without CUDA: NCCL cannot be used.
#include "dist/backends.h"

namespace strata::dist {

absl::Status check_nccl(const CommOptions&) {
  return absl::FailedPreconditionError(
      "the NCCL backend needs a CUDA build of strata (configure with -DSTRATA_CUDA=ON); use "
      "the Gloo backend for CPU ranks");
}

absl::StatusOr<std::unique_ptr<Communicator>> make_nccl_communicator(const RankInfo&,
                                                                     const CommOptions& options,
                                                                     std::unique_ptr<Rendezvous>) {
  return check_nccl(options);
}

}  // namespace strata::dist
