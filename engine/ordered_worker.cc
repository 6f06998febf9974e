#include "engine/ordered_worker.h"

#include <utility>

namespace strata::engine {

OrderedWorker::OrderedWorker() : thread_([this] { loop(); }) {}

OrderedWorker::~OrderedWorker() {
  drain().IgnoreError();
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  work_cv_.notify_all();
  thread_.join();
}

void OrderedWorker::submit(std::function<absl::Status()> job) {
  {
    std::lock_guard lock(mu_);
    jobs_.push_back(std::move(job));
  }
  work_cv_.notify_one();
}

absl::Status OrderedWorker::drain() {
  std::unique_lock lock(mu_);
  idle_cv_.wait(lock, [&] { return jobs_.empty() && !running_; });
  return std::exchange(error_, absl::OkStatus());
}

void OrderedWorker::loop() {
  std::unique_lock lock(mu_);
  while (true) {
    work_cv_.wait(lock, [&] { return stop_ || !jobs_.empty(); });
    if (jobs_.empty()) return;  // stop_ and nothing left
    std::function<absl::Status()> job = std::move(jobs_.front());
    jobs_.pop_front();
    if (!error_.ok()) {  // an earlier job failed: drop the rest
      if (jobs_.empty()) idle_cv_.notify_all();
      continue;
    }
    running_ = true;
    lock.unlock();
    absl::Status s = job();
    lock.lock();
    running_ = false;
    if (!s.ok() && error_.ok()) error_ = std::move(s);
    if (jobs_.empty()) idle_cv_.notify_all();
  }
}

}  // namespace strata::engine
