#include "swap/uring_engine.h"

#include <liburing.h>
#include <sched.h>

#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <shared_mutex>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/log.h"
#include "core/status.h"
#include "swap/engine_base.h"

namespace strata::swap {
namespace {

using internal::BufferRegion;
using internal::Chunk;
using internal::FileMember;

constexpr unsigned kFileSlots = 256;
constexpr unsigned kBufferSlots = 64;
constexpr uint64_t kStopTag = 0;  // user_data of the NOP that ends a reaper

struct Ring {
  io_uring ring{};
  bool initialised = false;
  std::mutex mu;  // guards the SQ, pending, inflight, file slots, closed
  std::condition_variable idle_cv;
  std::deque<Chunk*> pending;
  unsigned inflight = 0;  // SQEs handed to the kernel, CQE not yet reaped
  bool closed = false;
  bool files_registered = false;
  std::vector<int> free_file_slots;
  std::thread reaper;
};

class UringEngine final : public internal::EngineBase {
 public:
  explicit UringEngine(IoEngineOptions options) : EngineBase(std::move(options)) {}

  ~UringEngine() override {
    shutdown();
    for (auto& r : rings_) {
      if (r->initialised) io_uring_queue_exit(&r->ring);
    }
    close_all_files();
  }

  absl::Status init() {
    const size_t n = std::max<size_t>(1, options_.paths.size());
    for (size_t i = 0; i < n; ++i) {
      auto r = std::make_unique<Ring>();
      STRATA_RETURN_IF_ERROR(init_ring(*r));
      rings_.push_back(std::move(r));
    }
    // Sparse tables: files and buffers are added one by one later.
    buffers_registered_ = true;
    for (auto& r : rings_) {
      if (io_uring_register_buffers_sparse(&r->ring, kBufferSlots) < 0) buffers_registered_ = false;
      if (io_uring_register_files_sparse(&r->ring, kFileSlots) == 0) {
        r->files_registered = true;
        for (int s = kFileSlots - 1; s >= 0; --s) r->free_file_slots.push_back(s);
      }
    }
    for (auto& r : rings_) {
      Ring* rp = r.get();
      rp->reaper = std::thread([this, rp] { reap(*rp); });
    }
    return absl::OkStatus();
  }

  std::string_view name() const override { return "io_uring"; }

  absl::Status register_buffer(void* data, size_t bytes) override {
    std::unique_lock lock(buffers_mu_);
    if (!buffers_registered_) {
      return absl::UnavailableError("io_uring registered buffers are not available on this kernel");
    }
    std::vector<bool> used(kBufferSlots, false);
    for (const BufferRegion& b : buffers_) used[b.index] = true;
    int index = -1;
    for (unsigned i = 0; i < kBufferSlots; ++i) {
      if (!used[i]) {
        index = static_cast<int>(i);
        break;
      }
    }
    if (index < 0) {
      return absl::ResourceExhaustedError(
          absl::StrCat("all ", kBufferSlots, " io_uring buffer slots are in use"));
    }
    iovec iov{data, bytes};
    for (size_t i = 0; i < rings_.size(); ++i) {
      int rc = io_uring_register_buffers_update_tag(&rings_[i]->ring, index, &iov, nullptr, 1);
      if (rc < 0) {
        iovec empty{nullptr, 0};
        for (size_t j = 0; j < i; ++j) {
          io_uring_register_buffers_update_tag(&rings_[j]->ring, index, &empty, nullptr, 1);
        }
        return errno_status(-rc, absl::StrCat("registering a ", bytes,
                                              "-byte buffer with io_uring (fixed buffers; "
                                              "each must be <= 1 GiB and lockable)"));
      }
    }
    buffers_.push_back({static_cast<char*>(data), bytes, index});
    return absl::OkStatus();
  }

  absl::Status unregister_buffer(void* data) override {
    std::unique_lock lock(buffers_mu_);
    for (auto it = buffers_.begin(); it != buffers_.end(); ++it) {
      if (it->data != data) continue;
      iovec empty{nullptr, 0};
      for (auto& r : rings_) {
        io_uring_register_buffers_update_tag(&r->ring, it->index, &empty, nullptr, 1);
      }
      buffers_.erase(it);
      return absl::OkStatus();
    }
    return absl::NotFoundError("unregister_buffer: buffer was not registered");
  }

