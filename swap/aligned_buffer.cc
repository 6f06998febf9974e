#include "swap/aligned_buffer.h"

#include <cstdlib>
#include <cstring>
#include <utility>

#include "core/status.h"

namespace strata::swap {

AlignedBuffer::AlignedBuffer(size_t bytes, size_t alignment) : size_(align_up(bytes, alignment)) {
  if (size_ == 0) return;
  data_ = static_cast<char*>(std::aligned_alloc(alignment, size_));
  STRATA_CHECK_MSG(data_ != nullptr, "out of memory allocating an aligned I/O buffer");
  std::memset(data_, 0, size_);
}

AlignedBuffer::~AlignedBuffer() { std::free(data_); }

AlignedBuffer::AlignedBuffer(AlignedBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}

AlignedBuffer& AlignedBuffer::operator=(AlignedBuffer&& other) noexcept {
  if (this != &other) {
    std::free(data_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

}  // namespace strata::swap
