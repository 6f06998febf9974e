#include "swap/io_engine.h"

#include <liburing.h>
#include <sys/utsname.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/log.h"
#include "swap/thread_engine.h"
#include "swap/uring_engine.h"

namespace strata::swap {

int io_uring_setup_errno() {
  io_uring ring;
  int rc = io_uring_queue_init(2, &ring, 0);
  if (rc < 0) return rc;
  io_uring_queue_exit(&ring);
  return 0;
}

absl::StatusOr<std::unique_ptr<IoEngine>> make_io_engine(const IoEngineOptions& options) {
  if (absl::Status s = validate(options); !s.ok()) return s;
  std::string reason;
  if (options.kind == IoEngineKind::kThreads) {
    auto engine = make_thread_engine(options);
    engine->set_selection_reason("thread engine requested (engine=threads)");
    return engine;
  }
  if (options.kind == IoEngineKind::kUring) {
    auto engine = make_uring_engine(options);
    if (!engine.ok()) return engine.status();
    (*engine)->set_selection_reason("io_uring requested (engine=uring)");
    return engine;
  }
  const int rc = io_uring_setup_errno();
  if (rc == 0) {
    auto engine = make_uring_engine(options);
    if (engine.ok()) {
      struct utsname u;
      std::string kernel = ::uname(&u) == 0 ? std::string(u.release) : "?";
      (*engine)->set_selection_reason(absl::StrCat("io_uring available (kernel ", kernel, ")"));
      return engine;
    }
    reason =
        absl::StrCat("io_uring engine failed to start (", std::string(engine.status().message()),
                     "); using the pread/pwrite thread pool");
  } else {
    const char* why = rc == -ENOSYS   ? "the kernel has no io_uring"
                      : rc == -EPERM  ? "io_uring is blocked (seccomp or io_uring_disabled sysctl)"
                      : rc == -EACCES ? "io_uring is not permitted for this user"
                                      : "io_uring_queue_init failed";
    reason = absl::StrCat(why, " (", std::strerror(-rc), "); using the pread/pwrite thread pool");
  }
  log::get("swap")->warn("{}", reason);
  auto engine = make_thread_engine(options);
  engine->set_selection_reason(reason);
  return engine;
}

}  // namespace strata::swap