  void shutdown() override {
    {
      std::lock_guard lock(shutdown_mu_);
      if (shut_down_) return;
      shut_down_ = true;
    }
    begin_stop();
    std::vector<Chunk*> cancelled;
    for (auto& r : rings_) {
      std::lock_guard lock(r->mu);
      r->closed = true;
      cancelled.insert(cancelled.end(), r->pending.begin(), r->pending.end());
      r->pending.clear();
    }
    for (Chunk* c : cancelled) {
      complete_chunk(c,
                     absl::CancelledError("I/O engine shut down before the request was submitted"));
    }
    for (auto& r : rings_) {
      std::unique_lock lock(r->mu);
      if (!r->idle_cv.wait_for(lock, options_.watchdog_timeout, [&] { return r->inflight == 0; })) {
        log::get("swap")->error("io_uring shutdown: {} requests still in the kernel after {} ms",
                                r->inflight, options_.watchdog_timeout.count());
      }
      io_uring_sqe* sqe = io_uring_get_sqe(&r->ring);
      if (sqe == nullptr) {
        submit_locked(*r);
        sqe = io_uring_get_sqe(&r->ring);
      }
      if (sqe != nullptr) {
        io_uring_prep_nop(sqe);
        io_uring_sqe_set_data64(sqe, kStopTag);
        submit_locked(*r);
      }
    }
    for (auto& r : rings_) {
      if (r->reaper.joinable()) r->reaper.join();
    }
  }

 protected:
  int lane_count() const override { return static_cast<int>(rings_.size()); }

  void on_member_opened(FileMember& m) override {
    Ring& r = *rings_[m.ring];
    std::lock_guard lock(r.mu);
    if (!r.files_registered || r.free_file_slots.empty()) return;
    int slot = r.free_file_slots.back();
    if (io_uring_register_files_update(&r.ring, slot, &m.fd, 1) == 1) {
      r.free_file_slots.pop_back();
      m.fixed_slot = slot;
    }
  }

  void on_member_closing(FileMember& m) override {
    if (m.fixed_slot < 0) return;
    Ring& r = *rings_[m.ring];
    std::lock_guard lock(r.mu);
    int none = -1;
    io_uring_register_files_update(&r.ring, m.fixed_slot, &none, 1);
    r.free_file_slots.push_back(m.fixed_slot);
    m.fixed_slot = -1;
  }

  int find_registered(const char* data, size_t len) const override {
    std::shared_lock lock(buffers_mu_);
    for (const BufferRegion& b : buffers_) {
      if (data >= b.data && data + len <= b.data + b.bytes) return b.index;
    }
    return -1;
  }

  void dispatch(std::vector<Chunk*> chunks) override {
    // Group by ring so each ring gets one batch and one submit.
    std::vector<Chunk*> rejected;
    for (size_t i = 0; i < rings_.size(); ++i) {
      Ring& r = *rings_[i];
      std::lock_guard lock(r.mu);
      bool any = false;
      for (Chunk*& c : chunks) {
        if (c == nullptr || c->member->ring != static_cast<int>(i)) continue;
        if (r.closed) {
          rejected.push_back(c);
        } else {
          r.pending.push_back(c);
          any = true;
        }
        c = nullptr;
      }
      if (any) pump(r);
    }
    for (Chunk* c : rejected) complete_chunk(c, absl::CancelledError("I/O engine shut down"));
  }

 private:
  absl::Status init_ring(Ring& r) {
    io_uring_params p{};
    unsigned entries = static_cast<unsigned>(options_.queue_depth);
    if (options_.use_sqpoll) {
      p.flags |= IORING_SETUP_SQPOLL;
      p.sq_thread_idle = 1000;  // ms before the kernel thread sleeps
    }
    // SUBMIT_ALL: a failing SQE must not leave later ones stranded in the SQ.
    p.flags |= IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN;
    int rc = io_uring_queue_init_params(entries, &r.ring, &p);
    if (rc == -EINVAL) {  // older kernel: retry without the optional flags
      io_uring_params plain{};
      plain.flags = p.flags & IORING_SETUP_SQPOLL;
      plain.sq_thread_idle = p.sq_thread_idle;
      rc = io_uring_queue_init_params(entries, &r.ring, &plain);
    }
    if (rc < 0) {
      return errno_status(-rc, absl::StrCat("io_uring_queue_init(", entries, " entries",
                                            options_.use_sqpoll ? ", SQPOLL" : "", ")"));
    }
    r.initialised = true;
    return absl::OkStatus();
  }

  // Caller holds r.mu.
  void submit_locked(Ring& r) {
    for (;;) {
      int rc = io_uring_submit(&r.ring);
      if (rc >= 0) return;
      if (rc == -EINTR || rc == -EAGAIN || rc == -EBUSY) {
        sched_yield();
        continue;
      }
      // Ring-level failure: the SQEs stay queued and go with the next submit.
      log::get("swap")->error("io_uring_submit failed: {}", std::strerror(-rc));
      return;
    }
  }

