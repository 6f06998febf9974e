// IoEngine: asynchronous file I/O for the swap tier (NVMe), with two
// implementations behind one API:
//   * UringEngine (swap/uring_engine.h): io_uring via liburing, O_DIRECT,
//     fixed files, registered buffers, batched submission, one ring per path.
//   * ThreadPoolEngine (swap/thread_engine.h): pread/pwrite on a thread pool,
//     for kernels or sandboxes without io_uring.
// make_io_engine() picks one and says why (selection_reason()).
//
// Files. open() takes one path, or several (one per stripe directory): the
// logical file is then striped RAID-0 over them in block_size units. Files
// are opened with O_DIRECT; a filesystem that refuses it (EINVAL) is an error
// naming the path unless IoEngineOptions::allow_buffered, then buffered I/O
// with a warning. O_DIRECT transfers need offset, length and buffer address
// aligned to kDirectAlignment; submit() rejects others with InvalidArgument.
//
// Requests. submit() splits a transfer into block_size pieces (striped over
// the members), returns a Ticket at once, and the pieces run concurrently up
// to queue_depth per path. Short transfers are resubmitted for the remainder,
// -EAGAIN / -EINTR are retried, reading past end of file is an OutOfRange
// error. Each ticket must be consumed by exactly one wait() or a poll() that
// returned a status. A request with on_complete set is detached: the callback
// runs once, on an engine thread (keep it short, never call wait() in it), and
// its ticket cannot be waited on; drain() waits for those too.
//
// Watchdog. wait() and drain() give up after options().watchdog_timeout with
// DeadlineExceeded naming the stuck request (file, offset, length); the
// request stays valid and can be waited on again.
//
// Threading. Every method is thread-safe; many threads may submit and wait
// at once. Buffers must stay valid until their request completes.
// shutdown() (also run by the destructor) rejects new requests, fails queued
// pieces with Cancelled, lets pieces already in the kernel finish, then stops
// the engine threads: no request is leaked and no buffer is touched after
// the request's completion has been reported.
//
//   auto engine = make_io_engine(options);          // StatusOr<unique_ptr>
//   STRATA_ASSIGN_OR_RETURN(FileId f, (*engine)->open("/nvme/a.swp", {.create = true}));
//   STRATA_ASSIGN_OR_RETURN(Ticket t, (*engine)->submit({IoOp::kWrite, f, 0, buf, len}));
//   STRATA_RETURN_IF_ERROR((*engine)->wait(t));
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "swap/io_options.h"

namespace strata::swap {

inline constexpr size_t kDirectAlignment = 4096;

using FileId = int32_t;
using Ticket = uint64_t;
inline constexpr Ticket kNoTicket = 0;  // returned for detached requests

enum class IoOp : uint8_t { kRead, kWrite };

struct OpenOptions {
  bool create = false;    // O_CREAT (mode 0644)
  bool truncate = false;  // O_TRUNC
  bool read_only = false;
};

struct IoRequest {
  IoOp op = IoOp::kRead;
  FileId file = -1;
  uint64_t offset = 0;  // logical offset in the (striped) file
  void* buffer = nullptr;
  size_t length = 0;
  // Optional: makes the request detached (see above).
  std::function<void(const absl::Status&)> on_complete;
};

class IoEngine {
 public:
  virtual ~IoEngine() = default;
  IoEngine(const IoEngine&) = delete;
  IoEngine& operator=(const IoEngine&) = delete;

  virtual std::string_view name() const = 0;  // "io_uring" or "threads"
  // Why make_io_engine() chose this engine (empty when built directly).
  const std::string& selection_reason() const { return reason_; }
  void set_selection_reason(std::string reason) { reason_ = std::move(reason); }
  virtual const IoEngineOptions& options() const = 0;

  // Opens a logical file: one member file per path, striped when several.
  virtual absl::StatusOr<FileId> open(const std::vector<std::string>& stripe_paths,
                                      const OpenOptions& options) = 0;
  absl::StatusOr<FileId> open(const std::string& path, const OpenOptions& options) {
    return open(std::vector<std::string>{path}, options);
  }
  // FailedPrecondition while requests on the file are in flight.
  virtual absl::Status close(FileId file) = 0;
  // Reserves logical_bytes (each member its share) with fallocate; ENOSPC
  // names the path and the bytes needed.
  virtual absl::Status preallocate(FileId file, uint64_t logical_bytes) = 0;
  // Logical bytes readable in full (the members' sizes mapped back).
  virtual absl::StatusOr<uint64_t> size(FileId file) = 0;
  virtual absl::Status sync(FileId file) = 0;  // fsync every member
  virtual bool is_direct(FileId file) const = 0;
  virtual std::string describe(FileId file) const = 0;  // member paths, comma-joined

  // Registers [data, data+bytes) for zero-copy fixed-buffer I/O (io_uring);
  // a no-op for the thread engine. Failure is not fatal: requests on an
  // unregistered buffer simply use the ordinary path.
  virtual absl::Status register_buffer(void* data, size_t bytes) = 0;
  virtual absl::Status unregister_buffer(void* data) = 0;

  virtual absl::StatusOr<Ticket> submit(IoRequest request) = 0;
  virtual absl::Status wait(Ticket ticket) = 0;
  // nullopt while in flight; otherwise the status (and the ticket is consumed).
  virtual std::optional<absl::Status> poll(Ticket ticket) = 0;
  // Waits until no request (waitable or detached) is in flight.
  virtual absl::Status drain() = 0;
  virtual void shutdown() = 0;

  // Blocking helpers: submit + wait.
  absl::Status read(FileId file, uint64_t offset, void* buffer, size_t length);
  absl::Status write(FileId file, uint64_t offset, const void* buffer, size_t length);

 protected:
  IoEngine() = default;

 private:
  std::string reason_;
};

// Builds the engine options.kind asks for. kAuto: io_uring unless
// io_uring_queue_init fails with ENOSYS / EPERM / EACCES (old kernel,
// seccomp, io_uring_disabled sysctl), then the thread engine; the choice and
// the reason are in selection_reason() and logged.
absl::StatusOr<std::unique_ptr<IoEngine>> make_io_engine(const IoEngineOptions& options);

// 0 when this process can create an io_uring, else the -errno it got (cheap:
// no I/O; swap/io_probe.h has the full probe).
int io_uring_setup_errno();

// Stripe paths for a file name under options.paths (one per directory), or
// {name} when paths is empty.
std::vector<std::string> stripe_paths(const IoEngineOptions& options, const std::string& name);

}  // namespace strata::swap
