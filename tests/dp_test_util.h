// Data-parallel test helpers: ranks as threads of the test process (their
// results stay in memory for the test to compare), each with its own
// dist::connect over loopback on a free port (the Gloo path the launcher
// uses across processes), and ds_configs parsed at a world size.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "core/config/ds_config.h"
#include "dist/communicator.h"
#include "dist/net.h"
#include "gtest/gtest.h"

namespace strata::testing {

// Runs body(rank, comm) on `world` threads, each connected as one rank of a
// fresh Gloo job on 127.0.0.1; returns each rank's status.
inline std::vector<absl::Status> run_ranks(
    int world, const std::function<absl::Status(int, dist::Communicator*)>& body) {
  std::vector<absl::Status> out(world);
  const absl::StatusOr<int> port = dist::pick_free_port();
  if (!port.ok()) {
    out.assign(world, port.status());
    return out;
  }
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      dist::RankInfo info{.rank = r,
                          .world_size = world,
                          .local_rank = r,
                          .local_world_size = world,
                          .master_addr = "127.0.0.1",
                          .master_port = *port};
      auto comm = dist::connect(
          info, {.backend = dist::Backend::kGloo, .timeout = std::chrono::seconds(60)});
      if (!comm.ok()) {
        out[r] = comm.status();
        return;
      }
      out[r] = body(r, comm->get());
    });
  }
  for (std::thread& t : threads) t.join();
  return out;
}

// ||a - b|| / ||b|| (a and b of the same size).
inline double norm_rel(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double d = 0, n = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    d += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    n += double(b[i]) * b[i];
  }
  return std::sqrt(d / n);
}

inline config::DsConfig parse_config_at(const std::string& json, int world_size) {
  std::vector<std::string> warnings;
  auto cfg = config::parse_ds_config(json, "test.json", &warnings, world_size);
  EXPECT_TRUE(cfg.ok()) << cfg.status() << "\n" << json;
  return cfg.ok() ? *cfg : config::DsConfig{};
}

}  // namespace strata::testing
