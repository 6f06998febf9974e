// stratad: serves OffloadOptimizer sessions to client processes over a Unix
// socket (daemon/server.h). Foreground; logs to stderr; SIGTERM or SIGINT
// stop it cleanly (steps in flight aborted, the socket removed).
#include <signal.h>

#include <cstdio>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_split.h"
#include "core/build_info.h"
#include "core/log.h"
#include "core/parse.h"
#include "daemon/server.h"

int main(int argc, char** argv) {
  CLI::App app{"stratad: the strata daemon (host tier, optimizer threads, crash-safe sessions)"};
  app.set_version_flag("--version", std::string(strata::build_info().version));
  std::string socket_path, host_mem, session_quota, nvme, log_level, state_dir;
  double roofline = 0;
  int threads = 0;
  app.add_option("--socket", socket_path,
                 "Unix socket (default: $XDG_RUNTIME_DIR/strata/stratad.sock, else "
                 "/run/strata/stratad.sock)");
  app.add_option("--host-mem", host_mem,
                 "host memory for all sessions, e.g. 64G (default: MemAvailable at start)");
  app.add_option("--session-quota", session_quota,
                 "host memory one session may take, e.g. 16G (default: no limit but --host-mem)");
  app.add_option("--roofline", roofline,
                 "the host's Adam-like memory stream in GB/s that `strata top` compares each "
                 "session's optimizer with (default: measured at start; -1: not shown)");
  app.add_option("--nvme-path", nvme, "NVMe swap directories, comma separated");
  app.add_option("--threads", threads, "optimizer threads shared by all sessions (0: all cores)")
      ->check(CLI::Range(0, 4096));
  app.add_option("--state-dir", state_dir,
                 "save sessions here on SIGTERM / SIGINT and offer them again on start "
                 "(default: sessions end with stratad)");
  app.add_option("--log-level", log_level,
                 "trace|debug|info|warn|error|off (default: $STRATA_LOG or info)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return e.get_exit_code() == 0 ? rc : 2;
  }
  if (absl::Status s = strata::log::init_logging(log_level); !s.ok()) {
    std::fprintf(stderr, "stratad: error: --log-level: %s\n", std::string(s.message()).c_str());
    return 2;
  }
  strata::daemon::ServerOptions o;
  o.socket_path = socket_path;
  o.threads = threads;
  o.state_dir = state_dir;
  if (!host_mem.empty()) {
    auto bytes = strata::parse_byte_size(host_mem, "--host-mem");
    if (!bytes.ok()) {
      std::fprintf(stderr, "stratad: error: %s\n", std::string(bytes.status().message()).c_str());
      return 2;
    }
    o.host_mem_bytes = *bytes;
  }
  if (!session_quota.empty()) {
    auto bytes = strata::parse_byte_size(session_quota, "--session-quota");
    if (!bytes.ok()) {
      std::fprintf(stderr, "stratad: error: %s\n", std::string(bytes.status().message()).c_str());
      return 2;
    }
    o.session_quota_bytes = *bytes;
  }
  o.roofline_gb_per_s = roofline;
  if (!nvme.empty()) {
    for (auto p : absl::StrSplit(nvme, ',', absl::SkipEmpty())) o.nvme_paths.emplace_back(p);
  }
  // The signals are taken by sigwait below, never by a handler: block them
  // before any thread starts so every thread inherits the mask.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  auto server = strata::daemon::Server::start(std::move(o));
  if (!server.ok()) {
    std::fprintf(stderr, "stratad: error: %s\n", std::string(server.status().message()).c_str());
    return 1;
  }
  int sig = 0;
  sigwait(&stop_signals, &sig);
  strata::log::get("daemon")->info("signal {}: stopping", sig);
  (*server)->stop();
  return 0;
}
