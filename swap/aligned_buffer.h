// AlignedBuffer: heap memory aligned for O_DIRECT (4 KiB), sized up to a
// multiple of the alignment. Move-only; frees on destruction. Until the host
// arena (offload/) exists, tests, benchmarks and the swap file use this.
//
//   AlignedBuffer buf(5000);          // 8192 bytes usable, 4 KiB aligned
//   engine.read(file, 0, buf.data(), buf.size());
#pragma once

#include <cstddef>

namespace strata::swap {

class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  // Zero-filled. Aborts (STRATA_CHECK) when memory is exhausted.
  explicit AlignedBuffer(size_t bytes, size_t alignment = 4096);
  ~AlignedBuffer();
  AlignedBuffer(AlignedBuffer&& other) noexcept;
  AlignedBuffer& operator=(AlignedBuffer&& other) noexcept;
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;

  char* data() { return data_; }
  const char* data() const { return data_; }
  size_t size() const { return size_; }  // rounded up to the alignment

 private:
  char* data_ = nullptr;
  size_t size_ = 0;
};

constexpr size_t align_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

}  // namespace strata::swap
