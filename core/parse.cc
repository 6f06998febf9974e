#include "core/parse.h"

#include <charconv>
#include <cmath>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace strata {
namespace {

// Printable form of user text for an error line: at most 64 bytes, bytes
// outside printable ASCII escaped, so a hostile value cannot flood or garble
// the terminal.
std::string quoted(absl::string_view text) {
  std::string out = "'";
  for (size_t i = 0; i < text.size() && i < 64; ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      out += absl::StrFormat("\\x%02x", c);
    }
  }
  if (text.size() > 64) out += "...";
  return out + "'";
}

// from_chars on doubles accepts "nan" and "inf"; users never mean them.
bool parse_finite(absl::string_view text, double* value) {
  if (text.empty()) return false;
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, *value);
  return ec == std::errc() && ptr == end && std::isfinite(*value);
}

std::string range_text(const DoubleRange& r) {
  const bool has_min = r.min != std::numeric_limits<double>::lowest();
  const bool has_max = r.max != std::numeric_limits<double>::max();
  if (has_min && has_max) {
    return absl::StrCat("in ", r.min_inclusive ? "[" : "(", r.min, ", ", r.max,
                        r.max_inclusive ? "]" : ")");
  }
  if (has_min) return absl::StrCat(r.min_inclusive ? ">= " : "> ", r.min);
  if (has_max) return absl::StrCat(r.max_inclusive ? "<= " : "< ", r.max);
  return "finite";
}

}  // namespace

absl::StatusOr<uint64_t> parse_byte_size(absl::string_view text, absl::string_view what,
                                         uint64_t min, uint64_t max) {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " ", quoted(text), " ", why,
        "; use bytes or a number with K, M, G or T (binary units, e.g. 4096, 512M, 1.5GiB)"));
  };
  size_t i = 0;
  while (i < text.size() && (absl::ascii_isdigit(static_cast<unsigned char>(text[i])) ||
                             text[i] == '.' || text[i] == 'e' || text[i] == 'E')) {
    ++i;
  }
  // "1e9" is a number; "1E" alone is not, and a unit never starts with e.
  absl::string_view number = text.substr(0, i);
  std::string unit;
  for (char c : text.substr(i)) {
    if (c != ' ') unit += absl::ascii_toupper(static_cast<unsigned char>(c));
  }
  double mult = 0;
  if (unit.empty() || unit == "B") mult = 1;
  if (unit == "K" || unit == "KB" || unit == "KIB") mult = 0x1p10;
  if (unit == "M" || unit == "MB" || unit == "MIB") mult = 0x1p20;
  if (unit == "G" || unit == "GB" || unit == "GIB") mult = 0x1p30;
  if (unit == "T" || unit == "TB" || unit == "TIB") mult = 0x1p40;
  double value = 0;
  if (mult == 0 || !parse_finite(number, &value)) return bad("is not a size");
  const double bytes = std::floor(value * mult);
  if (!(bytes >= static_cast<double>(min))) {
    return bad(absl::StrCat("is below the minimum of ", min, " bytes"));
  }
  // A max near 2^64 rounds up as a double, and 2^64 itself does not convert.
  if (bytes > static_cast<double>(max) || bytes >= 0x1p64 || static_cast<uint64_t>(bytes) > max) {
    return bad(absl::StrCat("is above the maximum of ", max, " bytes"));
  }
  return static_cast<uint64_t>(bytes);
}

absl::StatusOr<double> parse_double(absl::string_view text, absl::string_view what,
                                    DoubleRange range) {
  double value = 0;
  if (!parse_finite(text, &value)) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " ", quoted(text), " is not a finite number (e.g. 0.5, 1e-3)"));
  }
  const bool low = range.min_inclusive ? value < range.min : value <= range.min;
  const bool high = range.max_inclusive ? value > range.max : value >= range.max;
  if (low || high) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " ", quoted(text), " is out of range: it must be ", range_text(range)));
  }
  return value;
}

absl::StatusOr<int64_t> parse_int(absl::string_view text, absl::string_view what, int64_t min,
                                  int64_t max) {
  int64_t value = 0;
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (text.empty() || ec == std::errc::invalid_argument || ptr != end) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " ", quoted(text), " is not a whole number (e.g. 8)"));
  }
  if (ec == std::errc::result_out_of_range || value < min || value > max) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " ", quoted(text), " is out of range: it must be in [", min, ", ", max, "]"));
  }
  return value;
}

}  // namespace strata
