// GradRing: grad_ready(bucket) from a client to stratad without a socket
// round trip. One 4 KiB page at the start of the session arena holds a
// single-producer (the attached client) single-consumer (the daemon's
// connection thread) ring of bucket numbers; the client wakes the daemon
// through the session's eventfd (passed with the arena at attach).
//
// Layout (shared memory, both sides): head (entries pushed, written by the
// client), tail (entries taken, written by the daemon), each on its own
// cache line, then kRingEntries uint32 bucket numbers. Counters wrap
// modulo 2^32. Ordering: the client writes the entry, then head with
// release; the daemon loads head with acquire, reads entries, then stores
// tail with release (the client's acquire load of tail frees the slots).
//
// The daemon trusts nothing in the page: it keeps its own tail, refuses a
// head more than kRingEntries ahead of it and range-checks each bucket
// (ring_take returns InvalidArgument, and the connection is closed).
// Control messages on the socket are only handled after the ring is
// drained, so a grad_ready pushed before finish_step is always seen first.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>

#include "absl/status/status.h"

namespace strata::daemon {

inline constexpr uint32_t kRingEntries = 512;
inline constexpr uint64_t kRingBytes = 4096;

struct GradRingPage {
  alignas(64) uint32_t head;
  alignas(64) uint32_t tail;
  alignas(64) uint32_t entries[kRingEntries];
};
static_assert(sizeof(GradRingPage) <= kRingBytes);

// Client: false when the ring is full (the caller sends grad_ready on the
// socket instead, which the daemon handles after draining the ring).
bool ring_push(GradRingPage* ring, uint32_t bucket);

// Daemon: takes every entry pushed since `*tail`, calling take(bucket) on
// each in order; publishes the new tail. `num_buckets` bounds the values.
absl::Status ring_take(GradRingPage* ring, uint32_t* tail, int num_buckets,
                       const std::function<void(int bucket)>& take);

}  // namespace strata::daemon
