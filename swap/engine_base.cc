#include "swap/engine_base.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/log.h"
#include "core/status.h"

namespace strata::swap {

absl::Status IoEngine::read(FileId file, uint64_t offset, void* buffer, size_t length) {
  STRATA_ASSIGN_OR_RETURN(Ticket t, submit({IoOp::kRead, file, offset, buffer, length, {}}));
  return wait(t);
}

absl::Status IoEngine::write(FileId file, uint64_t offset, const void* buffer, size_t length) {
  STRATA_ASSIGN_OR_RETURN(
      Ticket t, submit({IoOp::kWrite, file, offset, const_cast<void*>(buffer), length, {}}));
  return wait(t);
}

std::vector<std::string> stripe_paths(const IoEngineOptions& options, const std::string& name) {
  if (options.paths.empty()) return {name};
  std::vector<std::string> out;
  for (const std::string& dir : options.paths) out.push_back(dir + "/" + name);
  return out;
}

namespace internal {
namespace {

// Bytes of a logical file of `logical` bytes that land on member `i` of `n`
// with stripe unit `unit`.
uint64_t member_share(uint64_t logical, uint64_t unit, uint64_t n, uint64_t i) {
  uint64_t stripes = logical / unit;
  uint64_t rem = logical % unit;
  uint64_t share = (stripes / n) * unit;
  if (i < stripes % n) share += unit;
  if (i == stripes % n) share += rem;
  return share;
}

// Largest logical size whose share on member i fits in member_size[i].
uint64_t logical_from_members(const std::vector<uint64_t>& sizes, uint64_t unit) {
  const uint64_t n = sizes.size();
  if (n == 1) return sizes[0];
  // Walk stripe by stripe (members are filled round-robin).
  uint64_t logical = 0;
  std::vector<uint64_t> used(n, 0);
  for (uint64_t s = 0;; ++s) {
    uint64_t i = s % n;
    uint64_t room = sizes[i] > used[i] ? sizes[i] - used[i] : 0;
    if (room < unit) return logical + room;
    used[i] += unit;
    logical += unit;
    if (s > (uint64_t{1} << 40)) return logical;  // unreachable in practice
  }
}

std::string human(const Op& op) { return op.where; }

}  // namespace

bool FileEntry::any_direct() const {
  for (const FileMember& m : members) {
    if (m.direct) return true;
  }
  return false;
}

EngineBase::EngineBase(IoEngineOptions options) : options_(std::move(options)) {}

EngineBase::~EngineBase() { close_all_files(); }

void EngineBase::close_all_files() {
  std::unique_lock lock(files_mu_);
  for (auto& entry : files_) {
    if (!entry) continue;
    for (FileMember& m : entry->members) {
      if (m.fd >= 0) ::close(m.fd);
      m.fd = -1;
    }
    entry = nullptr;
  }
}

absl::StatusOr<FileId> EngineBase::open(const std::vector<std::string>& stripe_paths,
                                        const OpenOptions& opts) {
  if (stripe_paths.empty()) return absl::InvalidArgumentError("open: no path given");
  if (stopping()) return absl::FailedPreconditionError("I/O engine is shut down");
  auto entry = std::make_shared<FileEntry>();
  int flags = (opts.read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC;
  if (opts.create) flags |= O_CREAT;
  if (opts.truncate) flags |= O_TRUNC;
  auto cleanup = [&] {
    for (FileMember& m : entry->members) {
      if (m.fd >= 0) ::close(m.fd);
    }
  };
  for (size_t i = 0; i < stripe_paths.size(); ++i) {
    FileMember m;
    m.path = stripe_paths[i];
    m.ring = static_cast<int>(i % static_cast<size_t>(lane_count()));
    int fd;
    do {
      fd = ::open(m.path.c_str(), flags | O_DIRECT, 0644);
    } while (fd < 0 && errno == EINTR);
    if (fd >= 0) {
      m.direct = true;
    } else if (errno == EINVAL) {
      if (!options_.allow_buffered) {
        cleanup();
        return absl::InvalidArgumentError(absl::StrCat(
            "opening ", m.path,
            " with O_DIRECT: the filesystem does not support direct I/O (tmpfs, some overlay "
            "filesystems); put the swap path on a disk filesystem (ext4, xfs) or allow buffered "
            "I/O (allow_buffered)"));
      }
      fd = ::open(m.path.c_str(), flags, 0644);
      if (fd >= 0) {
        log::get("swap")->warn("{}: O_DIRECT not supported by this filesystem; using buffered I/O",
                               m.path);
      }
    }
    if (fd < 0) {
      int err = errno;
      cleanup();
      return errno_status(err, absl::StrCat("opening ", m.path));
    }
    m.fd = fd;
    entry->members.push_back(std::move(m));
  }
  for (FileMember& m : entry->members) on_member_opened(m);
  std::unique_lock lock(files_mu_);
  files_.push_back(std::move(entry));
  return static_cast<FileId>(files_.size() - 1);
}

std::shared_ptr<FileEntry> EngineBase::lookup(FileId file) const {
  std::shared_lock lock(files_mu_);
  if (file < 0 || static_cast<size_t>(file) >= files_.size()) return nullptr;
  return files_[file];
}

absl::Status EngineBase::close(FileId file) {
  std::shared_ptr<FileEntry> entry;
  {
    std::unique_lock lock(files_mu_);
    if (file < 0 || static_cast<size_t>(file) >= files_.size() || !files_[file]) {
      return absl::InvalidArgumentError(absl::StrCat("close: file id ", file, " is not open"));
    }
    entry = files_[file];
    if (entry->inflight.load() != 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("close: ", entry->inflight.load(), " requests still in flight on ",
                       entry->members[0].path, "; wait for them first"));
    }
    files_[file] = nullptr;
  }
  absl::Status status;
  for (FileMember& m : entry->members) {
    on_member_closing(m);
    if (::close(m.fd) != 0 && status.ok()) {
      status = errno_status(errno, absl::StrCat("closing ", m.path));
    }
    m.fd = -1;
  }
  return status;
}

absl::Status EngineBase::preallocate(FileId file, uint64_t logical_bytes) {
  auto entry = lookup(file);
  if (!entry) return absl::InvalidArgumentError(absl::StrCat("file id ", file, " is not open"));
  const uint64_t n = entry->members.size();
  for (uint64_t i = 0; i < n; ++i) {
    const FileMember& m = entry->members[i];
    uint64_t share = member_share(logical_bytes, options_.block_size, n, i);
    if (share == 0) continue;
    int rc;
    do {
      rc = ::posix_fallocate(m.fd, 0, static_cast<off_t>(share));
    } while (rc == EINTR);
    if (rc != 0) {
      std::string avail;
      struct statvfs vfs;
      if (::fstatvfs(m.fd, &vfs) == 0) {
        avail = absl::StrCat(", ", static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize,
                             " bytes available");
      }
      return errno_status(rc, absl::StrCat("preallocating ", m.path, ": need ", share, " bytes",
                                           avail, "; free space or choose another path"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> EngineBase::size(FileId file) {
  auto entry = lookup(file);
  if (!entry) return absl::InvalidArgumentError(absl::StrCat("file id ", file, " is not open"));
  std::vector<uint64_t> sizes;
  for (const FileMember& m : entry->members) {
    struct stat st;
    if (::fstat(m.fd, &st) != 0) return errno_status(errno, absl::StrCat("stat ", m.path));
    sizes.push_back(static_cast<uint64_t>(st.st_size));
  }
  return logical_from_members(sizes, options_.block_size);
}

absl::Status EngineBase::sync(FileId file) {
  auto entry = lookup(file);
  if (!entry) return absl::InvalidArgumentError(absl::StrCat("file id ", file, " is not open"));
  for (const FileMember& m : entry->members) {
    int rc;
    do {
      rc = ::fsync(m.fd);
    } while (rc != 0 && errno == EINTR);
    if (rc != 0) return errno_status(errno, absl::StrCat("fsync ", m.path));
  }
  return absl::OkStatus();
}

bool EngineBase::is_direct(FileId file) const {
  auto entry = lookup(file);
  return entry && entry->any_direct();
}

std::string EngineBase::describe(FileId file) const {
  auto entry = lookup(file);
  if (!entry) return absl::StrCat("<file ", file, " not open>");
  std::vector<std::string> paths;
  for (const FileMember& m : entry->members) paths.push_back(m.path);
  return absl::StrJoin(paths, ",");
}

absl::StatusOr<Ticket> EngineBase::submit(IoRequest req) {
  if (stopping()) {
    return absl::CancelledError("I/O engine is shutting down; request not accepted");
  }
  auto entry = lookup(req.file);
  if (!entry) {
    return absl::InvalidArgumentError(absl::StrCat("submit: file id ", req.file, " is not open"));
  }
  const char* verb = req.op == IoOp::kRead ? "read" : "write";
  std::string where = absl::StrFormat("%s of %s at offset %u length %u", verb, describe(req.file),
                                      req.offset, req.length);
  if (req.buffer == nullptr || req.length == 0) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": empty buffer"));
  }
  if (entry->any_direct()) {
    const auto addr = reinterpret_cast<uintptr_t>(req.buffer);
    if (req.offset % kDirectAlignment != 0 || req.length % kDirectAlignment != 0 ||
        addr % kDirectAlignment != 0) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s (buffer %p): O_DIRECT needs offset, length and buffer address aligned to %u bytes; "
          "use an aligned buffer (e.g. AlignedBuffer) and pad the length",
          where, req.buffer, kDirectAlignment));
    }
  }

