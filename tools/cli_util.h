// Shared plumbing of the CLI commands.
#pragma once

#include <string_view>

#include "absl/status/status.h"
#include "core/format_bytes.h"  // format_bytes: the commands use it through this header
#include "nlohmann/json.hpp"

namespace strata::tools {

// Prints "strata: error: <message>" on stderr and returns 1 (or 0 when ok).
int report_status(const absl::Status& status);

// Prints one JSON object on stdout (the whole of stdout under --json).
void print_json(const nlohmann::json& j);

}  // namespace strata::tools
