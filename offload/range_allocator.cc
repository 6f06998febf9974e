#include "offload/range_allocator.h"

#include <algorithm>
#include <iterator>

namespace strata::offload {

RangeAllocator::RangeAllocator(uint64_t capacity) : capacity_(capacity) {
  if (capacity > 0) insert_free(0, capacity);
}

std::optional<uint64_t> RangeAllocator::allocate(uint64_t size, uint64_t alignment, bool high_end) {
  // Best fit: the smallest free range that still holds the block once aligned.
  for (auto it = free_by_size_.lower_bound({size, 0}); it != free_by_size_.end(); ++it) {
    const auto [free_bytes, free_offset] = *it;
    const uint64_t end = free_offset + free_bytes;
    uint64_t start = (free_offset + alignment - 1) & ~(alignment - 1);
    if (start + size > end) continue;
    if (high_end) start = (end - size) & ~(alignment - 1);  // >= the aligned low start
    erase_free(free_by_offset_.find(free_offset));
    if (start > free_offset) insert_free(free_offset, start - free_offset);
    if (start + size < free_offset + free_bytes) {
      insert_free(start + size, free_offset + free_bytes - start - size);
    }
    used_.emplace(start, size);
    used_bytes_ += size;
    peak_bytes_ = std::max(peak_bytes_, used_bytes_);
    return start;
  }
  return std::nullopt;
}

uint64_t RangeAllocator::free(uint64_t offset) {
  auto it = used_.find(offset);
  if (it == used_.end()) return 0;
  const uint64_t size = it->second;
  used_.erase(it);
  used_bytes_ -= size;
  insert_free(offset, size);
  return size;
}

void RangeAllocator::insert_free(uint64_t offset, uint64_t bytes) {
  auto next = free_by_offset_.lower_bound(offset);
  if (next != free_by_offset_.end() && offset + bytes == next->first) {
    bytes += next->second;
    auto merged = next++;
    erase_free(merged);
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

void RangeAllocator::erase_free(std::map<uint64_t, uint64_t>::iterator it) {
  free_by_size_.erase({it->second, it->first});
  free_by_offset_.erase(it);
}

}  // namespace strata::offload
