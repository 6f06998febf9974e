// parse_test_config: a ds_config from JSON text written by a test; a parse
// error fails the calling test (showing the text) and yields the defaults.
#pragma once

#include <string>
#include <vector>

#include "core/config/ds_config.h"
#include "gtest/gtest.h"

namespace strata::testing {

inline config::DsConfig parse_test_config(const std::string& json) {
  std::vector<std::string> warnings;
  auto cfg = config::parse_ds_config(json, "test.json", &warnings);
  EXPECT_TRUE(cfg.ok()) << cfg.status() << "\n" << json;
  return cfg.ok() ? *cfg : config::DsConfig{};
}

}  // namespace strata::testing
