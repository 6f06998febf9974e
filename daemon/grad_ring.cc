#include "daemon/grad_ring.h"

#include "absl/strings/str_cat.h"

namespace strata::daemon {

bool ring_push(GradRingPage* ring, uint32_t bucket) {
  std::atomic_ref<uint32_t> head(ring->head), tail(ring->tail);
  const uint32_t h = head.load(std::memory_order_relaxed);
  if (h - tail.load(std::memory_order_acquire) >= kRingEntries) return false;
  ring->entries[h % kRingEntries] = bucket;
  head.store(h + 1, std::memory_order_release);
  return true;
}

absl::Status ring_take(GradRingPage* ring, uint32_t* tail, int num_buckets,
                       const std::function<void(int bucket)>& take) {
  std::atomic_ref<uint32_t> head_ref(ring->head), tail_ref(ring->tail);
  const uint32_t head = head_ref.load(std::memory_order_acquire);
  if (head - *tail > kRingEntries) {
    return absl::InvalidArgumentError(absl::StrCat("grad ring head ", head, " is ", head - *tail,
                                                   " entries past its tail (at most ", kRingEntries,
                                                   "): the ring page was overwritten"));
  }
  for (; *tail != head; ++*tail) {
    const uint32_t bucket = std::atomic_ref<uint32_t>(ring->entries[*tail % kRingEntries])
                                .load(std::memory_order_relaxed);
    if (bucket >= static_cast<uint32_t>(num_buckets)) {
      tail_ref.store(*tail, std::memory_order_release);
      return absl::InvalidArgumentError(
          absl::StrCat("grad ring entry names bucket ", bucket, " of ", num_buckets));
    }
    take(static_cast<int>(bucket));
  }
  tail_ref.store(*tail, std::memory_order_release);
  return absl::OkStatus();
}

}  // namespace strata::daemon
