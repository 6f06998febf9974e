#include "offload/busy_io_engine.h"

#include <utility>

#include "core/trace.h"

namespace strata::offload {

IoBusyTimes BusyIoEngine::busy() const {
  std::lock_guard lock(mu_);
  const int64_t now = monotonic_ns();
  std::array<int64_t, 3> t = busy_ns_;
  for (int i = 0; i < 3; ++i) {
    if (in_flight_[i] > 0) t[i] += now - since_ns_[i];
  }
  return {.read_ns = t[0], .write_ns = t[1], .any_ns = t[kAny]};
}

void BusyIoEngine::begin(swap::IoOp op) {
  std::lock_guard lock(mu_);
  const int64_t now = monotonic_ns();
  for (int i : {static_cast<int>(op), kAny}) {
    if (in_flight_[i]++ == 0) since_ns_[i] = now;
  }
}

void BusyIoEngine::end(swap::IoOp op) {
  std::lock_guard lock(mu_);
  const int64_t now = monotonic_ns();
  for (int i : {static_cast<int>(op), kAny}) {
    if (--in_flight_[i] == 0) busy_ns_[i] += now - since_ns_[i];
  }
}

void BusyIoEngine::end_ticket(swap::Ticket ticket) {
  swap::IoOp op;
  {
    std::lock_guard lock(mu_);
    auto it = tickets_.find(ticket);
    if (it == tickets_.end()) return;
    op = it->second;
    tickets_.erase(it);
  }
  end(op);
}

absl::StatusOr<swap::Ticket> BusyIoEngine::submit(swap::IoRequest request) {
  const swap::IoOp op = request.op;
  const bool detached = static_cast<bool>(request.on_complete);
  if (detached) {
    request.on_complete = [this, op, done = std::move(request.on_complete)](const absl::Status& s) {
      end(op);
      done(s);
    };
  }
  begin(op);
  absl::StatusOr<swap::Ticket> t = inner_->submit(std::move(request));
  if (!t.ok()) {
    end(op);
    return t;
  }
  if (!detached) {
    std::lock_guard lock(mu_);
    tickets_[*t] = op;
  }
  return t;
}

absl::Status BusyIoEngine::wait(swap::Ticket ticket) {
  absl::Status s = inner_->wait(ticket);
  // After the watchdog's DeadlineExceeded the request is still in flight.
  if (!absl::IsDeadlineExceeded(s)) end_ticket(ticket);
  return s;
}

std::optional<absl::Status> BusyIoEngine::poll(swap::Ticket ticket) {
  std::optional<absl::Status> s = inner_->poll(ticket);
  if (s.has_value()) end_ticket(ticket);
  return s;
}

}  // namespace strata::offload
