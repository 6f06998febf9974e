#include "offload/host_arena.h"

#include <fcntl.h>
#include <linux/memfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>

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
  arena->insert_free(0, capacity);
  log->debug("host arena: {} bytes, huge pages: {}, pinned: {}", capacity, arena->huge_page_mode_,
             arena->pinned_);
  return arena;
}

HostArena::~HostArena() {
  if (pinned_) (void)pin_device_->unregister_host_memory(base_);
  if (base_ != nullptr) munmap(base_, capacity_);
  if (fd_ >= 0) close(fd_);
}

void HostArena::insert_free(uint64_t offset, uint64_t bytes) {
  // Coalesce with the free neighbours on either side.
  auto next = free_by_offset_.lower_bound(offset);
  if (next != free_by_offset_.end() && offset + bytes == next->first) {
    bytes += next->second;
    next = std::next(next);
    erase_free(std::prev(next));
  }
  if (next != free_by_offset_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == offset) {
      offset = prev->first;
      bytes += prev->second;
      erase_free(prev);
    }
  }
  free_by_offset_.emplace(offset, bytes);
  free_by_size_.emplace(bytes, offset);
}

void HostArena::erase_free(std::map<uint64_t, uint64_t>::iterator it) {
  free_by_size_.erase({it->second, it->first});
  free_by_offset_.erase(it);
}

absl::StatusOr<HostBlock> HostArena::allocate(uint64_t bytes, uint64_t alignment) {
  if (bytes == 0) return absl::InvalidArgumentError("host arena allocation of 0 bytes");
  STRATA_CHECK(alignment >= kPage && (alignment & (alignment - 1)) == 0);
  const uint64_t size = round_up(bytes, kPage);
  std::lock_guard lock(mu_);
  // Best fit: the smallest free block that still fits once aligned.
  for (auto it = free_by_size_.lower_bound({size, 0}); it != free_by_size_.end(); ++it) {
    const auto [free_bytes, free_offset] = *it;
    const uint64_t start = round_up(free_offset, alignment);
    if (start + size > free_offset + free_bytes) continue;
    erase_free(free_by_offset_.find(free_offset));
    if (start > free_offset) insert_free(free_offset, start - free_offset);
    if (start + size < free_offset + free_bytes) {
      insert_free(start + size, free_offset + free_bytes - start - size);
    }
    used_.emplace(start, size);
    used_bytes_ += size;
    peak_bytes_ = std::max(peak_bytes_, used_bytes_);
    return HostBlock{start, size, static_cast<char*>(base_) + start};
  }
  const uint64_t largest = free_by_size_.empty() ? 0 : free_by_size_.rbegin()->first;
  return absl::ResourceExhaustedError(
      absl::StrCat("host tier full: need ", size, " bytes, ", capacity_ - used_bytes_,
                   " free, largest free block ", largest,
                   " bytes; raise the host budget or move state to NVMe"));
}

void HostArena::free(const HostBlock& block) {
  std::lock_guard lock(mu_);
  auto it = used_.find(block.offset);
  STRATA_CHECK_MSG(it != used_.end() && it->second == block.bytes,
                   "HostArena::free of a block it did not hand out");
  used_bytes_ -= it->second;
  used_.erase(it);
  insert_free(block.offset, block.bytes);
}

HostArenaStats HostArena::stats() const {
  std::lock_guard lock(mu_);
  return HostArenaStats{capacity_, used_bytes_, peak_bytes_,
                        free_by_size_.empty() ? 0 : free_by_size_.rbegin()->first, used_.size()};
}

}  // namespace strata::offload
