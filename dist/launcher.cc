#include "dist/launcher.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "dist/net.h"

extern char** environ;

namespace strata::dist {
namespace {

volatile std::sig_atomic_t g_pending_signal = 0;

void on_signal(int sig) { g_pending_signal = sig; }

// Installs on_signal for SIGINT and SIGTERM; restores the old handlers on
// destruction.
class SignalForwarding {
 public:
  SignalForwarding() {
    g_pending_signal = 0;
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int_);
    sigaction(SIGTERM, &sa, &old_term_);
  }
  ~SignalForwarding() {
    sigaction(SIGINT, &old_int_, nullptr);
    sigaction(SIGTERM, &old_term_, nullptr);
  }

 private:
  struct sigaction old_int_ {};
  struct sigaction old_term_ {};
};

std::string describe_exit(int status) {
  if (WIFEXITED(status)) return absl::StrCat("exited with status ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    const char* name = strsignal(WTERMSIG(status));
    return absl::StrCat("was killed by signal ", WTERMSIG(status), " (",
                        name != nullptr ? name : "?", ")");
  }
  return absl::StrCat("ended with wait status ", status);
}

struct Child {
  pid_t pid = -1;
  bool running = false;
  int status = 0;
};

}  // namespace

absl::Status launch_local(int nproc, const std::vector<std::string>& argv,
                          const LaunchOptions& options) {
  if (nproc < 1)
    return absl::InvalidArgumentError(absl::StrCat("--nproc ", nproc, " must be >= 1"));
  if (argv.empty()) return absl::InvalidArgumentError("launch_local: no command to run");
  int port = options.master_port;
  if (port == 0) {
    STRATA_ASSIGN_OR_RETURN(port, pick_free_port(options.master_addr),
                            "picking MASTER_PORT for the ranks");
  }

  // Everything the children need is built before fork: after it only
  // async-signal-safe calls are allowed.
  std::vector<std::vector<std::string>> envs(nproc);
  for (int r = 0; r < nproc; ++r) {
    for (char** e = environ; *e != nullptr; ++e) {
      absl::string_view kv(*e);
      auto name = kv.substr(0, kv.find('='));
      if (name == "RANK" || name == "LOCAL_RANK" || name == "WORLD_SIZE" ||
          name == "LOCAL_WORLD_SIZE" || name == "MASTER_ADDR" || name == "MASTER_PORT") {
        continue;
      }
      envs[r].emplace_back(kv);
    }
    envs[r].push_back(absl::StrCat("RANK=", r));
    envs[r].push_back(absl::StrCat("LOCAL_RANK=", r));
    envs[r].push_back(absl::StrCat("WORLD_SIZE=", nproc));
    envs[r].push_back(absl::StrCat("LOCAL_WORLD_SIZE=", nproc));
    envs[r].push_back(absl::StrCat("MASTER_ADDR=", options.master_addr));
    envs[r].push_back(absl::StrCat("MASTER_PORT=", port));
    for (const auto& e : options.extra_env) envs[r].push_back(e);
  }
  std::vector<std::vector<char*>> envps(nproc);
  for (int r = 0; r < nproc; ++r) {
    for (auto& e : envs[r]) envps[r].push_back(e.data());
    envps[r].push_back(nullptr);
  }
  std::vector<std::string> args = argv;
  std::vector<char*> argp;
  for (auto& a : args) argp.push_back(a.data());
  argp.push_back(nullptr);

  SignalForwarding forwarding;
  const pid_t parent = getpid();
  std::vector<Child> children(nproc);
  auto kill_all = [&](int sig) {
    for (const auto& c : children) {
      if (c.running) kill(c.pid, sig);
    }
  };
  // SIGINT / SIGTERM stay blocked across fork: one arriving before a child
  // has reset its handlers would otherwise run on_signal in the child and be
  // lost there. The child unblocks after the reset (then it acts), the
  // parent after the loop (then on_signal records it).
  sigset_t term_signals, old_mask;
  sigemptyset(&term_signals);
  sigaddset(&term_signals, SIGINT);
  sigaddset(&term_signals, SIGTERM);
  sigprocmask(SIG_BLOCK, &term_signals, &old_mask);
  for (int r = 0; r < nproc; ++r) {
    pid_t pid = fork();
    if (pid < 0) {
      const int err = errno;
      sigprocmask(SIG_SETMASK, &old_mask, nullptr);
      kill_all(SIGKILL);
      for (auto& c : children) {
        if (c.running) waitpid(c.pid, &c.status, 0);
      }
      return errno_status(err, absl::StrCat("fork for rank ", r));
    }
    if (pid == 0) {
      // The child: die with the launcher, default signal state, then exec.
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(127);
      signal(SIGINT, SIG_DFL);
      signal(SIGTERM, SIG_DFL);
      sigset_t none;
      sigemptyset(&none);
      sigprocmask(SIG_SETMASK, &none, nullptr);
      execvpe(argp[0], argp.data(), envps[r].data());
      _exit(127);
    }
    children[r] = Child{pid, true, 0};
  }
  sigprocmask(SIG_SETMASK, &old_mask, nullptr);

  int running = nproc;
  int first_failed = -1;
  int forwarded = 0;
  bool killed = false;
  Clock::time_point kill_at = Clock::time_point::max();
  while (running > 0) {
    if (g_pending_signal != 0) {
      forwarded = g_pending_signal;
      g_pending_signal = 0;
      kill_all(forwarded);
      if (kill_at == Clock::time_point::max()) kill_at = Clock::now() + options.grace;
    }
    bool reaped = false;
    // Each rank by pid: never reap a child this process started elsewhere.
    for (int r = 0; r < nproc; ++r) {
      Child& c = children[r];
      if (!c.running) continue;
      int status = 0;
      pid_t pid = waitpid(c.pid, &status, WNOHANG);
      if (pid == 0 || (pid < 0 && errno == EINTR)) continue;
      c.running = false;
      c.status = pid > 0 ? status : 0;
      --running;
      reaped = true;
      const bool ok = pid > 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0;
      if (!ok && first_failed < 0 && forwarded == 0) {
        first_failed = r;
        kill_all(SIGTERM);
        kill_at = Clock::now() + options.grace;
      }
    }
    if (reaped) continue;
    if (!killed && Clock::now() >= kill_at) {
      kill_all(SIGKILL);
      killed = true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }

  if (first_failed >= 0) {
    const Child& c = children[first_failed];
    std::string msg =
        absl::StrCat("rank ", first_failed, " (pid ", c.pid, ") ", describe_exit(c.status));
    if (WIFEXITED(c.status) && WEXITSTATUS(c.status) == 127) {
      absl::StrAppend(&msg, " (could the command '", argv[0], "' be executed?)");
    }
    absl::StrAppend(&msg, "; the other ranks were stopped");
    return absl::AbortedError(msg);
  }
  if (forwarded != 0) {
    return absl::CancelledError(absl::StrCat("interrupted by signal ", forwarded, " (",
                                             strsignal(forwarded), "), forwarded to every rank"));
  }
  return absl::OkStatus();
}

}  // namespace strata::dist
