// RangeAllocator: best-fit placement of blocks in [0, capacity), the free
// ranges coalesced on free. The bookkeeping behind HostArena and
// DevicePool, which own the memory and the lock; it only hands out offsets.
//
// allocate(size, alignment, high_end) takes the smallest free range that
// holds `size` bytes starting at a multiple of `alignment` (a power of two),
// the block at the range's lowest such offset (high_end: its highest),
// splitting off what is left on either side; nullopt when none does. free(offset)
// returns the block's size (0: no block starts there) and merges its range
// with free neighbours.
// Threading: none; the owner serialises calls.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <utility>

namespace strata::offload {

class RangeAllocator {
 public:
  explicit RangeAllocator(uint64_t capacity);

  std::optional<uint64_t> allocate(uint64_t size, uint64_t alignment, bool high_end = false);
  uint64_t free(uint64_t offset);

  uint64_t capacity() const { return capacity_; }
  uint64_t used_bytes() const { return used_bytes_; }
  uint64_t peak_bytes() const { return peak_bytes_; }
  uint64_t largest_free_bytes() const {
    return free_by_size_.empty() ? 0 : free_by_size_.rbegin()->first;
  }
  uint64_t blocks() const { return used_.size(); }
  uint64_t free_ranges() const { return free_by_offset_.size(); }

 private:
  void insert_free(uint64_t offset, uint64_t bytes);  // coalesces
  void erase_free(std::map<uint64_t, uint64_t>::iterator it);

  uint64_t capacity_;
  std::map<uint64_t, uint64_t> free_by_offset_;           // offset -> bytes
  std::set<std::pair<uint64_t, uint64_t>> free_by_size_;  // (bytes, offset): best fit
  std::map<uint64_t, uint64_t> used_;                     // offset -> bytes
  uint64_t used_bytes_ = 0;
  uint64_t peak_bytes_ = 0;
};

}  // namespace strata::offload
