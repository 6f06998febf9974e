#include "offload/device_pool.h"

#include <optional>

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
    : device_(device), base_(base), capacity_(capacity), ranges_(capacity) {}

DevicePool::~DevicePool() { device_->free(base_); }

absl::StatusOr<void*> DevicePool::allocate(uint64_t bytes) {
  if (bytes == 0) return absl::InvalidArgumentError("device pool allocation of 0 bytes");
  const uint64_t size = block_bytes(bytes);
  std::lock_guard lock(mu_);
  // Every range starts and ends on kAlignment, so the smallest range of at
  // least `size` bytes fits the block at its start or its end (large ones:
  // see the header).
  const std::optional<uint64_t> offset =
      ranges_.allocate(size, kAlignment, /*high_end=*/size >= capacity_ / kLargeShare);
  if (!offset) {
    ++failed_;
    return absl::ResourceExhaustedError(absl::StrCat(
        "device pool full: need ", size, " bytes, ", capacity_ - ranges_.used_bytes(),
        " free, largest free range ", ranges_.largest_free_bytes(), " bytes of ", capacity_));
  }
  return static_cast<char*>(base_) + *offset;
}

void DevicePool::free(void* ptr) {
  const auto p = reinterpret_cast<uintptr_t>(ptr);
  const auto base = reinterpret_cast<uintptr_t>(base_);
  STRATA_CHECK_MSG(p >= base && p < base + capacity_,
                   "DevicePool::free of a pointer outside the pool");
  std::lock_guard lock(mu_);
  STRATA_CHECK_MSG(ranges_.free(p - base) != 0, "DevicePool::free of a block it did not hand out");
}

DevicePoolStats DevicePool::stats() const {
  std::lock_guard lock(mu_);
  return DevicePoolStats{
      .capacity_bytes = capacity_,
      .used_bytes = ranges_.used_bytes(),
      .peak_bytes = ranges_.peak_bytes(),
      .largest_free_bytes = ranges_.largest_free_bytes(),
      .blocks = ranges_.blocks(),
      .free_ranges = ranges_.free_ranges(),
      .failed_allocations = failed_,
  };
}

}  // namespace strata::offload
