#include "core/scratch_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/file_util.h"
#include "core/status.h"

namespace strata {
namespace {

namespace fs = std::filesystem;

// Takes the lock on an open fd; closes it on failure.
absl::StatusOr<int> lock_fd(int fd, const std::string& path) {
  while (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    if (err == EINTR) continue;
    ::close(fd);
    if (err == EWOULDBLOCK) {
      return absl::FailedPreconditionError(
          absl::StrCat(path, " is locked by a running strata process that owns it"));
    }
    return errno_status(err, absl::StrCat("cannot lock ", path));
  }
  return fd;
}

uint64_t bytes_in(const std::string& path, bool is_dir) {
  std::error_code ec;
  if (!is_dir) {
    const auto n = fs::file_size(path, ec);
    return ec ? 0 : static_cast<uint64_t>(n);
  }
  uint64_t total = 0;
  auto names = list_directory(path);
  if (!names.ok()) return 0;
  for (const std::string& name : *names) {
    struct stat st;
    if (::lstat((fs::path(path) / name).c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
      total += static_cast<uint64_t>(st.st_size);
    }
  }
  return total;
}

}  // namespace

absl::StatusOr<ScratchLock> ScratchLock::create_file(const std::string& path) {
  // Created under a private name, locked, then moved in without replacing
  // anything: a cleanup never sees `path` unlocked.
  static std::atomic<uint64_t> counter{0};
  const std::string staging = absl::StrCat(path, ".creating-", ::getpid(), "-", counter++);
  const int fd = ::open(staging.c_str(), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) return errno_status(errno, absl::StrCat("cannot create ", staging));
  auto locked = lock_fd(fd, staging);
  if (!locked.ok()) {
    ::unlink(staging.c_str());
    return locked.status();
  }
  int rc = ::renameat2(AT_FDCWD, staging.c_str(), AT_FDCWD, path.c_str(), RENAME_NOREPLACE);
  if (rc != 0 && (errno == EINVAL || errno == ENOSYS)) {  // a file system without it
    rc = ::link(staging.c_str(), path.c_str());
    const int err = errno;
    ::unlink(staging.c_str());
    errno = err;
  }
  if (rc != 0) {
    const int err = errno;
    ::unlink(staging.c_str());
    ::close(fd);
    if (err == EEXIST) {
      return absl::AlreadyExistsError(absl::StrCat("cannot create ", path, ": it exists"));
    }
    return errno_status(err, absl::StrCat("cannot create ", path));
  }
  return ScratchLock(fd);
}

absl::StatusOr<ScratchLock> ScratchLock::lock(const std::string& path) {
  // O_NONBLOCK: never hang on a FIFO put in the way.
  const int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return errno_status(errno, absl::StrCat("cannot open ", path, " to lock it"));
  struct stat st;
  if (::fstat(fd, &st) != 0 || !(S_ISREG(st.st_mode) || S_ISDIR(st.st_mode))) {
    ::close(fd);
    return absl::FailedPreconditionError(
        absl::StrCat(path, " is not a regular file or directory; strata does not own it"));
  }
  STRATA_ASSIGN_OR_RETURN(int locked, lock_fd(fd, path));
  return ScratchLock(locked);
}

ScratchLock::~ScratchLock() { release(); }

ScratchLock::ScratchLock(ScratchLock&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}

ScratchLock& ScratchLock::operator=(ScratchLock&& other) noexcept {
  if (this != &other) {
    release();
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

void ScratchLock::release() {
  if (fd_ >= 0) ::close(fd_);  // closing the last fd of the open file drops the flock
  fd_ = -1;
}

absl::StatusOr<std::vector<RemovedScratch>> remove_unowned_scratch(
    const std::string& dir, const std::function<bool(const std::string& path)>& is_scratch) {
  std::vector<RemovedScratch> removed;
  auto names = list_directory(dir);
  if (!names.ok() && absl::IsNotFound(names.status())) return removed;
  if (!names.ok()) return names.status();
  std::vector<std::string> candidates;
  for (const std::string& name : *names) {
    const std::string path = (fs::path(dir) / name).string();
    std::error_code ec;
    if (fs::is_symlink(fs::symlink_status(path, ec))) continue;
    if (is_scratch(path)) candidates.push_back(path);
  }
  for (const std::string& path : candidates) {
    auto lock = ScratchLock::lock(path);
    if (!lock.ok()) continue;  // a live owner, or not ours to judge
    std::error_code ec2;
    const bool is_dir = fs::is_directory(fs::symlink_status(path, ec2));
    RemovedScratch r{path, bytes_in(path, is_dir)};
    fs::remove_all(path, ec2);
    if (ec2) {
      return absl::FailedPreconditionError(absl::StrCat(
          "cannot remove ", path, ", left by a strata run that is gone: ", ec2.message()));
    }
    removed.push_back(std::move(r));
  }
  return removed;
}

}  // namespace strata
