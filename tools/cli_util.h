// Shared plumbing of the CLI commands.
#pragma once

#include <string>
#include <string_view>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "core/format_bytes.h"  // format_bytes: the commands use it through this header
#include "core/parse.h"
#include "nlohmann/json.hpp"

namespace strata::tools {

// Prints "strata: error: <message>" on stderr and returns 1 (or 0 when ok).
int report_status(const absl::Status& status);

// Prints one JSON object on stdout (the whole of stdout under --json).
// Strings that are not valid UTF-8 (a path is any bytes) are printed with
// U+FFFD in place of the invalid bytes instead of throwing.
void print_json(const nlohmann::json& j);

// A CLI11 check for a floating-point flag: the text must be what
// core/parse.h's parse_double accepts within `range` (CLI11's own conversion
// takes "nan" and "inf", and its Range lets nan through). The one way every
// double flag of the CLI is checked.
CLI::Validator finite_number(DoubleRange range);

// A CLI11 check for an integer flag whose text CLI11 would wrap or clamp
// (it reads "-1" into an unsigned option as 2^64 - 1): core/parse.h's
// parse_int within [min, max].
CLI::Validator whole_number(int64_t min, int64_t max);

// A CLI11 transform for a byte-size flag ("4096", "256MiB", "1.5G"): parsed
// by core/parse.h's parse_byte_size within [min, max] and replaced by the
// number of bytes, so the option can be bound to an integer.
CLI::Validator byte_size(uint64_t min, uint64_t max);

}  // namespace strata::tools
