#include "tools/loss_plot.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/status.h"

extern char** environ;

namespace strata::tools {
namespace {

// A gnuplot single-quoted string: '' stands for one quote.
std::string quoted(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("''") : std::string(1, c);
  return out + "'";
}

std::string script(const LossCurve& c, const std::string& png_path) {
  std::string s = absl::StrFormat(
      // pngcairo draws better; gnuplot builds without cairo have png.
      "if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) {\n"
      "  set terminal pngcairo size %d,%d noenhanced\n"
      "} else {\n"
      "  set terminal png size %d,%d noenhanced\n"
      "}\n"
      "set output %s\n"
      "set title %s noenhanced\n"
      "set xlabel 'step'\nset ylabel 'loss (nats per token)'\n"
      "set grid\nset key top right\n",
      kLossPlotWidth, kLossPlotHeight, kLossPlotWidth, kLossPlotHeight, quoted(png_path),
      quoted(c.title));
  std::vector<std::string> plots;
  if (!c.train.empty()) plots.push_back("'-' using 1:2 with lines lw 2 title 'train loss'");
  if (!c.val.empty()) {
    plots.push_back("'-' using 1:2 with linespoints pt 7 ps 1.2 title 'validation loss'");
  }
  s += "plot " + absl::StrJoin(plots, ", ") + "\n";
  for (const auto* series : {&c.train, &c.val}) {
    if (series->empty()) continue;
    for (const auto& [step, loss] : *series) {
      // gnuplot reads "NaN" as a missing point; inf would wreck the axis.
      s += absl::StrFormat("%lld %.9g\n", static_cast<long long>(step),
                           std::isfinite(loss) ? loss : NAN);
    }
    s += "e\n";
  }
  return s;
}

}  // namespace

absl::StatusOr<std::string> prepare_loss_plot(const std::string& png_path) {
  const std::filesystem::path folder = std::filesystem::path(png_path).parent_path();
  const std::string dir = folder.empty() ? std::string(".") : folder.string();
  if (::access(dir.c_str(), W_OK) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("--plot ", png_path, ": cannot write into ", dir, " (", std::strerror(errno),
                     "); create the folder or choose another path"));
  }
  const char* path = std::getenv("PATH");
  for (const absl::string_view dir : absl::StrSplit(path != nullptr ? path : "", ':')) {
    if (dir.empty()) continue;
    const std::string candidate = absl::StrCat(dir, "/gnuplot");
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return absl::FailedPreconditionError(
      "--plot draws the loss curve with gnuplot, which is not installed (no gnuplot on PATH); "
      "install it (Debian/Ubuntu: apt-get install gnuplot-nox) or drop --plot");
}

absl::Status write_loss_plot(const std::string& gnuplot, const LossCurve& curve,
                             const std::string& png_path) {
  if (curve.train.empty() && curve.val.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("--plot ", png_path, ": no loss to draw (no step ran)"));
  }
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return errno_status(errno, "--plot: cannot create a pipe");
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[0], STDIN_FILENO);
  char* argv[] = {const_cast<char*>(gnuplot.c_str()), nullptr};
  pid_t pid = -1;
  const int rc = ::posix_spawn(&pid, gnuplot.c_str(), &actions, nullptr, argv, environ);
  posix_spawn_file_actions_destroy(&actions);
  ::close(fds[0]);
  if (rc != 0) {
    ::close(fds[1]);
    return errno_status(rc, absl::StrCat("--plot: cannot run ", gnuplot));
  }
  // gnuplot exiting early must not kill us with SIGPIPE: write errors are
  // reported through its exit status instead.
  struct sigaction ignore = {}, previous = {};
  ignore.sa_handler = SIG_IGN;
  ::sigaction(SIGPIPE, &ignore, &previous);
  const std::string text = script(curve, png_path);
  for (size_t off = 0; off < text.size();) {
    const ssize_t n = ::write(fds[1], text.data() + off, text.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    off += static_cast<size_t>(n);
  }
  ::close(fds[1]);
  ::sigaction(SIGPIPE, &previous, nullptr);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::InternalError(
        absl::StrCat("--plot ", png_path, ": ", gnuplot, " failed (",
                     WIFEXITED(status) ? absl::StrCat("exit ", WEXITSTATUS(status))
                                       : absl::StrCat("signal ", WTERMSIG(status)),
                     "); its message is above; check that the folder is writable"));
  }
  return absl::OkStatus();
}

}  // namespace strata::tools
