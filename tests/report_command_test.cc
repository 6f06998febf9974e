// `strata report` run as a user would: the real binary, stdout and stderr
// captured separately.
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/cli_test_util.h"

namespace {

using nlohmann::json;

using strata::testing::CliRun;

class ReportCommandTest : public ::testing::Test {
 protected:
  CliRun strata(const std::string& args) { return scratch_.run_strata(args); }

  // `shell_prefix` runs first in the same shell, e.g. "ulimit -l 64 && ".
  CliRun strata_with_prefix(const std::string& shell_prefix, const std::string& args) {
    return scratch_.run_strata(args, shell_prefix);
  }

  // Runs `report --json ARGS` and returns the parsed object.
  json report_json(const std::string& args = "") {
    CliRun r = strata("report --json " + args);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    json j = json::parse(r.out, nullptr, /*allow_exceptions=*/false);
    EXPECT_FALSE(j.is_discarded()) << "stdout is not one JSON document:\n" << r.out;
    EXPECT_TRUE(j.is_object());
    EXPECT_EQ(r.err.find("strata report"), std::string::npos)
        << "human text leaked into --json run:\n"
        << r.err;
    return j;
  }

  strata::testing::ScratchDir scratch_{"report_command_test."};
  const std::string dir_ = scratch_.path();
};

TEST_F(ReportCommandTest, JsonHasEverySection) {
  json j = report_json();
  for (const char* key : {"build", "cpu", "memory", "numa", "topology", "io_uring", "io_engine",
                          "direct_io", "cuda", "nccl", "problems"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
  EXPECT_EQ(j.size(), 11u) << j.dump(2);

  EXPECT_TRUE(j["build"]["version"].is_string());
  EXPECT_FALSE(j["build"]["compiler"].get<std::string>().empty());
  EXPECT_TRUE(j["build"]["cuda"].is_boolean());

  for (const char* f : {"avx2", "avx512f", "avx512bw", "avx512_bf16", "avx512_fp16", "f16c", "fma",
                        "amx_tile", "amx_bf16"}) {
    EXPECT_TRUE(j["cpu"]["features"][f].is_boolean()) << f;
  }
  EXPECT_TRUE(j["cpu"]["dtype_conversion_isa"].is_string());
  EXPECT_GT(j["cpu"]["online_cpus"].get<int>(), 0);

  const json& mem = j["memory"];
  EXPECT_GT(mem["total_bytes"].get<uint64_t>(), 0u);
  EXPECT_LE(mem["available_bytes"].get<uint64_t>(), mem["total_bytes"].get<uint64_t>());
  EXPECT_TRUE(mem["cgroup"].contains("limit_bytes"));
  EXPECT_TRUE(mem["huge_pages"]["thp_enabled"].is_string());
  EXPECT_TRUE(mem["memlock"]["unlimited"].is_boolean());
  EXPECT_FALSE(mem["memlock"]["meaning"].get<std::string>().empty());

  EXPECT_TRUE(j["io_uring"]["available"].is_boolean());
  EXPECT_TRUE(j["io_uring"]["features"].is_array());
  // The swap engine in use follows the probe: io_uring when it works, else the thread pool.
  EXPECT_EQ(j["io_engine"]["engine"],
            j["io_uring"]["available"].get<bool>() ? "io_uring" : "threads");
  EXPECT_FALSE(j["io_engine"]["reason"].get<std::string>().empty());
  EXPECT_TRUE(j["direct_io"]["ok"].is_boolean());
  EXPECT_TRUE(j["cuda"]["devices"].is_array());
  EXPECT_TRUE(j["nccl"]["available"].is_boolean());

  ASSERT_TRUE(j["problems"].is_array());
  for (const json& p : j["problems"]) {
    for (const char* key : {"component", "severity", "message", "fix"}) {
      ASSERT_TRUE(p[key].is_string()) << p.dump();
      EXPECT_FALSE(p[key].get<std::string>().empty()) << p.dump();
    }
    EXPECT_TRUE(p["severity"] == "warn" || p["severity"] == "error") << p.dump();
  }
}

TEST_F(ReportCommandTest, TopologyAgreesWithNuma) {
  json j = report_json();
  if (j["topology"].contains("error")) GTEST_SKIP() << j["topology"]["error"];
  size_t cpus = 0;
  uint64_t memory = 0;
  for (const json& n : j["numa"]["nodes"]) {
    cpus += n["cpus"].size();
    memory += n["memory_bytes"].get<uint64_t>();
  }
  EXPECT_EQ(cpus, j["topology"]["pus"].get<size_t>());
  EXPECT_EQ(memory, j["topology"]["total_memory_bytes"].get<uint64_t>());
  EXPECT_TRUE(j["topology"]["pci_devices"].is_array());
}

TEST_F(ReportCommandTest, ProblemsMatchFindings) {
  json j = report_json("--nvme-path '" + dir_ + "'");
  auto has_problem = [&](const std::string& component) {
    for (const json& p : j["problems"]) {
      if (p["component"] == component) return true;
    }
    return false;
  };
  EXPECT_EQ(j["direct_io"]["path"], dir_);
  if (j["io_uring"]["ring_ok"].get<bool>()) {
    EXPECT_EQ(j["io_uring"]["test_dir"], dir_);
  }
  EXPECT_EQ(has_problem("io_uring"), !j["io_uring"]["available"].get<bool>() ||
                                         !j["io_uring"]["registered_buffers_ok"].get<bool>());
  if (!j["direct_io"]["ok"].get<bool>()) {
    EXPECT_TRUE(has_problem("direct_io"));
  }
  EXPECT_EQ(has_problem("cuda"), j["cuda"]["devices"].empty());
  if (j["cuda"]["devices"].empty()) {
    for (const json& p : j["problems"]) {
      if (p["component"] == "cuda") {
        EXPECT_NE(p["fix"].get<std::string>().find("--device cpu"), std::string::npos);
      }
    }
  }
  const json& memlock = j["memory"]["memlock"];
  const bool low_memlock = !memlock["unlimited"].get<bool>() &&
                           memlock["soft_bytes"].get<uint64_t>() < (uint64_t{1} << 30);
  EXPECT_EQ(has_problem("memlock"), low_memlock);
}

TEST_F(ReportCommandTest, MissingNvmePathIsAProblemNamingIt) {
  json j = report_json("--nvme-path /nonexistent/strata-nvme");
  EXPECT_FALSE(j["direct_io"]["ok"].get<bool>());
  EXPECT_NE(j["direct_io"]["error"].get<std::string>().find("/nonexistent/strata-nvme"),
            std::string::npos);
  bool named = false;
  for (const json& p : j["problems"]) {
    if (p["component"] == "direct_io" && p["severity"] == "error" &&
        p["message"].get<std::string>().find("/nonexistent/strata-nvme") != std::string::npos) {
      named = true;
    }
  }
  EXPECT_TRUE(named) << j["problems"].dump(2);
  // io_uring is still tested, elsewhere.
  EXPECT_NE(j["io_uring"]["test_dir"], "/nonexistent/strata-nvme");
}

TEST_F(ReportCommandTest, LowMemlockIsAProblemWithAFix) {
  // Lowering a soft limit needs no privilege.
  CliRun r = strata_with_prefix("ulimit -S -l 64 && ", "report --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  json j = json::parse(r.out);
  EXPECT_EQ(j["memory"]["memlock"]["soft_bytes"], 64 * 1024);
  EXPECT_EQ(j["memory"]["memlock"]["meaning"].get<std::string>().rfind("64 KiB:", 0), 0u)
      << j["memory"]["memlock"]["meaning"];
  bool found = false;
  for (const json& p : j["problems"]) {
    if (p["component"] == "memlock") {
      found = true;
      EXPECT_NE(p["message"].get<std::string>().find("64.0 KiB"), std::string::npos) << p.dump();
      EXPECT_NE(p["fix"].get<std::string>().find("ulimit -l unlimited"), std::string::npos);
    }
  }
  EXPECT_TRUE(found) << j["problems"].dump(2);
}

TEST_F(ReportCommandTest, HumanOutputGoesToStderr) {
  CliRun r = strata("report --nvme-path '" + dir_ + "'");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
  for (const char* s : {"strata report", "build", "RLIMIT_MEMLOCK", "io_uring",
                        "O_DIRECT write+read", "NCCL", "problems ("}) {
    EXPECT_NE(r.err.find(s), std::string::npos) << s << " missing from:\n" << r.err;
  }
  EXPECT_NE(r.err.find(" ...."), std::string::npos);
  EXPECT_TRUE(r.err.find("[OK]") != std::string::npos || r.err.find("[NO]") != std::string::npos);
}

TEST_F(ReportCommandTest, NvmePathWithoutValueIsAUsageError) {
  CliRun r = strata("report --nvme-path");
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_TRUE(r.out.empty());
}

}  // namespace