  void prep(Ring& r, io_uring_sqe* sqe, Chunk* c) {
    const FileMember& m = *c->member;
    const bool fixed_file = m.fixed_slot >= 0;
    const int fd = fixed_file ? m.fixed_slot : m.fd;
    char* p = c->buffer + c->done;
    const auto len = static_cast<unsigned>(c->length - c->done);
    const uint64_t off = c->offset + c->done;
    if (c->buf_index >= 0) {
      if (c->is_read()) {
        io_uring_prep_read_fixed(sqe, fd, p, len, off, c->buf_index);
      } else {
        io_uring_prep_write_fixed(sqe, fd, p, len, off, c->buf_index);
      }
    } else if (c->is_read()) {
      io_uring_prep_read(sqe, fd, p, len, off);
    } else {
      io_uring_prep_write(sqe, fd, p, len, off);
    }
    if (fixed_file) sqe->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data(sqe, c);
  }

  // Moves pending pieces into the ring up to queue_depth. Caller holds r.mu.
  void pump(Ring& r) {
    unsigned prepared = 0;
    const auto depth = static_cast<unsigned>(options_.queue_depth);
    while (!r.pending.empty() && r.inflight < depth) {
      io_uring_sqe* sqe = io_uring_get_sqe(&r.ring);
      if (sqe == nullptr) {
        submit_locked(r);
        prepared = 0;
        sqe = io_uring_get_sqe(&r.ring);
        if (sqe == nullptr) break;
      }
      Chunk* c = r.pending.front();
      r.pending.pop_front();
      prep(r, sqe, c);
      ++r.inflight;
      ++prepared;
      if (options_.single_submit) {
        submit_locked(r);
        prepared = 0;
      }
    }
    if (prepared > 0) submit_locked(r);
  }

  void reap(Ring& r) {
    constexpr unsigned kBatch = 64;
    std::vector<std::pair<Chunk*, absl::Status>> finished;
    for (;;) {
      io_uring_cqe* cqe = nullptr;
      int rc = io_uring_wait_cqe(&r.ring, &cqe);
      if (rc == -EINTR || rc == -EAGAIN) continue;
      if (rc < 0) {
        log::get("swap")->error("io_uring_wait_cqe failed: {}", std::strerror(-rc));
        std::this_thread::yield();
        continue;
      }
      io_uring_cqe* cqes[kBatch];
      unsigned n = io_uring_peek_batch_cqe(&r.ring, cqes, kBatch);
      std::pair<uint64_t, int> results[kBatch];
      for (unsigned i = 0; i < n; ++i) results[i] = {cqes[i]->user_data, cqes[i]->res};
      io_uring_cq_advance(&r.ring, n);

      bool stop = false;
      {
        std::lock_guard lock(r.mu);
        for (unsigned i = 0; i < n; ++i) {
          if (results[i].first == kStopTag) {
            stop = true;
            continue;
          }
          --r.inflight;
          auto* c = reinterpret_cast<Chunk*>(results[i].first);
          const int res = results[i].second;
          if (res == -EAGAIN || res == -EINTR) {
            r.pending.push_front(c);  // transient: resubmit as is
          } else if (res < 0) {
            finished.emplace_back(c, chunk_error(*c, -res));
          } else if (res == 0) {
            finished.emplace_back(c, c->is_read() ? chunk_eof(*c) : chunk_error(*c, EIO));
          } else {
            c->done += static_cast<size_t>(res);
            if (c->done < c->length) {
              r.pending.push_front(c);  // short transfer: the rest goes again
            } else {
              finished.emplace_back(c, absl::OkStatus());
            }
          }
        }
        if (!r.closed) pump(r);
        // Pieces re-queued after shutdown began: fail them, nobody will pump.
        if (r.closed) {
          for (Chunk* c : r.pending) {
            finished.emplace_back(c, absl::CancelledError("I/O engine shut down during a retry"));
          }
          r.pending.clear();
        }
        if (r.inflight == 0) r.idle_cv.notify_all();
      }
      for (auto& [c, status] : finished) complete_chunk(c, status);
      finished.clear();
      if (stop) return;
    }
  }

  std::vector<std::unique_ptr<Ring>> rings_;
  mutable std::shared_mutex buffers_mu_;
  std::vector<BufferRegion> buffers_;
  bool buffers_registered_ = false;
  std::mutex shutdown_mu_;
  bool shut_down_ = false;
};

}  // namespace

absl::StatusOr<std::unique_ptr<IoEngine>> make_uring_engine(const IoEngineOptions& options) {
  STRATA_RETURN_IF_ERROR(validate(options));
  auto engine = std::make_unique<UringEngine>(options);
  STRATA_RETURN_IF_ERROR(engine->init(), "creating the io_uring engine");
  return std::unique_ptr<IoEngine>(std::move(engine));
}

}  // namespace strata::swap
