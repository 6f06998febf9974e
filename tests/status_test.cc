#include "core/status.h"

#include <cerrno>

#include "gtest/gtest.h"

namespace strata {
namespace {

absl::StatusOr<int> parse_positive(int v) {
  if (v <= 0) return absl::InvalidArgumentError("value must be positive");
  return v;
}

absl::Status use(int v) {
  STRATA_ASSIGN_OR_RETURN(int x, parse_positive(v), "reading \"zero_optimization.stage\"");
  STRATA_RETURN_IF_ERROR(x > 3 ? absl::OutOfRangeError("too big") : absl::OkStatus(), "checking");
  return absl::OkStatus();
}

TEST(Status, ContextTrail) {
  EXPECT_TRUE(use(2).ok());
  absl::Status s = use(0);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "reading \"zero_optimization.stage\": value must be positive");
  EXPECT_EQ(use(9).message(), "checking: too big");
}

TEST(Status, ErrnoNamesWhat) {
  absl::Status s = errno_status(ENOENT, "cannot open /x");
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(s.message(), "cannot open /x: No such file or directory");
  EXPECT_EQ(errno_status(ENOSPC, "w").code(), absl::StatusCode::kResourceExhausted);
}

TEST(StatusDeathTest, CheckAbortsWithLocation) {
  EXPECT_DEATH(STRATA_CHECK(1 + 1 == 3), "status_test.cc:[0-9]+: 1 \\+ 1 == 3");
}

}  // namespace
}  // namespace strata
