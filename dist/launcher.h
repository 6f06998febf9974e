// launch_local: `strata train --nproc N` on one machine, the way torchrun
// --standalone does it. Starts N copies of a command, each with
//   RANK=LOCAL_RANK=i, WORLD_SIZE=LOCAL_WORLD_SIZE=N,
//   MASTER_ADDR (127.0.0.1), MASTER_PORT (a free port picked here)
// added to this process's environment, then supervises them:
//   - SIGINT / SIGTERM sent to the launcher are forwarded to every rank;
//   - when a rank exits non-zero or is killed by a signal, the others get
//     SIGTERM, then SIGKILL after `grace`, and the error names that rank
//     (the first to fail) and its exit status or signal.
// Returns OK only when every rank exited 0. A command that cannot be
// executed is a failure of its rank (exit status 127).
//
// Threading: call from one thread; while it runs it owns SIGINT/SIGTERM
// handling (the previous handlers are restored on return). Children are
// killed if the launcher dies (PR_SET_PDEATHSIG).
//
//   dist::LaunchOptions opts;
//   auto st = dist::launch_local(4, {"/proc/self/exe", "train", ...}, opts);
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace strata::dist {

struct LaunchOptions {
  std::string master_addr = "127.0.0.1";
  int master_port = 0;  // 0: a free port on master_addr, picked here
  // How long the other ranks get to exit after SIGTERM before SIGKILL.
  std::chrono::milliseconds grace{std::chrono::seconds(5)};
  // Extra NAME=VALUE entries for every rank's environment.
  std::vector<std::string> extra_env;
};

// `argv[0]` is looked up in PATH when it has no '/'. InvalidArgument for
// nproc < 1 or an empty argv; Aborted naming the rank (and its exit status
// or signal) when a rank fails; Cancelled when the launcher was interrupted
// (SIGINT / SIGTERM) and every rank then exited.
absl::Status launch_local(int nproc, const std::vector<std::string>& argv,
                          const LaunchOptions& options = {});

}  // namespace strata::dist
