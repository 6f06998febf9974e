// Which paths a checkpoint save may replace, and the leftovers of
// interrupted saves.
//
// A save of DIR writes DIR.tmp-<pid>, moves DIR to DIR.old, renames
// DIR.tmp-<pid> to DIR and removes DIR.old (engine/checkpoint.cc). So that no
// save ever deletes a user's data, DIR and DIR.old must each be missing, an
// empty directory, or a checkpoint strata wrote: a real directory (not a
// symlink) holding only meta.json (with the strata checkpoint marker, see
// checkpoint_format.h) and tensors.bin, or a data-parallel checkpoint
// (is_sharded_checkpoint). DIR.tmp-<pid> is owned through a
// flock on the directory held while the save runs (core/scratch_lock.h).
//
// Threading: free functions, any thread; they read the file system only,
// except remove_dead_checkpoint_temps.
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/scratch_lock.h"

namespace strata::engine {

// OK when a save to `dir` may go ahead: DIR is missing (and its nearest
// existing ancestor is a writable directory) or is an empty directory or a
// strata checkpoint in a writable parent; the same for DIR.old; and no live
// run is saving to DIR (a locked DIR.tmp-*). Otherwise FailedPrecondition
// naming the path, what it is and what to do. Trainers call it before the
// first step; every save calls it again.
absl::Status check_checkpoint_destination(const std::string& dir);

// Removes DIR.tmp-<pid> folders beside `dir` whose save is gone (their lock
// is free) and that hold only what a save writes; logs and returns each with
// its size. A locked one (a live save) and anything else are left alone.
absl::StatusOr<std::vector<RemovedScratch>> remove_dead_checkpoint_temps(const std::string& dir);

// Whether `path` is a directory (not a symlink) holding nothing but what a
// save writes into DIR.tmp-<pid> (tensors.bin, meta.json and its temporary
// meta.json.tmp*).
bool is_checkpoint_temp_dir(const std::string& path);

}  // namespace strata::engine
