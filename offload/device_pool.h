// DevicePool: device memory taken from the device once and handed out in
// blocks, so a running schedule never calls Device::allocate / free.
//
// On CUDA, cudaMalloc and cudaFree synchronise the whole device and cost tens
// of microseconds to milliseconds each; the tiered store evicts and loads
// device copies all through a step, so it takes its device tier from one pool
// allocated at finalize() instead.
//
// Blocks are multiples of kAlignment (256 bytes, what cudaMalloc guarantees)
// and start at multiples of it. Allocation is best fit (the smallest free
// range that holds the block, lowest address among equals); free coalesces
// with both neighbours, so a free pool is always one range again. A request
// that finds no range large enough fails with ResourceExhausted and changes
// nothing: the caller evicts and retries, as it would over a budget.
//
// Large blocks (at least 1/kLargeShare of the pool) go at the high end of
// their range, the others at its low end: large blocks stack down from the
// top of the pool and small ones up from the bottom. Why: a caller may pin
// blocks that together fit, yet one of them left in mid-pool (its
// neighbours evicted since) splits the free space so no range holds the
// next large request, and eviction cannot move a pinned block. Kept apart,
// a pinned small block never cuts the span large ones use, and a large one
// sits against the top or the hole of another large one.
//
// Threading: allocate(), free() and stats() are thread-safe (one internal
// mutex, a leaf: it calls nothing while held). Ownership: the pool owns its
// region and frees it (one Device::free) when destroyed; blocks still handed
// out then become invalid. The device must outlive the pool.
//
//   STRATA_ASSIGN_OR_RETURN(auto pool, DevicePool::create(device, 512 << 20));
//   STRATA_ASSIGN_OR_RETURN(void* p, pool->allocate(n * 2));  // no device call
//   ...
//   pool->free(p);
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>

#include "absl/status/statusor.h"
#include "gpu/device.h"
#include "offload/range_allocator.h"

namespace strata::offload {

struct DevicePoolStats {
  uint64_t capacity_bytes = 0;
  uint64_t used_bytes = 0;  // in blocks, each rounded up to kAlignment
  uint64_t peak_bytes = 0;
  uint64_t largest_free_bytes = 0;
  uint64_t blocks = 0;       // handed out now
  uint64_t free_ranges = 0;  // 1 when nothing is fragmented; 0 when full
  uint64_t failed_allocations = 0;
};

class DevicePool {
 public:
  static constexpr uint64_t kAlignment = 256;
  // Blocks of at least capacity / kLargeShare are placed from the top.
  static constexpr uint64_t kLargeShare = 8;
  // The size a request of `bytes` occupies in the pool.
  static uint64_t block_bytes(uint64_t bytes) {
    return (bytes + kAlignment - 1) / kAlignment * kAlignment;
  }

  // Takes `bytes` (rounded up to kAlignment) from `device` in one allocate().
  // InvalidArgument: no device or 0 bytes. The device's ResourceExhausted,
  // annotated with the pool's size, when it cannot hold the pool.
  static absl::StatusOr<std::unique_ptr<DevicePool>> create(gpu::Device* device, uint64_t bytes);
  ~DevicePool();
  DevicePool(const DevicePool&) = delete;
  DevicePool& operator=(const DevicePool&) = delete;

  // A block of at least `bytes`, 256-byte aligned, from the pool; never calls
  // the device. InvalidArgument: 0 bytes. ResourceExhausted (naming the
  // request, the free total and the largest free range): no free range holds
  // it; nothing changes.
  absl::StatusOr<void*> allocate(uint64_t bytes);
  // Returns a block from allocate(); `ptr` must be one (checked: a pointer
  // the pool did not hand out, or one freed twice, stops the process).
  void free(void* ptr);

  DevicePoolStats stats() const;
  void* base() const { return base_; }
  uint64_t capacity() const { return capacity_; }

 private:
  DevicePool(gpu::Device* device, void* base, uint64_t capacity);

  gpu::Device* const device_;
  void* const base_;
  const uint64_t capacity_;

  mutable std::mutex mu_;
  RangeAllocator ranges_;  // guarded by mu_
  uint64_t failed_ = 0;    // guarded by mu_
};

}  // namespace strata::offload
