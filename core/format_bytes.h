// Byte counts as people read them: "1.5 GiB", "512.0 MiB", "4.0 KiB",
// "100 B" (binary units, one decimal). The inverse of parse_byte_size in
// core/parse.h up to rounding. Pure; thread-safe.
#pragma once

#include <string>

namespace strata {

std::string format_bytes(double bytes);

}  // namespace strata
