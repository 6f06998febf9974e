// SwapFile: the on-disk format of the swap tier — a header with a tensor
// table, then one extent per tensor, each 4 KiB aligned, each with an xxh3
// checksum verified on read. ../shared/DESIGN.md "Swap file".
//
// Layout (little-endian; the file may be striped over several paths by the
// IoEngine, offsets below are logical):
//   0   magic "STRATASW" | u32 version | u32 state (1 clean, 2 dirty)
//   16  u64 header_bytes | u64 data_bytes (logical file size)
//   32  u32 tensor_count | u32 table_bytes | u64 table xxh3 | u64 header xxh3
//   56  table: per tensor u16 name_len, name, u8 dtype, u8 flags (1 written,
//       2 checksummed), u64 numel, u64 offset, u64 length, u64 xxh3
//   header_bytes (4 KiB multiple): extents, each 4 KiB aligned and padded.
//
// Crash safety: create() lays the file out and preallocates it (ENOSPC is
// reported then, naming the path and the bytes needed) but writes the header
// only in commit(), after the extents, followed by fsync. The first
// write_tensor() after a commit marks the header dirty (fsync'd) before
// touching any extent. So a crash leaves either no header (creation never
// committed), a dirty header (update interrupted) or a consistent file, and
// open() says which. A foreign, torn or truncated file, or an extent whose
// checksum does not match, is an error naming the file and the offset.
//
// Buffers passed to write_tensor / read_tensor must be 4 KiB aligned and at
// least the tensor's capacity (its length rounded up to 4 KiB) — the padding
// is transferred too. Threading: write_tensor / read_tensor may run
// concurrently from several threads (different tensors for writes); commit()
// must not race with writes. The IoEngine must outlive the SwapFile.
//
//   auto f = SwapFile::create(engine, {"/nvme/opt.swp"}, {{"w", DType::kFloat32, n}});
//   STRATA_RETURN_IF_ERROR((*f)->write_tensor("w", buf.data(), buf.size()));
//   STRATA_RETURN_IF_ERROR((*f)->commit());
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/dtype.h"
#include "swap/io_engine.h"

namespace strata::swap {

inline constexpr char kSwapMagic[8] = {'S', 'T', 'R', 'A', 'T', 'A', 'S', 'W'};
inline constexpr uint32_t kSwapVersion = 1;

struct TensorSpec {
  std::string name;
  DType dtype = DType::kFloat32;
  uint64_t numel = 0;
};

struct TensorExtent {
  std::string name;
  DType dtype = DType::kFloat32;
  uint64_t numel = 0;
  uint64_t offset = 0;    // logical, 4 KiB aligned
  uint64_t length = 0;    // numel * dtype size
  uint64_t capacity = 0;  // length rounded up to 4 KiB
  uint64_t checksum = 0;  // xxh3 of the first `length` bytes
  bool written = false;
  bool checksummed = false;
};

struct SwapFileOptions {
  // Compute checksums on write and verify them on read. Off: faster, and
  // extents written that way are never verified.
  bool checksums = true;
};

class SwapFile {
 public:
  // Creates (truncating) the file(s), lays out the extents and preallocates.
  static absl::StatusOr<std::unique_ptr<SwapFile>> create(IoEngine& engine,
                                                          const std::vector<std::string>& paths,
                                                          const std::vector<TensorSpec>& tensors,
                                                          SwapFileOptions options = {});
  // Opens a committed file and validates its header and size.
  static absl::StatusOr<std::unique_ptr<SwapFile>> open(IoEngine& engine,
                                                        const std::vector<std::string>& paths,
                                                        SwapFileOptions options = {});
  ~SwapFile();  // closes the file; does not commit
  SwapFile(const SwapFile&) = delete;
  SwapFile& operator=(const SwapFile&) = delete;

  const std::vector<TensorExtent>& tensors() const { return tensors_; }
  absl::StatusOr<TensorExtent> find(const std::string& name) const;
  std::string path() const { return path_; }
  uint64_t data_bytes() const { return data_bytes_; }

  absl::Status write_tensor(const std::string& name, const void* buffer, size_t buffer_bytes);
  absl::Status read_tensor(const std::string& name, void* buffer, size_t buffer_bytes);

  // Asynchronous forms (the overlap of NVMe reads with the optimizer): they
  // return once the I/O is submitted and `done` runs exactly once, on an
  // engine thread, with the final status (the checksum already verified for
  // reads). An error returned here means `done` will not run. The buffer and
  // this SwapFile must stay alive until `done` has run.
  using Done = std::function<void(const absl::Status&)>;
  absl::Status write_tensor_async(const std::string& name, const void* buffer, size_t buffer_bytes,
                                  Done done);
  absl::Status read_tensor_async(const std::string& name, void* buffer, size_t buffer_bytes,
                                 Done done);
  // Writes the header (clean) and fsyncs.
  absl::Status commit();

 private:
  SwapFile(IoEngine& engine, FileId file, std::string path, SwapFileOptions options);
  absl::StatusOr<size_t> index_of(const std::string& name, const void* buffer,
                                  size_t buffer_bytes) const;
  absl::Status write_header(uint32_t state);
  std::string encode_header(uint32_t state) const;
  absl::Status parse_header();

  IoEngine& engine_;
  FileId file_;
  std::string path_;
  SwapFileOptions options_;
  uint64_t header_bytes_ = 0;
  uint64_t data_bytes_ = 0;
  std::mutex mu_;  // guards tensors_' checksums / flags and dirty_on_disk_
  std::vector<TensorExtent> tensors_;
  bool dirty_on_disk_ = false;  // a dirty header is on disk
  bool clean_on_disk_ = false;  // a committed header is on disk
};

}  // namespace strata::swap
