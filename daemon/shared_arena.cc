#include "daemon/shared_arena.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace strata::daemon {
namespace {
constexpr int kSeals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;
}  // namespace

absl::StatusOr<std::unique_ptr<SharedArena>> SharedArena::create(const std::string& name,
                                                                 uint64_t bytes) {
  std::unique_ptr<SharedArena> a(new SharedArena);
  a->bytes_ = arena_align(bytes == 0 ? 1 : bytes);
  a->fd_ = ::memfd_create(name.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (a->fd_ < 0) return errno_status(errno, "memfd_create for the session arena");
  if (::ftruncate(a->fd_, static_cast<off_t>(a->bytes_)) != 0) {
    return errno_status(errno, absl::StrCat("ftruncate of the session arena to ", a->bytes_));
  }
  if (int r = ::posix_fallocate(a->fd_, 0, static_cast<off_t>(a->bytes_)); r != 0) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "cannot reserve ", a->bytes_, " bytes for the session arena: ", std::strerror(r)));
  }
  if (::fcntl(a->fd_, F_ADD_SEALS, kSeals) != 0) {
    return errno_status(errno, "sealing the session arena memfd");
  }
  a->base_ = ::mmap(nullptr, a->bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, a->fd_, 0);
  if (a->base_ == MAP_FAILED) {
    a->base_ = nullptr;
    return errno_status(errno, "mmap of the session arena");
  }
  return a;
}

absl::StatusOr<std::unique_ptr<SharedArena>> SharedArena::map_client(int fd, uint64_t bytes) {
  std::unique_ptr<SharedArena> a(new SharedArena);
  a->fd_ = fd;
  struct stat st;
  if (::fstat(fd, &st) != 0) return errno_status(errno, "fstat of the arena stratad sent");
  const int seals = ::fcntl(fd, F_GET_SEALS);
  if (static_cast<uint64_t>(st.st_size) != bytes || seals < 0 || (seals & kSeals) != kSeals) {
    return absl::InternalError(absl::StrCat("the arena stratad sent is ", st.st_size,
                                            " bytes with seals ", seals, "; expected ", bytes,
                                            " bytes, sealed"));
  }
  a->bytes_ = bytes;
  a->base_ = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (a->base_ == MAP_FAILED) {
    a->base_ = nullptr;
    return errno_status(errno, "mmap of the session arena");
  }
  return a;
}

SharedArena::~SharedArena() {
  if (base_ != nullptr) ::munmap(base_, bytes_);
  if (fd_ >= 0) ::close(fd_);
}

}  // namespace strata::daemon
