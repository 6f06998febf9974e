#include "tools/cli_util.h"

#include <cstdio>
#include <iostream>
#include <string>

#include "absl/strings/str_format.h"

namespace strata::tools {

int report_status(const absl::Status& status) {
  if (status.ok()) return 0;
  std::fprintf(stderr, "strata: error: %s\n", std::string(status.message()).c_str());
  return 1;
}

void print_json(const nlohmann::json& j) { std::cout << j.dump(2) << std::endl; }

std::string format_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024.0 && u < 4) {
    bytes /= 1024.0;
    ++u;
  }
  return u == 0 ? absl::StrFormat("%.0f B", bytes) : absl::StrFormat("%.1f %s", bytes, units[u]);
}

}  // namespace strata::tools
