// Error handling across strata: two tiers, as in ggml and Abseil.
//
// * Broken invariants (programming errors) stop the process at once with
//   STRATA_CHECK, which is always on (release builds too) and names file and
//   line.
// * Runtime failures (bad config, missing file, full disk, no GPU) travel as
//   absl::Status / absl::StatusOr<T>. STRATA_RETURN_IF_ERROR passes a failure
//   up and may add the caller's context, so the final message reads as a
//   trail: "loading swap file /nvme/x.swp: extent 3 at offset 12288: checksum
//   mismatch".
//
// Syscall layers speak -errno; they convert once, at the boundary, with
// errno_status().
#pragma once

#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace strata {

// Returns `status` with "context: " prepended to its message; OK stays OK.
absl::Status annotate(const absl::Status& status, std::string_view context);

// Converts an errno value (positive, as errno holds it) into a Status whose
// message is "what: strerror(err)".
absl::Status errno_status(int err, std::string_view what);

namespace internal {
[[noreturn]] void check_failed(const char* file, int line, const char* expr, const char* message);
}  // namespace internal

}  // namespace strata

#define STRATA_CHECK(cond)                                                        \
  do {                                                                            \
    if (!(cond)) ::strata::internal::check_failed(__FILE__, __LINE__, #cond, ""); \
  } while (0)

#define STRATA_CHECK_MSG(cond, msg)                                                \
  do {                                                                             \
    if (!(cond)) ::strata::internal::check_failed(__FILE__, __LINE__, #cond, msg); \
  } while (0)

#define STRATA_STATUS_CONCAT_INNER(a, b) a##b
#define STRATA_STATUS_CONCAT(a, b) STRATA_STATUS_CONCAT_INNER(a, b)

// STRATA_RETURN_IF_ERROR(expr) or STRATA_RETURN_IF_ERROR(expr, "context").
#define STRATA_RETURN_IF_ERROR(expr, ...)                                       \
  do {                                                                          \
    ::absl::Status strata_status_ = (expr);                                     \
    if (!strata_status_.ok()) {                                                 \
      return ::strata::annotate(strata_status_, std::string_view{__VA_ARGS__}); \
    }                                                                           \
  } while (0)

// STRATA_ASSIGN_OR_RETURN(auto x, make_x()) or with a trailing context string.
#define STRATA_ASSIGN_OR_RETURN(lhs, expr, ...) \
  STRATA_ASSIGN_OR_RETURN_IMPL(STRATA_STATUS_CONCAT(strata_or_, __LINE__), lhs, expr, __VA_ARGS__)
#define STRATA_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr, ...)                   \
  auto tmp = (expr);                                                        \
  if (!tmp.ok()) {                                                          \
    return ::strata::annotate(tmp.status(), std::string_view{__VA_ARGS__}); \
  }                                                                         \
  lhs = std::move(tmp).value()
