// Shared plumbing of the CLI commands.
#pragma once

#include <string_view>

#include "absl/status/status.h"
#include "nlohmann/json.hpp"

namespace strata::tools {

// Prints "strata: error: <message>" on stderr and returns 1 (or 0 when ok).
int report_status(const absl::Status& status);

// Prints one JSON object on stdout (the whole of stdout under --json).
void print_json(const nlohmann::json& j);

// "1.5 GiB", "512 MiB", "4.0 KiB".
std::string format_bytes(double bytes);

}  // namespace strata::tools
