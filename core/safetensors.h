// The safetensors file format (Hugging Face): a streaming writer and a
// validating, memory-mapped reader.
//
// Layout: 8 bytes, the header length N as a little-endian uint64; N bytes of
// UTF-8 JSON, padded with spaces so that 8 + N is a multiple of 8; then the
// data section. The header maps each tensor name to {"dtype": "F32",
// "shape": [d0, d1, ...], "data_offsets": [begin, end]} (byte offsets into the
// data section, row-major little-endian elements) and may hold
// "__metadata__", a string -> string map. Tensors tile the data section
// exactly: no gaps, no overlaps, nothing after the last one.
//
// Writer: the tensors (name, dtype, shape) are declared up front, because the
// header precedes the data; their bytes are then written one tensor at a
// time, in declaration order, so a caller never holds more than one tensor.
// The file is written as PATH.tmp-<pid>, fsynced and renamed over PATH by
// finish() (then the directory is fsynced): a crash leaves the old PATH or the
// new one, never a torn one. A writer dropped before finish() removes its
// temporary file. Data is laid out in declaration order without padding, so
// with mixed dtypes an element may sit at an offset that is not a multiple of
// its size (readers here copy, they never reinterpret in place).
//
// Reader: maps the file read-only and validates it completely in open():
// header length within the file (and at most 100 MiB), JSON syntax (the
// strict reader of core/config/json_reader.h: a repeated tensor name or
// deep nesting is refused), every entry's dtype (the standard safetensors names), shape
// (non-negative), data_offsets (begin <= end, inside the data section), end - begin equal to the
// shape's element count times the dtype's size, and the tiling above. Every error is a DataLoss (or
// the errno status for I/O) whose message names the file and, where it concerns one, the tensor.
// Once open() succeeds the accessors cannot fail (to_fp32 only rejects dtypes it does not convert).
//
// Threads: a Writer is used from one thread. A Reader is immutable after
// open() and may be read from any number of threads.
//
//   STRATA_ASSIGN_OR_RETURN(auto w, safetensors::Writer::create(
//       "m.safetensors", {{"w", Dtype::kF32, {2, 3}}}, {{"format", "pt"}}));
//   STRATA_RETURN_IF_ERROR(w->write_tensor("w", floats, 24));
//   STRATA_RETURN_IF_ERROR(w->finish());
//   STRATA_ASSIGN_OR_RETURN(auto r, safetensors::Reader::open("m.safetensors"));
//   const safetensors::TensorInfo* t = r->find("w");
//   std::vector<float> v(t->numel());
//   STRATA_RETURN_IF_ERROR(r->to_fp32(*t, v.data()));
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace strata::safetensors {

enum class Dtype : uint8_t {
  kBool,
  kU8,
  kI8,
  kF8E4M3,
  kF8E5M2,
  kI16,
  kU16,
  kF16,
  kBF16,
  kI32,
  kU32,
  kF32,
  kF64,
  kI64,
  kU64,
};

std::string_view dtype_name(Dtype d);  // "F32", "BF16", "F8_E4M3", ...
size_t dtype_size(Dtype d);            // bytes per element
std::optional<Dtype> parse_dtype(std::string_view name);

struct TensorInfo {
  std::string name;
  Dtype dtype = Dtype::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets into the data section
  uint64_t end = 0;

  uint64_t numel() const;  // product of shape (1 for a scalar, shape [])
  uint64_t bytes() const { return end - begin; }
};

// "[768, 2304]": how errors print a shape.
std::string shape_string(const std::vector<int64_t>& shape);

struct TensorDecl {
  std::string name;
  Dtype dtype = Dtype::kF32;
  std::vector<int64_t> shape;
};

class Writer {
 public:
  // Creates PATH.tmp-<pid> and writes the header. InvalidArgument for an
  // empty or duplicate name, the reserved name "__metadata__", or a negative
  // dimension; the errno status when the file cannot be created.
  static absl::StatusOr<std::unique_ptr<Writer>> create(
      const std::string& path, std::vector<TensorDecl> tensors,
      const std::map<std::string, std::string>& metadata = {});
  ~Writer();
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;

  // The next declared tensor's bytes: FailedPrecondition when `name` is not
  // the next one in declaration order or `bytes` is not its size.
  absl::Status write_tensor(std::string_view name, const void* data, uint64_t bytes);
  // After every tensor was written: fsync, rename over the final path, fsync
  // the directory. FailedPrecondition naming the first unwritten tensor.
  absl::Status finish();

  const std::string& path() const { return path_; }

 private:
  Writer(std::string path, std::string tmp_path, int fd, std::vector<TensorDecl> tensors,
         uint64_t data_start);

  std::string path_, tmp_path_;
  int fd_ = -1;
  std::vector<TensorDecl> tensors_;
  size_t next_ = 0;
  uint64_t offset_ = 0;  // file offset of the next tensor's bytes
  bool finished_ = false;
};

class Reader {
 public:
  static absl::StatusOr<std::unique_ptr<Reader>> open(const std::string& path);
  ~Reader();
  Reader(const Reader&) = delete;
  Reader& operator=(const Reader&) = delete;

  const std::string& path() const { return path_; }
  // Every tensor, in data order (ascending data_offsets).
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  // Null when the file has no tensor of that name.
  const TensorInfo* find(std::string_view name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // The tensor's raw little-endian bytes, valid while the Reader lives.
  std::span<const std::byte> data(const TensorInfo& t) const;
  // The tensor as fp32 (numel() floats into out): F32 copied, F16 / BF16
  // widened exactly. InvalidArgument naming the file and tensor for any
  // other dtype.
  absl::Status to_fp32(const TensorInfo& t, float* out) const;

 private:
  Reader() = default;

  std::string path_;
  const std::byte* map_ = nullptr;
  size_t map_size_ = 0;
  uint64_t data_start_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> index_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace strata::safetensors
