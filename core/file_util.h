// Whole-file helpers with errors a user can act on (they name the path).
#pragma once

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace strata {

// Reads a whole file. NotFound names the path; a directory is an error.
absl::StatusOr<std::string> read_file(const std::string& path);

// Writes `contents` to path.tmp, fsyncs it and renames it over `path`, so a
// crash leaves either the old file or the new one, never a torn one.
absl::Status write_file_atomic(const std::string& path, std::string_view contents);

}  // namespace strata
