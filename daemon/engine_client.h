// EngineClient: the TrainingEngine's optimizer in stratad (`strata train
// --daemon`). A HostBoundOptimizer (engine/step_optimizer.h) over a
// RemoteOptimizer: the engine registers its layers as the session's spec
// (the resolved ds_config, its one group, one bucket per layer), keeps the
// layers on its device and copies params from, and gradients into, the
// session's arena; every step call is the RemoteOptimizer's.
//
//   engine::EngineOptions eo;
//   eo.remote = daemon::engine_client_factory({.socket_path = sock, .session = "run1"});
//   auto engine = engine::TrainingEngine::create(cfg, model, device, std::move(eo));
//
// A session of that name with the same fingerprint is continued from its
// last completed step (needs_values() false); a new one gets the engine's
// initial values. report_overflow is sent on the socket at the next
// wait_grads or finish_step (the engine stops handing gradients on at once,
// so the daemon learns of it before it decides). Checkpoint directories are
// made absolute before they go to the daemon (its working directory is not
// the client's); save_state_async saves synchronously (the daemon writes
// while the client waits).
//
// Threading: one thread (the engine's). Errors: the RemoteOptimizer's (a
// missing or dead daemon is Unavailable naming the socket, and says how to
// start it).
#pragma once

#include "daemon/remote_optimizer.h"
#include "engine/step_optimizer.h"

namespace strata::daemon {

engine::HostBoundFactory engine_client_factory(RemoteOptions options);

}  // namespace strata::daemon
