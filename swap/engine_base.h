// EngineBase: the part of IoEngine both engines share (internal header).
// It owns the file table, the ticket table, request validation, splitting
// into block_size pieces striped over the members, completion bookkeeping
// and the watchdog. An engine subclass only moves pieces (Chunk) and calls
// complete_chunk() once per piece, from any thread.
//
// Locking: files_mu_ guards the file table (shared for lookups); ops_mu_
// guards the ticket table; each Op has its own mutex for its result. No lock
// is held while a user callback runs.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "swap/io_engine.h"

namespace strata::swap::internal {

struct FileMember {
  int fd = -1;
  std::string path;
  bool direct = false;
  int ring = 0;         // which ring / lane serves this member
  int fixed_slot = -1;  // registered-file index in that ring, -1 when none
};

struct FileEntry {
  std::vector<FileMember> members;
  std::atomic<int64_t> inflight{0};  // pieces submitted and not completed
  bool any_direct() const;
};

// One submitted request; shared by its pieces.
struct Op {
  Ticket ticket = kNoTicket;
  IoOp op = IoOp::kRead;
  FileId file = -1;
  uint64_t offset = 0;
  size_t length = 0;
  std::string where;  // "read of PATHS at offset O length L" for messages
  std::function<void(const absl::Status&)> on_complete;
  std::shared_ptr<FileEntry> file_entry;

  std::atomic<size_t> pieces_left{0};
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  absl::Status status;  // first error of any piece
};

// One piece of a request: a contiguous range of one member file.
struct Chunk {
  std::shared_ptr<Op> op;
  const FileMember* member = nullptr;  // stable: FileEntry outlives its ops
  uint64_t offset = 0;                 // in the member file
  char* buffer = nullptr;
  size_t length = 0;
  size_t done = 0;     // bytes already transferred (short transfers resume here)
  int buf_index = -1;  // registered buffer, -1 when none
  bool is_read() const { return op->op == IoOp::kRead; }
};

// Registered-buffer lookup shared by the engines.
struct BufferRegion {
  char* data = nullptr;
  size_t bytes = 0;
  int index = -1;
};

class EngineBase : public IoEngine {
 public:
  ~EngineBase() override;

  const IoEngineOptions& options() const override { return options_; }
  absl::StatusOr<FileId> open(const std::vector<std::string>& stripe_paths,
                              const OpenOptions& options) override;
  using IoEngine::open;
  absl::Status close(FileId file) override;
  absl::Status preallocate(FileId file, uint64_t logical_bytes) override;
  absl::StatusOr<uint64_t> size(FileId file) override;
  absl::Status sync(FileId file) override;
  bool is_direct(FileId file) const override;
  std::string describe(FileId file) const override;

  absl::StatusOr<Ticket> submit(IoRequest request) override;
  absl::Status wait(Ticket ticket) override;
  std::optional<absl::Status> poll(Ticket ticket) override;
  absl::Status drain() override;

 protected:
  explicit EngineBase(IoEngineOptions options);

  // Number of lanes (rings); members are assigned round-robin.
  virtual int lane_count() const = 0;
  // Called after a member file is opened / before it is closed (fixed files).
  virtual void on_member_opened(FileMember& member) {}
  virtual void on_member_closing(FileMember& member) {}
  // Hands pieces to the engine. Never fails: errors go through complete_chunk.
  virtual void dispatch(std::vector<Chunk*> chunks) = 0;
  // Registered buffer containing [data, data+len), or -1.
  virtual int find_registered(const char* data, size_t len) const { return -1; }

  // Reports one finished piece (takes ownership and deletes it).
  void complete_chunk(Chunk* chunk, const absl::Status& status);
  // Error for a piece from a -errno result, naming path and offsets.
  static absl::Status chunk_error(const Chunk& chunk, int err);
  static absl::Status chunk_eof(const Chunk& chunk);

  bool stopping() const { return stopping_.load(std::memory_order_acquire); }
  void begin_stop() { stopping_.store(true, std::memory_order_release); }
  // Closes every member of every file (used by subclass destructors once
  // their threads are gone).
  void close_all_files();

  IoEngineOptions options_;

 private:
  std::shared_ptr<FileEntry> lookup(FileId file) const;
  void finish_op(const std::shared_ptr<Op>& op);

  mutable std::shared_mutex files_mu_;
  std::vector<std::shared_ptr<FileEntry>> files_;  // FileId indexes; closed = nullptr

  std::mutex ops_mu_;
  std::unordered_map<Ticket, std::shared_ptr<Op>> ops_;
  Ticket next_ticket_ = 1;

  std::mutex outstanding_mu_;
  std::condition_variable outstanding_cv_;
  int64_t outstanding_ = 0;  // ops not finished (waitable and detached)

  std::atomic<bool> stopping_{false};
};

}  // namespace strata::swap::internal
