#include "tools/cli_util.h"

#include <cstdio>
#include <iostream>
#include <string>

namespace strata::tools {

int report_status(const absl::Status& status) {
  if (status.ok()) return 0;
  std::fprintf(stderr, "strata: error: %s\n", std::string(status.message()).c_str());
  return 1;
}

void print_json(const nlohmann::json& j) { std::cout << j.dump(2) << std::endl; }

}  // namespace strata::tools
