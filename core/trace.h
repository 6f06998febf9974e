// TraceRecorder: timed events of a run, written as Chrome trace JSON
// (chrome://tracing, https://ui.perfetto.dev).
//
// Off by default; while off, a TraceScope costs one relaxed atomic load and
// records nothing. Events carry a phase name ("fwd", "h2d", "nvme_read", ...),
// a category (the subsystem), the thread, a start and a duration in
// nanoseconds of CLOCK_MONOTONIC, and optional integer arguments (bytes,
// layer). Counters ("loss_scale", "host_bytes") are recorded the same way.
//
// Thread-safe: any thread may record while another writes the file.
//
//   TraceRecorder trace;
//   trace.start();
//   { TraceScope s(&trace, "optimizer", "cpu_adam"); step(); }
//   STRATA_RETURN_IF_ERROR(trace.write_chrome_json("run.trace.json"));
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"

namespace strata {

int64_t monotonic_ns();

struct TraceEvent {
  std::string name;
  std::string category;
  char phase;  // 'X' complete event, 'C' counter
  int64_t start_ns;
  int64_t duration_ns;
  uint32_t thread_id;
  std::vector<std::pair<std::string, int64_t>> args;
};

class TraceRecorder {
 public:
  void start() { enabled_.store(true, std::memory_order_relaxed); }
  void stop() { enabled_.store(false, std::memory_order_relaxed); }
  bool enabled() const { return enabled_.load(std::memory_order_relaxed); }

  void record(std::string_view name, std::string_view category, int64_t start_ns,
              int64_t duration_ns, std::vector<std::pair<std::string, int64_t>> args = {});
  void counter(std::string_view name, int64_t value);

  std::vector<TraceEvent> snapshot() const;
  size_t size() const;
  // Writes {"traceEvents": [...]} atomically (temp file + rename).
  absl::Status write_chrome_json(const std::string& path) const;

 private:
  std::atomic<bool> enabled_{false};
  mutable std::mutex mu_;
  std::vector<TraceEvent> events_;
};

// Records one complete event covering its own lifetime. `recorder` may be null.
class TraceScope {
 public:
  TraceScope(TraceRecorder* recorder, std::string_view name, std::string_view category)
      : recorder_(recorder != nullptr && recorder->enabled() ? recorder : nullptr),
        name_(name),
        category_(category),
        start_ns_(recorder_ != nullptr ? monotonic_ns() : 0) {}
  ~TraceScope() {
    if (recorder_ != nullptr) {
      recorder_->record(name_, category_, start_ns_, monotonic_ns() - start_ns_, std::move(args_));
    }
  }
  void arg(std::string_view key, int64_t value) {
    if (recorder_ != nullptr) args_.emplace_back(std::string(key), value);
  }
  TraceScope(const TraceScope&) = delete;
  TraceScope& operator=(const TraceScope&) = delete;

 private:
  TraceRecorder* recorder_;
  std::string_view name_;
  std::string_view category_;
  int64_t start_ns_;
  std::vector<std::pair<std::string, int64_t>> args_;
};

}  // namespace strata
