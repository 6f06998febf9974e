// strata top [--socket PATH] [--json] [--end-session NAME]: what stratad is
// serving; --end-session ends an idle session and exits. --json
// prints one object (stratad's stats: a `sessions` array with name, pid,
// step, optimizer GB/s and its ratio to the roofline, NVMe read/write GB/s,
// arena used/total, queue depths, ...; a `jobs` array summing the sessions
// of each data-parallel job, NAME.rank<r>: sessions, host bytes, the lowest
// and highest step) on stdout and exits; otherwise a
// table on stderr, refreshed every second (steps/s from the change since
// the last refresh; the rates are those of each session's last step) until
// Ctrl-C.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <map>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "core/format_bytes.h"
#include "daemon/protocol.h"
#include "daemon/remote_optimizer.h"
#include "tools/cli_util.h"
#include "tools/commands.h"

namespace strata::tools {
namespace {

void print_table(const nlohmann::json& stats, std::map<std::string, int64_t>* last_steps,
                 double seconds) {
  std::fprintf(stderr, "\033[H\033[2J");
  const double roofline = stats.value("roofline_gb_per_s", 0.0);
  std::fprintf(stderr, "stratad pid %d on %s   host memory %s used of %s   roofline %s\n",
               stats.value("daemon_pid", 0), stats.value("socket", std::string()).c_str(),
               format_bytes(stats.value("host_mem_used_bytes", 0.0)).c_str(),
               format_bytes(stats.value("host_mem_total_bytes", 0.0)).c_str(),
               roofline > 0 ? (std::to_string(roofline).substr(0, 5) + " GB/s").c_str() : "-");
  for (const auto& p : stats.value("pools", nlohmann::json::array())) {
    std::fprintf(stderr, "pool on NUMA node %d: %d threads, %d sessions, %d busy\n",
                 p.value("numa_node", 0), p.value("threads", 0), p.value("sessions", 0),
                 p.value("active_sessions", 0));
  }
  std::fprintf(stderr, "\n%-20s %8s %8s %7s %8s %8s %6s %9s %9s %21s %6s\n", "SESSION", "PID",
               "STEP", "STEPS/S", "STATE", "OPT GB/S", "ROOF", "NVME RD/S", "NVME WR/S",
               "ARENA USED/TOTAL", "QUEUE");
  for (const auto& s : stats.value("sessions", nlohmann::json::array())) {
    const std::string name = s.value("name", std::string());
    const int64_t step = s.value("step", int64_t{0});
    double rate = 0;
    if (auto it = last_steps->find(name); it != last_steps->end() && seconds > 0) {
      rate = double(step - it->second) / seconds;
    }
    (*last_steps)[name] = step;
    const std::string arena = format_bytes(s.value("arena_used_bytes", 0.0)) + " / " +
                              format_bytes(s.value("arena_total_bytes", 0.0));
    // Queue: the client's grad_ready entries not yet taken + bucket jobs
    // waiting for their turn in the pool.
    const std::string queue =
        std::to_string(s.value("ring_depth", 0)) + "+" + std::to_string(s.value("queued_jobs", 0));
    std::fprintf(stderr, "%-20s %8d %8lld %7.2f %8s %8.2f %5.0f%% %9.2f %9.2f %21s %6s\n",
                 name.c_str(), s.value("pid", 0), static_cast<long long>(step), rate,
                 !s.value("attached", false) ? "detached"
                 : s.value("in_step", false) ? "step"
                                             : "idle",
                 s.value("optimizer_gb_per_s", 0.0), 100 * s.value("roofline_ratio", 0.0),
                 s.value("nvme_read_gb_per_s", 0.0), s.value("nvme_write_gb_per_s", 0.0),
                 arena.c_str(), queue.c_str());
  }
  const nlohmann::json jobs = stats.value("jobs", nlohmann::json::array());
  if (!jobs.empty()) std::fprintf(stderr, "\n%-20s %8s %12s %s\n", "JOB", "RANKS", "HOST", "STEPS");
  for (const auto& j : jobs) {
    const int64_t lo = j.value("min_step", int64_t{0}), hi = j.value("max_step", int64_t{0});
    const std::string steps =
        lo == hi ? absl::StrCat(lo) : absl::StrCat(lo, "..", hi, " (a rank's session is behind)");
    std::fprintf(stderr, "%-20s %8d %12s %s\n", j.value("name", std::string()).c_str(),
                 j.value("sessions", 0), format_bytes(j.value("host_bytes", 0.0)).c_str(),
                 steps.c_str());
  }
}

int run_top(const std::string& socket_path, bool json, const std::string& end_session) {
  const std::string path = socket_path.empty() ? daemon::default_socket_path() : socket_path;
  if (!end_session.empty()) {
    if (absl::Status s = daemon::RemoteOptimizer::end_session(path, end_session); !s.ok()) {
      return report_status(s);
    }
    std::fprintf(stderr, "strata top: session %s ended; stratad freed its memory\n",
                 end_session.c_str());
    return 0;
  }
  if (json) {
    auto stats = daemon::RemoteOptimizer::stats(path);
    if (!stats.ok()) return report_status(stats.status());
    print_json(*stats);
    return 0;
  }
  std::map<std::string, int64_t> last_steps;
  auto last = std::chrono::steady_clock::now();
  for (;;) {
    auto stats = daemon::RemoteOptimizer::stats(path);
    if (!stats.ok()) return report_status(stats.status());
    const auto now = std::chrono::steady_clock::now();
    print_table(*stats, &last_steps, std::chrono::duration<double>(now - last).count());
    last = now;
    std::this_thread::sleep_for(std::chrono::seconds(1));
  }
}

}  // namespace

void add_top_command(CLI::App& app, int* exit_code) {
  CLI::App* cmd = app.add_subcommand("top", "Show stratad's sessions (refreshed every second)");
  auto socket_path = std::make_shared<std::string>();
  auto json = std::make_shared<bool>(false);
  auto end_session = std::make_shared<std::string>();
  cmd->add_option("--socket", *socket_path,
                  "stratad's socket (default: $XDG_RUNTIME_DIR/strata/stratad.sock, else "
                  "/run/strata/stratad.sock)");
  cmd->add_flag("--json", *json, "print one JSON object with a `sessions` array and exit");
  cmd->add_option("--end-session", *end_session,
                  "end the named session (no client attached), freeing its host memory and "
                  "swap, and exit");
  cmd->callback([=] { *exit_code = run_top(*socket_path, *json, *end_session); });
}

}  // namespace strata::tools
