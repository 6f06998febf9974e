#include "offload/device_pool.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace strata::offload {

absl::StatusOr<std::unique_ptr<DevicePool>> DevicePool::create(gpu::Device* device,
                                                               uint64_t bytes) {
  if (device == nullptr) return absl::InvalidArgumentError("a device pool needs a device");
  if (bytes == 0) return absl::InvalidArgumentError("a device pool of 0 bytes");
  const uint64_t capacity = block_bytes(bytes);
  STRATA_ASSIGN_OR_RETURN(void* base, device->allocate(capacity),
                          absl::StrCat("allocating the device pool of ", capacity, " bytes"));
  // Both CUDA and SimDevice hand out 256-byte aligned memory; the blocks'
  // alignment rests on it.
  STRATA_CHECK(reinterpret_cast<uintptr_t>(base) % kAlignment == 0);
  return std::unique_ptr<DevicePool>(new DevicePool(device, base, capacity));
}

DevicePool::DevicePool(gpu::Device* device, void* base, uint64_t capacity)
    : device_(device), base_(base), capacity_(capacity) {
  insert_free_locked(0, capacity);
}

DevicePool::~DevicePool() { device_->free(base_); }

void DevicePool::insert_free_locked(uint64_t offset, uint64_t bytes) {
  auto next = free_by_offset_.lower_bound(offset);
  if (next != free_by_offset_.end() && offset + bytes == next->first) {
    bytes += next->second;
    auto merged = next++;
    erase_free_locked(merged);
  }
  if (next != free_by_offset_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == offset) {
      offset = prev->first;
      bytes += prev->second;
      erase_free_locked(prev);
    }
  }
  free_by_offset_.emplace(offset, bytes);
  free_by_size_.emplace(bytes, offset);
}

void DevicePool::erase_free_locked(std::map<uint64_t, uint64_t>::iterator it) {
  free_by_size_.erase({it->second, it->first});
  free_by_offset_.erase(it);
}

absl::StatusOr<void*> DevicePool::allocate(uint64_t bytes) {
  if (bytes == 0) return absl::InvalidArgumentError("device pool allocation of 0 bytes");
  const uint64_t size = block_bytes(bytes);
  std::lock_guard lock(mu_);
  // Every range starts and ends on kAlignment, so the smallest range of at
  // least `size` bytes fits the block at its start.
  auto it = free_by_size_.lower_bound({size, 0});
  if (it == free_by_size_.end()) {
    ++failed_;
    const uint64_t largest = free_by_size_.empty() ? 0 : free_by_size_.rbegin()->first;
    return absl::ResourceExhaustedError(
        absl::StrCat("device pool full: need ", size, " bytes, ", capacity_ - used_bytes_,
                     " free, largest free range ", largest, " bytes of ", capacity_));
  }
  const auto [free_bytes, offset] = *it;
  erase_free_locked(free_by_offset_.find(offset));
  if (free_bytes > size) insert_free_locked(offset + size, free_bytes - size);
  used_.emplace(offset, size);
  used_bytes_ += size;
  peak_bytes_ = std::max(peak_bytes_, used_bytes_);
  return static_cast<char*>(base_) + offset;
}

void DevicePool::free(void* ptr) {
  const auto p = reinterpret_cast<uintptr_t>(ptr);
  const auto base = reinterpret_cast<uintptr_t>(base_);
  STRATA_CHECK_MSG(p >= base && p < base + capacity_,
                   "DevicePool::free of a pointer outside the pool");
  std::lock_guard lock(mu_);
  auto it = used_.find(p - base);
  STRATA_CHECK_MSG(it != used_.end(), "DevicePool::free of a block it did not hand out");
  const auto [offset, size] = *it;
  used_.erase(it);
  used_bytes_ -= size;
  insert_free_locked(offset, size);
}

DevicePoolStats DevicePool::stats() const {
  std::lock_guard lock(mu_);
  return DevicePoolStats{
      .capacity_bytes = capacity_,
      .used_bytes = used_bytes_,
      .peak_bytes = peak_bytes_,
      .largest_free_bytes = free_by_size_.empty() ? 0 : free_by_size_.rbegin()->first,
      .blocks = used_.size(),
      .free_ranges = free_by_offset_.size(),
      .failed_allocations = failed_,
  };
}

}  // namespace strata::offload
