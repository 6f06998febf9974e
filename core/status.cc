#include "core/status.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace strata {

absl::Status annotate(const absl::Status& status, std::string_view context) {
  if (status.ok() || context.empty()) return status;
  std::string message(context);
  message += ": ";
  message.append(status.message().data(), status.message().size());
  return absl::Status(status.code(), message);
}

absl::Status errno_status(int err, std::string_view what) {
  std::string message(what);
  message += ": ";
  message += std::strerror(err);
  return absl::Status(absl::ErrnoToStatusCode(err), message);
}

namespace internal {
void check_failed(const char* file, int line, const char* expr, const char* message) {
  std::fprintf(stderr, "strata: check failed at %s:%d: %s %s\n", file, line, expr, message);
  std::fflush(stderr);
  std::abort();
}
}  // namespace internal

}  // namespace strata
