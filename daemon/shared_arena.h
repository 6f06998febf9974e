// SharedArena: one session's host tier, a sealed memfd that stratad creates
// and maps and hands to the client (SCM_RIGHTS), which maps it too.
//
// Why not offload::HostArena: the daemon maps memory a client also holds,
// so the memfd is sealed (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) right
// after it is sized: a hostile or buggy client cannot truncate it under the
// daemon (a truncated mapping would SIGBUS the daemon). The layout is fixed
// at creation (one slot per param value and one per gradient, each 4 KiB
// aligned), so no allocator is needed.
//
// create() reserves the pages (fallocate) so a shortage fails at attach,
// not mid-step. map_client() maps a received descriptor after checking its
// size and seals. Both unmap and close on destruction. Not thread-safe to
// create/destroy; the memory itself is shared by design.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace strata::daemon {

class SharedArena {
 public:
  static absl::StatusOr<std::unique_ptr<SharedArena>> create(const std::string& name,
                                                             uint64_t bytes);
  // Takes ownership of `fd` (closed on failure too); `bytes` is what the
  // daemon said the arena holds.
  static absl::StatusOr<std::unique_ptr<SharedArena>> map_client(int fd, uint64_t bytes);
  ~SharedArena();
  SharedArena(const SharedArena&) = delete;
  SharedArena& operator=(const SharedArena&) = delete;

  int fd() const { return fd_; }
  char* base() const { return static_cast<char*>(base_); }
  uint64_t bytes() const { return bytes_; }

 private:
  SharedArena() = default;
  int fd_ = -1;
  void* base_ = nullptr;
  uint64_t bytes_ = 0;
};

// Rounds up to the arena's slot alignment (4 KiB).
constexpr uint64_t arena_align(uint64_t bytes) { return (bytes + 4095) & ~uint64_t{4095}; }

}  // namespace strata::daemon
