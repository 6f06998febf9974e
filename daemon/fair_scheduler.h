// FairScheduler: fair queueing of optimizer passes across the sessions that
// share one optimizer pool.
//
// An optimizer pass over a bucket is memory-bound and fans out over every
// thread of the pool, so stratad runs one pass per pool at a time and
// chooses whose next: start-time fair queueing in bytes. Each session has a
// virtual time (the bytes of work it was granted); the queued job of the
// session with the least runs next and adds its cost. Under contention each
// session therefore gets the same bytes of optimizer work, whatever the size
// of its buckets; a session alone runs at once.
//
// A session's jobs come from one connection thread, one at a time, so when
// its pass ends its next one is not queued yet. The scheduler anticipates
// it (Iyer and Druschel's anticipatory scheduling): when a session whose
// job just finished is owed the pool (the least virtual time), the pool
// waits up to `anticipation` for its next job before granting another
// session. Without this, sequential submitters would simply alternate,
// which is fair in jobs, not bytes. Only a session that usually submits
// again quickly is waited for (its mean think time, the gap from a job's
// end to its next submission, under a quarter of the anticipation), so a
// session that is slow to come back (its client still in backward) costs
// the pool no idle time. A session that comes back from idle
// starts at the least virtual time of those active, so idling banks no
// credit.
//
//   FairScheduler sched;
//   auto id = sched.add_session();                 // at attach
//   sched.run(id, bucket_bytes, [&] { return opt->grad_ready(b); });
//   sched.remove_session(id);                       // the session ends
//
// Threading: every method from any thread; run() blocks its caller until
// the job's turn, runs the job on the caller's thread (the job uses the
// pool) and returns its Status. Jobs of one session run in submission order.
// A job never waits on another session's job, so turns cannot deadlock.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <optional>

#include "absl/status/status.h"

namespace strata::daemon {

class FairScheduler {
 public:
  using Clock = std::chrono::steady_clock;
  explicit FairScheduler(Clock::duration anticipation = std::chrono::milliseconds(3))
      : anticipation_(anticipation) {}

  using SessionId = uint64_t;
  SessionId add_session();
  // Jobs of the session still queued fail with Cancelled.
  void remove_session(SessionId id);

  // more_soon false: the session will not submit again right away (its
  // step is over), so the pool does not wait for it.
  absl::Status run(SessionId id, uint64_t cost_bytes, const std::function<absl::Status()>& job,
                   bool more_soon = true);

  // Sessions with a job queued or running, every session, and per session
  // its queued jobs and the bytes it was granted so far.
  int active_sessions() const;
  int session_count() const;
  int queued_jobs(SessionId id) const;
  uint64_t charged_bytes(SessionId id) const;

 private:
  struct Ticket {
    uint64_t cost = 0;
    bool granted = false;
  };
  struct Queue {
    std::deque<Ticket*> jobs;
    uint64_t vtime = 0;  // bytes granted, clamped up when coming back from idle
    uint64_t charged = 0;
    std::optional<Clock::time_point> last_done;  // its last job's end
    double think_ewma_s = 0;                     // mean gap from a job's end to the next submission
  };
  // Grants the next job when none runs; may instead anticipate a session
  // (sets wake_at_: waiters come back then).
  void dispatch_locked();
  std::optional<uint64_t> least_active_vtime_locked(SessionId except) const;

  const Clock::duration anticipation_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<SessionId, Queue> queues_;
  SessionId next_id_ = 1;
  SessionId running_id_ = 0;  // 0: no job runs
  std::optional<Clock::time_point> wake_at_;
};

}  // namespace strata::daemon
