// The one parser for numbers and byte sizes that users type (CLI flags,
// environment variables, strata's own config keys). Every function rejects
// what a careless std::stod would accept: empty text, trailing junk, nan,
// inf, values out of range, and it never throws. Errors are InvalidArgument
// and name `what` (a flag such as "--gpu-mem", or a key path) and the text,
// and say what a valid value looks like.
//
//   auto bytes = parse_byte_size("1.5GiB", "--host-mem");   // 1610612736
//   auto lr = parse_double("3e-4", "--lr", {.min = 0, .min_inclusive = false});
#pragma once

#include <cstdint>
#include <limits>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace strata {

// "4096", "128K", "1M", "1.5 GiB", "2TB": binary units (K = 1024), case
// insensitive, an optional "B"/"iB" suffix, spaces before the unit allowed.
// The result is whole bytes, at least `min` (default 1) and at most `max`
// (default 2^62, far above any machine; keeps sums of sizes from overflowing).
absl::StatusOr<uint64_t> parse_byte_size(absl::string_view text, absl::string_view what,
                                         uint64_t min = 1, uint64_t max = uint64_t{1} << 62);

struct DoubleRange {
  double min = std::numeric_limits<double>::lowest();
  double max = std::numeric_limits<double>::max();
  bool min_inclusive = true;
  bool max_inclusive = true;
};

// A finite decimal number ("0.1", "1e-3", "-2") within `range`.
absl::StatusOr<double> parse_double(absl::string_view text, absl::string_view what,
                                    DoubleRange range = {});

// A base-10 integer ("42", "-1") within [min, max]; no fraction, no exponent.
absl::StatusOr<int64_t> parse_int(absl::string_view text, absl::string_view what,
                                  int64_t min = std::numeric_limits<int64_t>::min(),
                                  int64_t max = std::numeric_limits<int64_t>::max());

}  // namespace strata
