#include "model/stop_signals.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>

namespace strata::model {
namespace {

// Shared with the handler: lock-free atomics are async-signal-safe.
std::atomic<Trainer*> g_trainer{nullptr};
std::atomic<int> g_received{0};
std::atomic<bool> g_alive{false};
static_assert(std::atomic<Trainer*>::is_always_lock_free && std::atomic<int>::is_always_lock_free);

struct sigaction g_previous_int, g_previous_term, g_previous_pipe;

extern "C" void on_stop_signal(int sig) {
  const int saved_errno = errno;  // the interrupted code may be about to read it
  int none = 0;
  g_received.compare_exchange_strong(none, sig, std::memory_order_relaxed);
  if (Trainer* t = g_trainer.load(std::memory_order_acquire); t != nullptr) t->request_stop();
  // The next one of this kind ends the process (sigaction is async-signal-safe).
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  ::sigaction(sig, &dfl, nullptr);
  errno = saved_errno;
}

void open_if_closed(int fd) {
  if (::fcntl(fd, F_GETFD) != -1 || errno != EBADF) return;
  // open() returns the lowest free descriptor, which is fd here when the
  // ones below it are open (they are: this runs for 0, 1, 2 in order).
  const int got = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  if (got >= 0 && got != fd) ::close(got);
  if (got == fd) ::fcntl(fd, F_SETFD, 0);
}

}  // namespace

StopSignals::StopSignals() {
  if (g_alive.exchange(true)) {
    std::fprintf(stderr, "strata: internal error: two StopSignals at once\n");
    std::abort();
  }
  for (int fd = 0; fd <= 2; ++fd) open_if_closed(fd);
  g_received.store(0);
  g_trainer.store(nullptr);
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;  // blocking I/O in the step resumes
  ::sigaction(SIGINT, &sa, &g_previous_int);
  ::sigaction(SIGTERM, &sa, &g_previous_term);
  struct sigaction ign {};
  ign.sa_handler = SIG_IGN;
  sigemptyset(&ign.sa_mask);
  ::sigaction(SIGPIPE, &ign, &g_previous_pipe);
}

StopSignals::~StopSignals() {
  ::sigaction(SIGINT, &g_previous_int, nullptr);
  ::sigaction(SIGTERM, &g_previous_term, nullptr);
  ::sigaction(SIGPIPE, &g_previous_pipe, nullptr);
  g_trainer.store(nullptr);
  g_alive.store(false);
}

void StopSignals::route_to(Trainer* trainer) {
  g_trainer.store(trainer, std::memory_order_release);
  if (trainer != nullptr && g_received.load() != 0) trainer->request_stop();
}

int StopSignals::received() const { return g_received.load(); }

}  // namespace strata::model