  auto op = std::make_shared<Op>();
  op->op = req.op;
  op->file = req.file;
  op->offset = req.offset;
  op->length = req.length;
  op->where = std::move(where);
  op->on_complete = std::move(req.on_complete);
  op->file_entry = entry;

  // Split on stripe-unit boundaries; member = stripe % n.
  const uint64_t unit = options_.block_size;
  const uint64_t n = entry->members.size();
  std::vector<Chunk*> chunks;
  uint64_t pos = req.offset;
  char* buf = static_cast<char*>(req.buffer);
  size_t left = req.length;
  while (left > 0) {
    uint64_t stripe = pos / unit;
    uint64_t within = pos % unit;
    size_t len = static_cast<size_t>(std::min<uint64_t>(left, unit - within));
    auto* c = new Chunk;
    c->op = op;
    c->member = &entry->members[stripe % n];
    c->offset = (stripe / n) * unit + within;
    c->buffer = buf;
    c->length = len;
    c->buf_index = find_registered(buf, len);
    chunks.push_back(c);
    pos += len;
    buf += len;
    left -= len;
  }
  op->pieces_left.store(chunks.size());
  entry->inflight.fetch_add(static_cast<int64_t>(chunks.size()));

  Ticket ticket = kNoTicket;
  if (!op->on_complete) {
    std::lock_guard lock(ops_mu_);
    ticket = next_ticket_++;
    op->ticket = ticket;
    ops_.emplace(ticket, op);
  }
  {
    std::lock_guard lock(outstanding_mu_);
    ++outstanding_;
  }
  dispatch(std::move(chunks));
  return ticket;
}

absl::Status EngineBase::chunk_error(const Chunk& c, int err) {
  std::string hint;
  if (err == EINVAL && c.member->direct) {
    hint = " (O_DIRECT rejected the transfer: check alignment to the device's logical block size)";
  }
  return errno_status(
      err, absl::StrFormat("%s: %s of %s at offset %u length %u failed%s", human(*c.op),
                           c.is_read() ? "read" : "write", c.member->path, c.offset + c.done,
                           c.length - c.done, hint));
}

absl::Status EngineBase::chunk_eof(const Chunk& c) {
  return absl::OutOfRangeError(
      absl::StrFormat("%s: unexpected end of file %s at offset %u (%u bytes short); the file is "
                      "truncated or was never written there",
                      human(*c.op), c.member->path, c.offset + c.done, c.length - c.done));
}

void EngineBase::complete_chunk(Chunk* chunk, const absl::Status& status) {
  std::shared_ptr<Op> op = std::move(chunk->op);
  op->file_entry->inflight.fetch_sub(1);
  delete chunk;
  if (!status.ok()) {
    std::lock_guard lock(op->mu);
    if (op->status.ok()) op->status = status;
  }
  if (op->pieces_left.fetch_sub(1, std::memory_order_acq_rel) == 1) finish_op(op);
}

void EngineBase::finish_op(const std::shared_ptr<Op>& op) {
  absl::Status status;
  {
    std::lock_guard lock(op->mu);
    op->done = true;
    status = op->status;
  }
  op->cv.notify_all();
  if (op->on_complete) op->on_complete(status);
  {
    std::lock_guard lock(outstanding_mu_);
    --outstanding_;
  }
  outstanding_cv_.notify_all();
}

absl::Status EngineBase::wait(Ticket ticket) {
  std::shared_ptr<Op> op;
  {
    std::lock_guard lock(ops_mu_);
    auto it = ops_.find(ticket);
    if (it == ops_.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("wait: unknown ticket ", ticket, " (already consumed or detached)"));
    }
    op = it->second;
  }
  {
    std::unique_lock lock(op->mu);
    if (!op->cv.wait_for(lock, options_.watchdog_timeout, [&] { return op->done; })) {
      auto secs = std::chrono::duration<double>(options_.watchdog_timeout).count();
      log::get("swap")->error("I/O watchdog: {} still pending after {:.1f} s", op->where, secs);
      return absl::DeadlineExceededError(absl::StrFormat(
          "I/O watchdog: %s still pending after %.1f s; the device may be hung or overloaded",
          op->where, secs));
    }
  }
  std::lock_guard lock(ops_mu_);
  ops_.erase(ticket);
  return op->status;
}

