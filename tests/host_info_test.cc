#include "core/host_info.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>

#include "core/dtype.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

bool has_flag(const CpuInfo& cpu, const std::string& flag) {
  return std::find(cpu.cpuinfo_flags.begin(), cpu.cpuinfo_flags.end(), flag) !=
         cpu.cpuinfo_flags.end();
}

TEST(HostInfoTest, CpuBasics) {
  HostInfo h = probe_host();
  EXPECT_FALSE(h.cpu.model.empty());
  EXPECT_EQ(h.cpu.online_cpus, sysconf(_SC_NPROCESSORS_ONLN));
  EXPECT_GE(h.cpu.allowed_cpus, 1);
  EXPECT_LE(h.cpu.allowed_cpus, sysconf(_SC_NPROCESSORS_CONF));
  EXPECT_EQ(h.cpu.dtype_conversion_isa, dtype_conversion_isa());
  ASSERT_EQ(h.cpu.features.size(), 12u);
  EXPECT_EQ(h.cpu.features[0].name, "sse4_2");
}

TEST(HostInfoTest, FeaturesAgreeWithTheKernel) {
  HostInfo h = probe_host();
  if (h.cpu.cpuinfo_flags.empty()) GTEST_SKIP() << "/proc/cpuinfo has no flags line";
  // The kernel lists a flag only when the CPU has it and the kernel enabled
  // it, which is what cpuid + XCR0 say too.
  for (const CpuFeature& f : h.cpu.features) {
    EXPECT_EQ(f.supported, has_flag(h.cpu, f.name)) << f.name;
  }
#if defined(__x86_64__)
  EXPECT_EQ(h.cpu.has("avx2"), __builtin_cpu_supports("avx2") != 0);
  EXPECT_EQ(h.cpu.has("avx512f"), __builtin_cpu_supports("avx512f") != 0);
  EXPECT_EQ(h.cpu.has("fma"), __builtin_cpu_supports("fma") != 0);
#endif
}

TEST(HostInfoTest, FeatureImplications) {
  HostInfo h = probe_host();
  if (h.cpu.has("avx512bw") || h.cpu.has("avx512_bf16") || h.cpu.has("avx512_fp16")) {
    EXPECT_TRUE(h.cpu.has("avx512f"));
  }
  if (h.cpu.has("avx512f")) {
    EXPECT_TRUE(h.cpu.has("avx2"));
  }
  if (h.cpu.has("amx_bf16")) {
    EXPECT_TRUE(h.cpu.has("amx_tile"));
  }
  EXPECT_FALSE(h.cpu.has("no_such_feature"));
  // dtype.h picks AVX-512 only where the CPU has it.
  if (h.cpu.dtype_conversion_isa == "avx512") {
    EXPECT_TRUE(h.cpu.has("avx512f"));
  }
  if (h.cpu.dtype_conversion_isa == "avx2") {
    EXPECT_TRUE(h.cpu.has("avx2") && h.cpu.has("f16c"));
  }
}

TEST(HostInfoTest, MemoryIsConsistent) {
  HostInfo h = probe_host();
  ASSERT_GT(h.memory.total_bytes, 0u);
  EXPECT_GT(h.memory.available_bytes, 0u);
  EXPECT_LE(h.memory.available_bytes, h.memory.total_bytes);
  EXPECT_EQ(h.memory.total_bytes,
            static_cast<uint64_t>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGESIZE));
  EXPECT_LE(h.memory.usable_bytes(), h.memory.available_bytes);
  if (h.memory.cgroup_limit_bytes) {
    EXPECT_FALSE(h.memory.cgroup_limit_file.empty());
    EXPECT_NE(h.memory.cgroup_version, 0);
    EXPECT_LE(h.memory.usable_bytes(), *h.memory.cgroup_limit_bytes);
  }
}

TEST(HostInfoTest, HugePages) {
  HostInfo h = probe_host();
  EXPECT_LE(h.huge_pages.free, h.huge_pages.total);
  if (!h.huge_pages.thp_enabled.empty()) {
    EXPECT_TRUE(h.huge_pages.thp_enabled == "always" || h.huge_pages.thp_enabled == "madvise" ||
                h.huge_pages.thp_enabled == "never")
        << h.huge_pages.thp_enabled;
  }
}

TEST(HostInfoTest, MemlockMatchesGetrlimit) {
  HostInfo h = probe_host();
  struct rlimit rl;
  ASSERT_EQ(getrlimit(RLIMIT_MEMLOCK, &rl), 0);
  EXPECT_EQ(h.memlock.unlimited(), rl.rlim_cur == RLIM_INFINITY);
  if (!h.memlock.unlimited()) {
    EXPECT_EQ(*h.memlock.soft_bytes, rl.rlim_cur);
  }
  EXPECT_FALSE(describe_memlock(h.memlock).empty());
}

TEST(DescribeMemlockTest, SaysWhatToDo) {
  EXPECT_NE(describe_memlock(MemlockLimit{}).find("unlimited"), std::string::npos);
  MemlockLimit low{uint64_t{64} << 10, uint64_t{64} << 10};
  std::string s = describe_memlock(low);
  EXPECT_EQ(s.rfind("64 KiB:", 0), 0u) << s;
  EXPECT_NE(s.find("ulimit -l unlimited"), std::string::npos) << s;
  EXPECT_NE(s.find("limits.conf"), std::string::npos) << s;
  MemlockLimit high{uint64_t{8} << 30, std::nullopt};
  EXPECT_EQ(describe_memlock(high).rfind("8 GiB:", 0), 0u);
}

TEST(HostInfoParseTest, Meminfo) {
  const char* text =
      "MemTotal:       24684084 kB\n"
      "MemFree:        23745588 kB\n"
      "MemAvailable:   24087860 kB\n"
      "HugePages_Total:       4\n"
      "Hugepagesize:       2048 kB\n";
  EXPECT_EQ(parse_meminfo_bytes(text, "MemTotal"), uint64_t{24684084} * 1024);
  EXPECT_EQ(parse_meminfo_bytes(text, "MemAvailable"), uint64_t{24087860} * 1024);
  EXPECT_EQ(parse_meminfo_bytes(text, "HugePages_Total"), 4u);
  EXPECT_EQ(parse_meminfo_bytes(text, "Hugepagesize"), uint64_t{2} << 20);
  // A key that is only a prefix of another must not match it.
  EXPECT_EQ(parse_meminfo_bytes(text, "MemT"), std::nullopt);
  EXPECT_EQ(parse_meminfo_bytes(text, "SwapTotal"), std::nullopt);
}

TEST(HostInfoParseTest, SysfsChoice) {
  EXPECT_EQ(parse_sysfs_choice("always [madvise] never\n"), "madvise");
  EXPECT_EQ(parse_sysfs_choice("[always] madvise never"), "always");
  EXPECT_EQ(parse_sysfs_choice("never\n"), "never");
}

TEST(HostInfoParseTest, CgroupLimit) {
  EXPECT_EQ(parse_cgroup_limit("max\n"), std::nullopt);
  EXPECT_EQ(parse_cgroup_limit("9223372036854771712\n"), std::nullopt);  // v1 "no limit"
  EXPECT_EQ(parse_cgroup_limit("17179869184\n"), uint64_t{16} << 30);
  EXPECT_EQ(parse_cgroup_limit("garbage"), std::nullopt);
}

}  // namespace
}  // namespace strata
