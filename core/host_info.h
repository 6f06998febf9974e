// What the host offers the CPU optimizer and the host tier: CPU model and
// SIMD features, memory (with the cgroup limit), huge pages and the
// locked-memory limit.
//
// probe_host() reads cpuid, /proc and /sys and never fails: a value it cannot
// read stays at its "unknown" default (0, empty, nullopt) so the report can
// say so. Cheap (a few small file reads); safe from any thread.
//
//   HostInfo h = probe_host();
//   if (h.cpu.has("avx512f")) ...
//   uint64_t budget = h.memory.usable_bytes();
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace strata {

struct CpuFeature {
  std::string name;        // kernel spelling, as in /proc/cpuinfo: "avx512_bf16"
  bool supported = false;  // by the CPU (cpuid) and enabled by the OS (XCR0)
};

struct CpuInfo {
  std::string model;     // "AMD EPYC 9654 96-Core Processor"
  std::string vendor;    // "AuthenticAMD", "GenuineIntel"
  int online_cpus = 0;   // logical CPUs online
  int allowed_cpus = 0;  // logical CPUs this process may run on (affinity)
  // sse4_2, avx, avx2, fma, f16c, avx512f, avx512bw, avx512vl, avx512_bf16,
  // avx512_fp16, amx_tile, amx_bf16, in that order.
  std::vector<CpuFeature> features;
  std::vector<std::string> cpuinfo_flags;  // the kernel's "flags" line, for cross-checks
  std::string dtype_conversion_isa;        // what core/dtype.h picked: avx512, avx2, scalar

  bool has(std::string_view feature) const;
};

struct MemoryInfo {
  uint64_t total_bytes = 0;      // MemTotal
  uint64_t available_bytes = 0;  // MemAvailable
  // The tightest memory limit of this process's cgroup and its ancestors
  // (v2 memory.max, or v1 memory.limit_in_bytes); nullopt when unlimited.
  std::optional<uint64_t> cgroup_limit_bytes;
  std::string cgroup_limit_file;  // where the limit came from
  int cgroup_version = 0;         // 1, 2, or 0 when no memory cgroup was found

  // What the host tier can count on: MemAvailable, capped by the cgroup limit.
  uint64_t usable_bytes() const;
};

struct HugePageInfo {
  std::string thp_enabled;       // "always", "madvise", "never"; empty when unknown
  std::string thp_defrag;        // e.g. "madvise"
  uint64_t total = 0;            // HugePages_Total (reserved hugetlbfs pages)
  uint64_t free = 0;             // HugePages_Free
  uint64_t page_size_bytes = 0;  // Hugepagesize
};

struct MemlockLimit {
  std::optional<uint64_t> soft_bytes;  // nullopt: unlimited
  std::optional<uint64_t> hard_bytes;  // nullopt: unlimited
  bool unlimited() const { return !soft_bytes.has_value(); }
};

struct HostInfo {
  CpuInfo cpu;
  MemoryInfo memory;
  HugePageInfo huge_pages;
  MemlockLimit memlock;
};

HostInfo probe_host();

// Below this the host tier cannot lock a useful share of its buffers.
inline constexpr uint64_t kMemlockWarnBytes = uint64_t{1} << 30;

// One line saying what the limit means for pinned / locked host buffers and,
// when it is low, how to raise it.
std::string describe_memlock(const MemlockLimit& limit);

// Parsers behind probe_host(), exposed for tests.
// The value of `key` in /proc/meminfo text, in bytes; nullopt when absent.
std::optional<uint64_t> parse_meminfo_bytes(std::string_view meminfo, std::string_view key);
// The bracketed choice of a sysfs selector: "always [madvise] never" -> "madvise".
std::string parse_sysfs_choice(std::string_view text);
// A cgroup limit file's value: "max" or a v1 near-2^63 sentinel -> nullopt.
std::optional<uint64_t> parse_cgroup_limit(std::string_view text);

}  // namespace strata
