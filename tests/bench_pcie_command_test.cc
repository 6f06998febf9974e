// `strata bench pcie` through the real binary: without a GPU it fails with
// one "no GPU: <reason>" line and exit 1; with one, --json prints one object
// with positive bandwidths (a small --size keeps it quick); bad flags are
// usage errors.
#include <gtest/gtest.h>

#include <algorithm>

#include "gpu/cuda_info.h"
#include "nlohmann/json.hpp"
#include "tests/cli_test_util.h"

namespace strata {
namespace {

using strata::testing::CliRun;
using strata::testing::ScratchDir;

TEST(BenchPcieCommandTest, ReportsNoGpuOrMeasures) {
  ScratchDir dir("bench_pcie_test.");
  const CliRun r = dir.run_strata("bench pcie --size 1MiB --repeats 2 --json");
  ASSERT_FALSE(r.crashed) << r.err;
  const gpu::CudaInfo info = gpu::probe_cuda();
  if (info.devices.empty()) {
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_TRUE(r.out.empty()) << r.out;
    EXPECT_EQ(r.err.rfind("strata: error: no GPU: ", 0), 0u) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    return;
  }
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["size_bytes"], 1 << 20);
  for (const char* mem : {"pinned", "pageable"}) {
    for (const char* dir_key : {"h2d_gb_per_s", "d2h_gb_per_s", "bidir_gb_per_s"}) {
      EXPECT_GT(j[mem][dir_key].get<double>(), 0.0) << mem << " " << dir_key;
    }
  }
}

TEST(BenchPcieCommandTest, RejectsBadFlags) {
  ScratchDir dir("bench_pcie_test.");
  EXPECT_EQ(dir.run_strata("bench pcie --size 12").exit_code, 2);  // below 4 KiB
  EXPECT_EQ(dir.run_strata("bench pcie --repeats 0").exit_code, 2);
  EXPECT_EQ(dir.run_strata("bench pcie --size lots").exit_code, 2);
}

}  // namespace
}  // namespace strata
