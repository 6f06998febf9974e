// `strata bench train`, run as a user would: every placement (offload
// none / cpu / nvme x sync / overlap) trains the same model on the same
// tokens, so all reach the same loss; the JSON holds one entry per placement
// with its throughput and, for offloaded ones, the overhead against no
// offload; bad options fail before any work. (Speeds are not asserted.)
#include <filesystem>
#include <set>
#include <string>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/cli_test_util.h"

namespace {

using nlohmann::json;

TEST(BenchTrainCommandTest, EveryPlacementTrainsTheSameModel) {
  strata::testing::ScratchDir scratch("strata_bench_train_");
  const strata::testing::CliRun r = scratch.run_strata(
      "bench train --model gpt2-tiny --steps 3 --seq-len 16 --micro-batch 1 "
      "--checkpoint-activations --nvme-path '" +
      scratch.path() + "' --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json j = json::parse(r.out, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(j.is_object()) << r.out;
  EXPECT_EQ(j["model"], "gpt2-tiny");
  EXPECT_EQ(j["data"], "synthetic");
  EXPECT_EQ(j["checkpoint_activations"], true);
  ASSERT_EQ(j["placements"].size(), 6u) << r.out;
  std::set<std::string> seen;
  const double loss = j["placements"][0]["last_loss"].get<double>();
  for (const json& p : j["placements"]) {
    ASSERT_FALSE(p.contains("error")) << p.dump();
    seen.insert(p["offload"].get<std::string>() + "/" + p["overlap"].get<std::string>());
    EXPECT_EQ(p["steps"], 3);
    EXPECT_EQ(p["tokens_per_step"], 16);
    EXPECT_GT(p["tokens_per_second"].get<double>(), 0);
    EXPECT_GT(p["mean_step_seconds"].get<double>(), 0);
    // Placement and overlap change where the work runs, not the arithmetic.
    EXPECT_EQ(p["last_loss"].get<double>(), loss) << p.dump();
    EXPECT_EQ(p["skipped_steps"], 0);
    if (p["offload"] == "none") {
      EXPECT_TRUE(p["overhead_fraction"].is_null());
      EXPECT_EQ(p["bytes_moved_per_step"]["nvme"], 0.0);
    } else {
      EXPECT_TRUE(p["overhead_fraction"].is_number()) << p.dump();
    }
  }
  EXPECT_EQ(seen.size(), 6u);
  // The temporary swap folder made under --nvme-path is gone afterwards.
  for (const auto& e : std::filesystem::directory_iterator(scratch.path())) {
    EXPECT_NE(e.path().filename().string().rfind("strata-bench-train-", 0), 0u)
        << e.path() << " was left behind";
  }
}

TEST(BenchTrainCommandTest, BadOptionsFailBeforeAnyWork) {
  strata::testing::ScratchDir scratch("strata_bench_train_");
  strata::testing::CliRun r = scratch.run_strata("bench train --model gpt3 --json");
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_EQ(r.err.rfind("strata: error: ", 0), 0u) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
  r = scratch.run_strata("bench train --model gpt2-tiny --seq-len 4096");
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("--seq-len"), std::string::npos) << r.err;
  EXPECT_EQ(scratch.run_strata("bench train --steps 1").exit_code, 2);
  EXPECT_EQ(scratch.run_strata("bench train --offload disk").exit_code, 2);
}

}  // namespace
