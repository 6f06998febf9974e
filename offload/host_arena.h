// HostArena: the host tier's memory, one memfd-backed region carved into
// blocks.
//
// One region, not many mallocs, because (1) a memfd can be mapped by another
// process, so stratad and its clients can share the same pages later, (2) it
// is pinned once for DMA (Device::register_host_memory -> cudaHostRegister)
// instead of per buffer, and (3) its size is checked against MemAvailable
// and the cgroup limit before training starts, with an error that says which
// limit to raise. (The CUDA driver's pinning is not charged to
// RLIMIT_MEMLOCK; a failed cudaHostRegister is reported with its reason.)
//
// Huge pages: hugetlbfs pages when enough are reserved (MFD_HUGETLB), else
// transparent huge pages are requested with madvise. Blocks are 4 KiB
// aligned (O_DIRECT-ready) or more when asked; allocation is best fit with
// coalescing on free, so long runs of alloc/free do not fragment the arena.
//
// Blocks are named by their offset in the region, which stays valid across
// processes that map the same memfd. Thread-safe; the arena must outlive its
// blocks' users. Destruction unpins and unmaps.
//
//   auto arena = HostArena::create({.capacity_bytes = 8 << 30, .pin_device = dev});
//   STRATA_ASSIGN_OR_RETURN(HostBlock b, (*arena)->allocate(64 << 20));
//   float* p = static_cast<float*>(b.data);
//   ...
//   (*arena)->free(b);
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/statusor.h"
#include "gpu/device.h"
#include "offload/range_allocator.h"

namespace strata::offload {

struct HostArenaOptions {
  uint64_t capacity_bytes = 0;
  gpu::Device* pin_device = nullptr;  // pin for DMA with this device; null: not pinned
  bool huge_pages = true;             // use them when the system offers them
  bool reserve = true;  // fallocate the region now, so a shortage fails here, not mid-run
  std::string name = "strata-host-tier";  // memfd name, visible in /proc/PID/fd
};

struct HostBlock {
  uint64_t offset = 0;  // in the region; the same in every process mapping it
  uint64_t bytes = 0;
  void* data = nullptr;
};

struct HostArenaStats {
  uint64_t capacity_bytes = 0;
  uint64_t used_bytes = 0;
  uint64_t peak_bytes = 0;
  uint64_t largest_free_bytes = 0;
  size_t blocks = 0;
};

class HostArena {
 public:
  // Fails (ResourceExhausted / FailedPrecondition) when the region cannot be
  // had: more than MemAvailable or the cgroup limit, pinning refused, memfd
  // or mmap refused.
  static absl::StatusOr<std::unique_ptr<HostArena>> create(const HostArenaOptions& options);
  ~HostArena();
  HostArena(const HostArena&) = delete;
  HostArena& operator=(const HostArena&) = delete;

  // `alignment` is a power of two >= 4096. ResourceExhausted names the
  // request, the free total and the largest free block.
  absl::StatusOr<HostBlock> allocate(uint64_t bytes, uint64_t alignment = 4096);
  void free(const HostBlock& block);

  HostArenaStats stats() const;
  int fd() const { return fd_; }
  void* base() const { return base_; }
  uint64_t capacity() const { return capacity_; }
  bool pinned() const { return pinned_; }
  // "hugetlb", "transparent (madvise)" or "none".
  const std::string& huge_page_mode() const { return huge_page_mode_; }

 private:
  HostArena() = default;

  int fd_ = -1;
  void* base_ = nullptr;
  uint64_t capacity_ = 0;
  bool pinned_ = false;
  gpu::Device* pin_device_ = nullptr;
  std::string huge_page_mode_ = "none";

  mutable std::mutex mu_;
  RangeAllocator ranges_{0};  // guarded by mu_; sized once the region is mapped
};

}  // namespace strata::offload
