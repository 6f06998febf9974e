#include "offload/host_arena.h"

#include <fcntl.h>
#include <linux/memfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <optional>

#include "absl/strings/str_cat.h"
#include "core/host_info.h"
#include "core/log.h"
#include "core/status.h"

namespace strata::offload {
namespace {

constexpr uint64_t kPage = 4096;

uint64_t round_up(uint64_t v, uint64_t to) { return (v + to - 1) / to * to; }

std::string gib(uint64_t bytes) { return absl::StrCat(bytes / double(uint64_t{1} << 30), " GiB"); }

// The checks DeepSpeed users hit as crashes mid-run, made before any memory is taken.
absl::Status check_limits(uint64_t bytes) {
  const HostInfo host = probe_host();
  const uint64_t usable = host.memory.usable_bytes();
  if (usable != 0 && bytes > usable) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "host tier of ", gib(bytes), " does not fit: ", gib(usable), " usable (MemAvailable",
        host.memory.cgroup_limit_bytes ? ", capped by the cgroup limit" : "",
        "); lower the host budget, offload more to NVMe, or free memory"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<HostArena>> HostArena::create(const HostArenaOptions& options) {
  if (options.capacity_bytes == 0) return absl::InvalidArgumentError("host arena of 0 bytes");
  STRATA_RETURN_IF_ERROR(check_limits(options.capacity_bytes));
  std::unique_ptr<HostArena> arena(new HostArena);
  auto log = log::get("offload");

  const HostInfo host = probe_host();
  uint64_t capacity = round_up(options.capacity_bytes, kPage);
  const uint64_t huge = host.huge_pages.page_size_bytes;
  if (options.huge_pages && huge != 0 && host.huge_pages.free * huge >= round_up(capacity, huge)) {
    arena->fd_ = memfd_create(options.name.c_str(), MFD_CLOEXEC | MFD_HUGETLB);
    if (arena->fd_ >= 0) {
      capacity = round_up(capacity, huge);
      arena->huge_page_mode_ = "hugetlb";
    }
  }
  if (arena->fd_ < 0) {
    arena->fd_ = memfd_create(options.name.c_str(), MFD_CLOEXEC);
    if (arena->fd_ < 0) return errno_status(errno, "memfd_create for the host tier");
  }
  if (ftruncate(arena->fd_, static_cast<off_t>(capacity)) != 0) {
    return errno_status(errno, absl::StrCat("sizing the host tier memfd to ", capacity, " bytes"));
  }
  if (options.reserve) {
    // Reserving now turns a later SIGBUS on first touch into an error here.
    int err = posix_fallocate(arena->fd_, 0, static_cast<off_t>(capacity));
    if (err != 0 && err != EOPNOTSUPP) {
      return errno_status(err, absl::StrCat("reserving ", gib(capacity),
                                            " for the host tier (lower the host budget)"));
    }
  }
  void* base = mmap(nullptr, capacity, PROT_READ | PROT_WRITE, MAP_SHARED, arena->fd_, 0);
  if (base == MAP_FAILED) return errno_status(errno, "mapping the host tier");
  arena->base_ = base;
  arena->capacity_ = capacity;
  if (options.huge_pages && arena->huge_page_mode_ == "none" &&
      host.huge_pages.thp_enabled != "never" && madvise(base, capacity, MADV_HUGEPAGE) == 0) {
    arena->huge_page_mode_ = "transparent (madvise)";
  }
  if (options.pin_device != nullptr) {
    STRATA_RETURN_IF_ERROR(options.pin_device->register_host_memory(base, capacity),
                           "pinning the host tier");
    arena->pinned_ = true;
    arena->pin_device_ = options.pin_device;
  }
  arena->ranges_ = RangeAllocator(capacity);
  log->debug("host arena: {} bytes, huge pages: {}, pinned: {}", capacity, arena->huge_page_mode_,
             arena->pinned_);
  return arena;
}

HostArena::~HostArena() {
  if (pinned_) (void)pin_device_->unregister_host_memory(base_);
  if (base_ != nullptr) munmap(base_, capacity_);
  if (fd_ >= 0) close(fd_);
}

absl::StatusOr<HostBlock> HostArena::allocate(uint64_t bytes, uint64_t alignment) {
  if (bytes == 0) return absl::InvalidArgumentError("host arena allocation of 0 bytes");
  STRATA_CHECK(alignment >= kPage && (alignment & (alignment - 1)) == 0);
  const uint64_t size = round_up(bytes, kPage);
  std::lock_guard lock(mu_);
  if (const std::optional<uint64_t> start = ranges_.allocate(size, alignment)) {
    return HostBlock{*start, size, static_cast<char*>(base_) + *start};
  }
  return absl::ResourceExhaustedError(
      absl::StrCat("host tier full: need ", size, " bytes, ", capacity_ - ranges_.used_bytes(),
                   " free, largest free block ", ranges_.largest_free_bytes(),
                   " bytes; raise the host budget or move state to NVMe"));
}

void HostArena::free(const HostBlock& block) {
  std::lock_guard lock(mu_);
  STRATA_CHECK_MSG(ranges_.free(block.offset) == block.bytes,
                   "HostArena::free of a block it did not hand out");
}

HostArenaStats HostArena::stats() const {
  std::lock_guard lock(mu_);
  return HostArenaStats{capacity_, ranges_.used_bytes(), ranges_.peak_bytes(),
                        ranges_.largest_free_bytes(), ranges_.blocks()};
}

}  // namespace strata::offload
