// The backends behind connect(), one factory each (connect.cc picks).
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "dist/communicator.h"
#include "dist/rendezvous.h"

namespace strata::dist {

// world_size 1: collectives copy or do nothing; host memory.
std::unique_ptr<Communicator> make_local_communicator(Backend backend);

// Gloo over TCP; `rendezvous` has already joined the store.
absl::StatusOr<std::unique_ptr<Communicator>> make_gloo_communicator(
    const RankInfo& info, const CommOptions& options, std::unique_ptr<Rendezvous> rendezvous);

// Whether NCCL can run here (CUDA build, libnccl.so.2, the device):
// FailedPrecondition saying what is missing. Checked before the rendezvous,
// so a rank without NCCL fails at once instead of after the others wait.
absl::Status check_nccl(const CommOptions& options);

// NCCL loaded with dlopen; FailedPrecondition when the build has no CUDA,
// libnccl.so.2 is missing or the device is not there. `rendezvous` may be
// null for world_size 1.
absl::StatusOr<std::unique_ptr<Communicator>> make_nccl_communicator(
    const RankInfo& info, const CommOptions& options, std::unique_ptr<Rendezvous> rendezvous);

}  // namespace strata::dist
