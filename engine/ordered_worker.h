// OrderedWorker: one thread that runs submitted jobs one at a time, in the
// order they were submitted. The training engine hands it per-layer
// gradient work during backward so the copy and the CPU optimizer overlap
// the device's compute.
//
// The first job that fails stops the worker: later jobs are dropped without
// running, and drain() returns that error (and clears it). drain() waits
// until every job submitted before it has run or been dropped.
//
// Threading: submit() and drain() may be called from any one thread (the
// engine's); jobs run on the worker thread. The destructor drains and joins.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

#include "absl/status/status.h"

namespace strata::engine {

class OrderedWorker {
 public:
  OrderedWorker();
  ~OrderedWorker();
  OrderedWorker(const OrderedWorker&) = delete;
  OrderedWorker& operator=(const OrderedWorker&) = delete;

  void submit(std::function<absl::Status()> job);
  absl::Status drain();

 private:
  void loop();

  std::mutex mu_;
  std::condition_variable work_cv_;
  std::condition_variable idle_cv_;
  std::deque<std::function<absl::Status()>> jobs_;
  bool running_ = false;  // a job is executing
  bool stop_ = false;
  absl::Status error_;
  std::thread thread_;
};

}  // namespace strata::engine
