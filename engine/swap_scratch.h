// The NVMe swap files the engine lays out under each nvme_path:
// strata_optimizer_<pid>.swp, as large as the tensors homed there. Each is
// owned through a flock held by the engine for its lifetime
// (core/scratch_lock.h), so a later run removes the files of runs that were
// killed, and never a live run's.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/scratch_lock.h"

namespace strata::engine {

// This engine's swap file in `dir`, created and locked:
// DIR/strata_optimizer_<pid>.swp, or strata_optimizer_<pid>-<n>.swp when
// another engine of this process has that one. *path gets the name.
absl::StatusOr<ScratchLock> create_swap_file(const std::string& dir, std::string* path);

// Removes strata_optimizer_<pid>.swp files in `dir` whose owner is gone (lock
// free); logs each with its size and returns them.
absl::StatusOr<std::vector<RemovedScratch>> remove_dead_swap_files(const std::string& dir);

}  // namespace strata::engine
