// StopSignals: what a long training process does about the signals and
// closed streams that end it from outside. While one is alive:
//  - SIGINT (Ctrl-C) and SIGTERM (batch schedulers, `docker stop`) request
//    a stop of the Trainer routed to (the step in flight finishes, the run
//    saves and ends); a second one of the same kind ends the process at
//    once (the default action is restored by the first);
//  - SIGPIPE is ignored: a reader that went away (`strata train 2>&1 |
//    head -1`) makes writes fail with EPIPE, which the run ignores, instead
//    of killing it;
//  - descriptors 0, 1 and 2, when closed at start, are opened on /dev/null,
//    so no file the run opens later takes their number and receives its
//    progress text.
// The previous dispositions are restored by the destructor.
//
// Threading: one StopSignals per process at a time (a broken invariant,
// checked); construct, route_to and destroy on one thread. route_to's
// trainer must stay alive until route_to(nullptr) or the destructor.
//
//   model::StopSignals signals;
//   ... build the engine and the trainer ...
//   signals.route_to(trainer.get());
//   model::TrainerResult r = trainer->run();
//   if (r.stopped) return 128 + signals.received();  // 130 / 143
#pragma once

#include "model/trainer.h"

namespace strata::model {

class StopSignals {
 public:
  StopSignals();
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

  // Stop requests go to `trainer` (null: only recorded); a signal received
  // before this call is delivered to it at once.
  void route_to(Trainer* trainer);
  // The first SIGINT or SIGTERM received while alive; 0 when none.
  int received() const;
};

}  // namespace strata::model
