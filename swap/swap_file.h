// SwapFile: the on-disk format of the swap tier — a header with a tensor
// table, then one extent per tensor, each 4 KiB aligned, each with an xxh3
// checksum verified on read.
//
// Layout (little-endian; offsets are logical: the IoEngine stripes the file
// over n paths in block_size units). Every member file starts with a 4 KiB
// label, so label i sits at logical offset i * S, S = 4096 for one path and
// the engine's block_size for several (that is member i's offset 0):
//   0   magic "STRATASW" | u64 xxh3 of label bytes [16, 4096)
//   16  u32 version | u32 state (1 clean, 2 dirty)
//   24  u64 run id (random per create(), the same in every member)
//   32  u32 stripe index (this member) | u32 stripe count (paths)
//   40  u64 block_size (the stripe unit) | u64 header_bytes | u64 data_bytes
//   64  u32 tensor_count | u32 table_bytes | u64 table xxh3
//   80  u16 path_len, the member's path as given to create() (for messages)
// The tensor table starts at logical n * S: per tensor u16 name_len, name,
// u8 dtype, u8 flags (1 written, 2 checksummed), u64 numel, u64 offset,
// u64 length, u64 xxh3. Extents follow at header_bytes (a 4 KiB multiple).
//
// open() verifies the label checksum before it reads any field (a torn label
// is DataLoss "checksum mismatch", never "unsupported version"), then the
// layout: the paths must be the ones the file was created over, as many and
// in the same order (each member's label names its stripe index and the run
// id), and with several paths the engine's block_size must be the one it was
// created with. Anything else is FailedPrecondition naming what differs,
// never a misread.
//
// Crash safety: create() lays the file out and preallocates it (ENOSPC is
// reported then, naming the path and the bytes needed) but writes the header
// only in commit(), after the extents. The first write_tensor() after a
// commit marks label 0 dirty (fsync'd) before touching any extent. So a
// crash leaves either no header (creation never committed), a dirty header
// (update interrupted) or a consistent file, and open() says which. A
// foreign, torn or truncated file, or an extent whose checksum does not
// match, is an error naming the file and the offset.
//
// Durability: a write completes when the kernel holds the data (O_DIRECT:
// the device accepted it; buffered: the page cache). From then on it
// survives this process (a crash, a kill, a later error), not a power loss
// or a kernel crash. commit() is the power-loss boundary: it fsyncs the
// extents, then the header that vouches for them. Swap files are scratch
// (the TieredStore recreates its file each run), so only data that backs
// something meant to outlive the machine needs commit(); per-write fsync
// would cost NVMe throughput for nothing.
//
// Buffers passed to write_tensor / read_tensor must be 4 KiB aligned and at
// least the tensor's capacity (its length rounded up to 4 KiB) — the padding
// is transferred too. Threading: every method is thread-safe. Writes of
// different tensors and reads may run concurrently; two writes of one tensor
// at once are undefined. commit() waits for the writes already submitted,
// holds new ones back until the header is written, and never holds a lock
// across I/O, so completion callbacks never wait on a commit. The IoEngine
// must outlive the SwapFile.
//
//   auto f = SwapFile::create(engine, {"/nvme/opt.swp"}, {{"w", DType::kFloat32, n}});
//   STRATA_RETURN_IF_ERROR((*f)->write_tensor("w", buf.data(), buf.size()));
//   STRATA_RETURN_IF_ERROR((*f)->commit());
#pragma once

#include <condition_variable>
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
inline constexpr uint32_t kSwapVersion = 2;
inline constexpr size_t kSwapLabelBytes = 4096;

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
  // Recorded in every member's label (0: a random one).
  uint64_t run_id = 0;
};

class SwapFile {
 public:
  // Creates (truncating) the file(s), lays out the extents and preallocates.
  static absl::StatusOr<std::unique_ptr<SwapFile>> create(IoEngine& engine,
                                                          const std::vector<std::string>& paths,
                                                          const std::vector<TensorSpec>& tensors,
                                                          SwapFileOptions options = {});
  // Opens a committed file and validates its header, layout and size.
  static absl::StatusOr<std::unique_ptr<SwapFile>> open(IoEngine& engine,
                                                        const std::vector<std::string>& paths,
                                                        SwapFileOptions options = {});
  ~SwapFile();  // closes the file; does not commit
  SwapFile(const SwapFile&) = delete;
  SwapFile& operator=(const SwapFile&) = delete;

  // Snapshots (checksums and flags change as writes complete).
  std::vector<TensorExtent> tensors() const;
  absl::StatusOr<TensorExtent> find(const std::string& name) const;
  std::string path() const { return path_; }
  uint64_t data_bytes() const { return data_bytes_; }
  uint64_t run_id() const { return run_id_; }

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
  // Makes every completed write durable and the file reopenable: waits for
  // the writes in flight, fsyncs the extents, writes the table and labels
  // (clean) and fsyncs again. A no-op when nothing was written since the
  // last commit. On error the file stays dirty (open() refuses it) and
  // commit() may be retried.
  absl::Status commit();

 private:
  SwapFile(IoEngine& engine, FileId file, std::vector<std::string> paths, SwapFileOptions options);
  absl::StatusOr<size_t> index_of(const std::string& name, const void* buffer,
                                  size_t buffer_bytes) const;
  uint64_t label_stride() const;
  uint64_t table_offset() const { return label_stride() * paths_.size(); }
  std::string encode_table() const;
  std::string encode_label(uint32_t state, uint32_t index, uint32_t table_bytes,
                           uint64_t table_sum) const;
  absl::Status write_at(uint64_t offset, const std::string& bytes, const char* what);
  // Rewrites label 0 as dirty (fsync'd), vouching for nothing.
  absl::Status mark_dirty();
  // The table and every label, clean, around fsyncs (see commit()).
  absl::Status write_clean_header(const std::string& table);
  absl::Status parse_header();
  absl::Status check_member_label(uint32_t index, uint32_t count);
  absl::Status parse_table(uint32_t count, uint32_t table_bytes, uint64_t table_sum);

  IoEngine& engine_;
  FileId file_;
  std::vector<std::string> paths_;
  std::string path_;  // paths_ comma-joined, for messages
  SwapFileOptions options_;
  uint64_t block_size_ = 0;  // the stripe unit recorded in the header
  uint64_t run_id_ = 0;
  uint64_t header_bytes_ = 0;
  uint64_t data_bytes_ = 0;

  // Guards everything below and tensors_' checksums and flags. Never held
  // across I/O: the engine's completion callbacks take it.
  mutable std::mutex mu_;
  std::condition_variable idle_;  // header_busy_ or writes_in_flight_ changed
  std::vector<TensorExtent> tensors_;
  bool header_busy_ = false;            // a thread is writing the header (mark_dirty, commit)
  int64_t writes_in_flight_ = 0;        // submitted writes whose callback has not run
  bool clean_label_on_disk_ = false;    // label 0 on disk may say clean: mark it dirty first
  bool committed_ = false;              // the disk holds exactly what tensors_ says
  uint32_t committed_table_bytes_ = 0;  // what label 0 vouches for
  uint64_t committed_table_sum_ = 0;
};

}  // namespace strata::swap
