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

void print_json(const nlohmann::json& j) {
  std::cout << j.dump(2, ' ', /*ensure_ascii=*/false, nlohmann::json::error_handler_t::replace)
            << std::endl;
}

CLI::Validator finite_number(DoubleRange range) {
  // CLI11 prefixes the message with the flag's name.
  return CLI::Validator(
      [range](std::string& text) -> std::string {
        absl::StatusOr<double> v = parse_double(text, "value", range);
        return v.ok() ? std::string() : std::string(v.status().message());
      },
      "NUMBER");
}

CLI::Validator whole_number(int64_t min, int64_t max) {
  return CLI::Validator(
      [min, max](std::string& text) -> std::string {
        absl::StatusOr<int64_t> v = parse_int(text, "value", min, max);
        return v.ok() ? std::string() : std::string(v.status().message());
      },
      "INT");
}

CLI::Validator byte_size(uint64_t min, uint64_t max) {
  return CLI::Validator(
      [min, max](std::string& text) -> std::string {
        absl::StatusOr<uint64_t> v = parse_byte_size(text, "value", min, max);
        if (!v.ok()) return std::string(v.status().message());
        text = std::to_string(*v);
        return std::string();
      },
      "SIZE");
}

}  // namespace strata::tools
