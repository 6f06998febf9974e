#include "core/trace.h"

#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cstdio>

#include "core/file_util.h"
#include "nlohmann/json.hpp"

namespace strata {

int64_t monotonic_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

namespace {
uint32_t current_thread_id() {
  thread_local uint32_t tid = static_cast<uint32_t>(syscall(SYS_gettid));
  return tid;
}
}  // namespace

void TraceRecorder::record(std::string_view name, std::string_view category, int64_t start_ns,
                           int64_t duration_ns, std::vector<std::pair<std::string, int64_t>> args) {
  if (!enabled()) return;
  TraceEvent e{std::string(name),   std::string(category), 'X', start_ns, duration_ns,
               current_thread_id(), std::move(args)};
  std::lock_guard lock(mu_);
  events_.push_back(std::move(e));
}

void TraceRecorder::counter(std::string_view name, int64_t value) {
  if (!enabled()) return;
  TraceEvent e{std::string(name),           "counter", 'C', monotonic_ns(), 0, current_thread_id(),
               {{std::string(name), value}}};
  std::lock_guard lock(mu_);
  events_.push_back(std::move(e));
}

std::vector<TraceEvent> TraceRecorder::snapshot() const {
  std::lock_guard lock(mu_);
  return events_;
}

size_t TraceRecorder::size() const {
  std::lock_guard lock(mu_);
  return events_.size();
}

absl::Status TraceRecorder::write_chrome_json(const std::string& path) const {
  nlohmann::json events = nlohmann::json::array();
  const int pid = static_cast<int>(getpid());
  for (const TraceEvent& e : snapshot()) {
    // Chrome trace timestamps are microseconds (fractions allowed).
    nlohmann::json j = {{"name", e.name},
                        {"cat", e.category},
                        {"ph", std::string(1, e.phase)},
                        {"ts", e.start_ns / 1000.0},
                        {"pid", pid},
                        {"tid", e.thread_id}};
    if (e.phase == 'X') j["dur"] = e.duration_ns / 1000.0;
    if (!e.args.empty()) {
      nlohmann::json args = nlohmann::json::object();
      for (const auto& [k, v] : e.args) args[k] = v;
      j["args"] = std::move(args);
    }
    events.push_back(std::move(j));
  }
  nlohmann::json doc = {{"traceEvents", std::move(events)}, {"displayTimeUnit", "ms"}};
  return write_file_atomic(path, doc.dump());
}

}  // namespace strata
