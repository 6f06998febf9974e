// Logging for strata: spdlog to stderr (stdout is kept for --json output).
//
// The level comes from, in order: the --log-level flag (passed to
// init_logging), the STRATA_LOG environment variable, else "info".
// Levels: trace, debug, info, warn, error, off.
//
// Each subsystem logs through its own named logger (log::get("swap")) so that
// STRATA_LOG="info,swap=debug" turns one subsystem up without the rest.
// Thread-safe after init_logging has returned.
#pragma once

#include <memory>
#include <string_view>

#include "absl/status/status.h"
#include "spdlog/spdlog.h"

namespace strata::log {

// Sets the levels. `spec` is "LEVEL" or "LEVEL,subsystem=LEVEL,...". An empty
// spec falls back to STRATA_LOG, then "info". Unknown levels are an error.
absl::Status init_logging(std::string_view spec = {});

// The logger for a subsystem ("core", "swap", "offload", ...), created on
// first use with the configured level.
std::shared_ptr<spdlog::logger> get(std::string_view subsystem);

}  // namespace strata::log