std::optional<absl::Status> EngineBase::poll(Ticket ticket) {
  std::lock_guard lock(ops_mu_);
  auto it = ops_.find(ticket);
  if (it == ops_.end()) {
    return absl::InvalidArgumentError(
        absl::StrCat("poll: unknown ticket ", ticket, " (already consumed or detached)"));
  }
  std::shared_ptr<Op> op = it->second;
  std::lock_guard op_lock(op->mu);
  if (!op->done) return std::nullopt;
  absl::Status status = op->status;
  ops_.erase(it);
  return status;
}

absl::Status EngineBase::drain() {
  std::unique_lock lock(outstanding_mu_);
  if (!outstanding_cv_.wait_for(lock, options_.watchdog_timeout,
                                [&] { return outstanding_ == 0; })) {
    std::string oldest;
    {
      std::lock_guard ops_lock(ops_mu_);
      for (const auto& [t, op] : ops_) {
        std::lock_guard op_lock(op->mu);
        if (!op->done) {
          oldest = op->where;
          break;
        }
      }
    }
    return absl::DeadlineExceededError(
        absl::StrCat("I/O watchdog: ", outstanding_, " requests still pending after drain timeout",
                     oldest.empty() ? "" : absl::StrCat(", e.g. ", oldest)));
  }
  return absl::OkStatus();
}

}  // namespace internal
}  // namespace strata::swap
