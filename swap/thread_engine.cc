#include "swap/thread_engine.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "swap/engine_base.h"

namespace strata::swap {
namespace {

using internal::Chunk;

class ThreadPoolEngine final : public internal::EngineBase {
 public:
  explicit ThreadPoolEngine(IoEngineOptions options) : EngineBase(std::move(options)) {
    int workers = std::max(options_.threads, std::min(options_.queue_depth, 16));
    for (int i = 0; i < workers; ++i) workers_.emplace_back([this] { run(); });
  }
  ~ThreadPoolEngine() override { shutdown(); }

  std::string_view name() const override { return "threads"; }
  absl::Status register_buffer(void*, size_t) override { return absl::OkStatus(); }
  absl::Status unregister_buffer(void*) override { return absl::OkStatus(); }

  void shutdown() override {
    std::deque<Chunk*> cancelled;
    {
      std::lock_guard lock(mu_);
      if (stopped_) return;
      stopped_ = true;
      begin_stop();
      cancelled.swap(queue_);
    }
    cv_.notify_all();
    for (Chunk* c : cancelled) {
      complete_chunk(c, absl::CancelledError("I/O engine shut down before the request ran"));
    }
    for (std::thread& t : workers_) t.join();
    workers_.clear();
  }

 protected:
  int lane_count() const override { return 1; }

  void dispatch(std::vector<Chunk*> chunks) override {
    {
      std::lock_guard lock(mu_);
      if (!stopped_) {
        queue_.insert(queue_.end(), chunks.begin(), chunks.end());
        chunks.clear();
      }
    }
    cv_.notify_all();
    // Lost the race with shutdown(): fail them here.
    for (Chunk* c : chunks) complete_chunk(c, absl::CancelledError("I/O engine shut down"));
  }

 private:
  void run() {
    for (;;) {
      Chunk* c;
      {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [&] { return stopped_ || !queue_.empty(); });
        if (queue_.empty()) return;
        c = queue_.front();
        queue_.pop_front();
      }
      complete_chunk(c, transfer(*c));
    }
  }

  static absl::Status transfer(Chunk& c) {
    while (c.done < c.length) {
      ssize_t r = c.is_read() ? ::pread(c.member->fd, c.buffer + c.done, c.length - c.done,
                                        static_cast<off_t>(c.offset + c.done))
                              : ::pwrite(c.member->fd, c.buffer + c.done, c.length - c.done,
                                         static_cast<off_t>(c.offset + c.done));
      if (r < 0) {
        if (errno == EINTR || errno == EAGAIN) continue;
        return chunk_error(c, errno);
      }
      if (r == 0) {
        if (c.is_read()) return chunk_eof(c);
        return chunk_error(c, EIO);  // pwrite made no progress
      }
      c.done += static_cast<size_t>(r);
    }
    return absl::OkStatus();
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Chunk*> queue_;
  bool stopped_ = false;
  std::vector<std::thread> workers_;
};

}  // namespace

std::unique_ptr<IoEngine> make_thread_engine(const IoEngineOptions& options) {
  return std::make_unique<ThreadPoolEngine>(options);
}

}  // namespace strata::swap
