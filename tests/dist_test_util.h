// Forked ranks for the dist tests: each rank is its own process (so a rank
// can _exit() mid-job, as a crashed trainer would), reporting its Status
// back through a pipe.
#pragma once

#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "dist/communicator.h"
#include "dist/net.h"

namespace strata::dist::testing {

inline RankInfo loopback_rank(int rank, int world, int port) {
  RankInfo info;
  info.rank = rank;
  info.world_size = world;
  info.local_rank = rank;
  info.local_world_size = world;
  info.master_addr = "127.0.0.1";
  info.master_port = port;
  return info;
}

// Runs fn(rank) in `world` child processes and returns each rank's Status;
// a rank that exits without reporting gets Internal naming how it ended.
// Children still running after `limit` are killed (DeadlineExceeded).
inline std::vector<absl::Status> run_ranks(int world, const std::function<absl::Status(int)>& fn,
                                           std::chrono::seconds limit = std::chrono::seconds(30)) {
  std::vector<pid_t> pids(world, -1);
  std::vector<int> pipes(world, -1);
  for (int r = 0; r < world; ++r) {
    int fds[2];
    if (pipe(fds) != 0) std::abort();
    pid_t pid = fork();
    if (pid == 0) {
      close(fds[0]);
      absl::Status s = fn(r);
      std::string out = absl::StrCat(static_cast<int>(s.code()), "\n", s.message());
      size_t off = 0;
      while (off < out.size()) {
        ssize_t n = write(fds[1], out.data() + off, out.size() - off);
        if (n <= 0) break;
        off += static_cast<size_t>(n);
      }
      _exit(0);
    }
    close(fds[1]);
    pids[r] = pid;
    pipes[r] = fds[0];
  }
  std::vector<absl::Status> result(world);
  const auto deadline = std::chrono::steady_clock::now() + limit;
  for (int r = 0; r < world; ++r) {
    std::string msg;
    char buf[4096];
    for (;;) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      pollfd p{pipes[r], POLLIN, 0};
      int rc = poll(&p, 1, left.count() > 0 ? static_cast<int>(left.count()) : 0);
      if (rc <= 0) break;
      ssize_t n = read(pipes[r], buf, sizeof(buf));
      if (n <= 0) break;
      msg.append(buf, static_cast<size_t>(n));
    }
    close(pipes[r]);
    int status = 0;
    // The pipe closed (or the limit passed): the child is exiting, or stuck.
    bool exited = false;
    for (int i = 0; i < 2000 && !exited; ++i) {
      exited = waitpid(pids[r], &status, WNOHANG) != 0;
      if (!exited) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    if (!exited) {
      kill(pids[r], SIGKILL);
      waitpid(pids[r], &status, 0);
      result[r] = absl::DeadlineExceededError(absl::StrCat("rank ", r, " still running"));
      continue;
    }
    auto nl = msg.find('\n');
    if (nl == std::string::npos) {
      result[r] = absl::InternalError(absl::StrCat(
          "rank ", r, " reported nothing; wait status ", status,
          WIFSIGNALED(status) ? absl::StrCat(" signal ", WTERMSIG(status)) : std::string()));
      continue;
    }
    result[r] = absl::Status(static_cast<absl::StatusCode>(std::stoi(msg.substr(0, nl))),
                             msg.substr(nl + 1));
  }
  return result;
}

}  // namespace strata::dist::testing
