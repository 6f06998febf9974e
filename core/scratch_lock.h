// Scratch files and directories a run creates and removes when it ends (the
// NVMe swap file strata_optimizer_<pid>.swp, a checkpoint save's
// DIR.tmp-<pid>) are owned through an exclusive flock(2) on the file or
// directory itself, held for the owner's lifetime. The kernel drops the lock
// when the owner dies (SIGKILL, OOM kill, power loss), so a later run can
// tell a dead owner's leftover (lock free) from a live run's (lock held) and
// remove only the former.
//
// A file is created under a private name, locked, and only then moved to its
// name, so a cleanup never finds it unlocked. A directory is locked right
// after mkdir; a cleanup in the microseconds between can remove it while it
// is still empty (the owner's next create in it then fails).
//
// Threading: a ScratchLock is owned by one thread at a time (movable).
// Errors: Status naming the path; nothing throws.
//
//   STRATA_ASSIGN_OR_RETURN(ScratchLock lock, ScratchLock::create_file(path));
//   ... use path; remove it; then drop the lock ...
//   STRATA_ASSIGN_OR_RETURN(auto removed, remove_unowned_scratch(dir, matches));
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace strata {

class ScratchLock {
 public:
  // Creates the new regular file `path` and locks it; AlreadyExists when
  // anything is there (the caller picks another name or removes a leftover).
  static absl::StatusOr<ScratchLock> create_file(const std::string& path);
  // Locks the existing file or directory `path` (not a symlink); as above.
  static absl::StatusOr<ScratchLock> lock(const std::string& path);

  ScratchLock() = default;
  ~ScratchLock();
  ScratchLock(ScratchLock&& other) noexcept;
  ScratchLock& operator=(ScratchLock&& other) noexcept;
  ScratchLock(const ScratchLock&) = delete;
  ScratchLock& operator=(const ScratchLock&) = delete;

  bool held() const { return fd_ >= 0; }
  // Releases the lock now (idempotent).
  void release();

 private:
  explicit ScratchLock(int fd) : fd_(fd) {}
  int fd_ = -1;
};

// A leftover remove_unowned_scratch removed: its path and the bytes it held
// (a directory: the sum of its regular files).
struct RemovedScratch {
  std::string path;
  uint64_t bytes = 0;
};

// Removes each entry of `dir` that `is_scratch(path)` accepts and whose lock
// no one holds (its owner is gone), holding the lock while it removes it.
// Symlinks are neither followed nor removed; entries locked by a live run,
// or that cannot be opened, are left alone. NotFound when `dir` is missing
// is not an error: nothing is removed.
absl::StatusOr<std::vector<RemovedScratch>> remove_unowned_scratch(
    const std::string& dir, const std::function<bool(const std::string& path)>& is_scratch);

}  // namespace strata
