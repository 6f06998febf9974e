#include "daemon/fair_scheduler.h"

#include <algorithm>

namespace strata::daemon {

FairScheduler::SessionId FairScheduler::add_session() {
  std::lock_guard<std::mutex> lock(mu_);
  const SessionId id = next_id_++;
  Queue& q = queues_[id];
  q.vtime = least_active_vtime_locked(id).value_or(0);
  return id;
}

void FairScheduler::remove_session(SessionId id) {
  std::lock_guard<std::mutex> lock(mu_);
  queues_.erase(id);
  dispatch_locked();
  cv_.notify_all();
}

std::optional<uint64_t> FairScheduler::least_active_vtime_locked(SessionId except) const {
  std::optional<uint64_t> least;
  for (const auto& [id, q] : queues_) {
    if (id == except || (q.jobs.empty() && id != running_id_)) continue;
    least = least ? std::min(*least, q.vtime) : q.vtime;
  }
  return least;
}

absl::Status FairScheduler::run(SessionId id, uint64_t cost_bytes,
                                const std::function<absl::Status()>& job, bool more_soon) {
  Ticket ticket{.cost = std::max<uint64_t>(cost_bytes, 1)};
  {
    std::unique_lock<std::mutex> lock(mu_);
    auto it = queues_.find(id);
    if (it == queues_.end()) return absl::CancelledError("the session left the optimizer pool");
    Queue& q = it->second;
    const Clock::time_point now = Clock::now();
    const bool anticipated = q.last_done && now - *q.last_done < anticipation_;
    if (q.last_done && q.jobs.empty() && id != running_id_) {
      const double think = std::chrono::duration<double>(now - *q.last_done).count();
      q.think_ewma_s = 0.8 * q.think_ewma_s + 0.2 * think;
    }
    if (q.jobs.empty() && id != running_id_ && !anticipated) {
      // Back from idle: no credit for the time away.
      q.vtime = std::max(q.vtime, least_active_vtime_locked(id).value_or(q.vtime));
    }
    q.jobs.push_back(&ticket);
    dispatch_locked();
    while (!ticket.granted && queues_.contains(id)) {
      if (wake_at_) {
        if (cv_.wait_until(lock, *wake_at_) == std::cv_status::timeout) dispatch_locked();
      } else {
        cv_.wait(lock);
      }
    }
    if (!ticket.granted) return absl::CancelledError("the session left the optimizer pool");
  }
  absl::Status s = job();
  {
    std::lock_guard<std::mutex> lock(mu_);
    running_id_ = 0;
    if (auto it = queues_.find(id); it != queues_.end()) {
      if (more_soon) {
        it->second.last_done = Clock::now();
      } else {
        it->second.last_done.reset();  // nothing to anticipate, nor a think time to measure
      }
    }
    dispatch_locked();
  }
  return s;
}

void FairScheduler::dispatch_locked() {
  if (running_id_ != 0) return;
  wake_at_.reset();
  Queue* best = nullptr;
  SessionId best_id = 0;
  for (auto& [id, q] : queues_) {
    if (!q.jobs.empty() && (best == nullptr || q.vtime < best->vtime)) {
      best = &q;
      best_id = id;
    }
  }
  if (best == nullptr) return;
  // A session owed the pool more than `best` whose job just ended is
  // likely to submit its next one within the anticipation: wait for it.
  const Clock::time_point now = Clock::now();
  for (const auto& [id, q] : queues_) {
    if (!q.jobs.empty() || !q.last_done || q.vtime >= best->vtime) continue;
    if (q.think_ewma_s > std::chrono::duration<double>(anticipation_).count() / 4) continue;
    const Clock::time_point until = *q.last_done + anticipation_;
    if (until > now) wake_at_ = wake_at_ ? std::min(*wake_at_, until) : until;
  }
  if (wake_at_) {
    // Waiters may sleep without a deadline: wake them to take this one.
    cv_.notify_all();
    return;
  }
  Ticket* head = best->jobs.front();
  best->jobs.pop_front();
  best->vtime += head->cost;
  best->charged += head->cost;
  head->granted = true;
  running_id_ = best_id;
  cv_.notify_all();
}

int FairScheduler::active_sessions() const {
  std::lock_guard<std::mutex> lock(mu_);
  int n = 0;
  for (const auto& [id, q] : queues_) n += !q.jobs.empty() || id == running_id_ ? 1 : 0;
  return n;
}

int FairScheduler::session_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int>(queues_.size());
}

int FairScheduler::queued_jobs(SessionId id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = queues_.find(id);
  return it == queues_.end() ? 0 : static_cast<int>(it->second.jobs.size());
}

uint64_t FairScheduler::charged_bytes(SessionId id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = queues_.find(id);
  return it == queues_.end() ? 0 : it->second.charged;
}

}  // namespace strata::daemon
