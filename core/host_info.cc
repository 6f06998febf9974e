#include "core/host_info.h"

#include <sched.h>
#include <sys/resource.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define STRATA_X86 1
#endif

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/dtype.h"
#include "core/file_util.h"

namespace strata {
namespace {

std::string read_or_empty(const std::string& path) {
  absl::StatusOr<std::string> s = read_file(path);
  return s.ok() ? *std::move(s) : std::string();
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

std::optional<uint64_t> parse_u64(std::string_view s) {
  s = trim(s);
  uint64_t v = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || ptr == s.data()) return std::nullopt;
  return v;
}

// The value after "key<sep>" on the first line starting with key, e.g. the
// "model name\t: ..." line of /proc/cpuinfo.
std::string_view line_value(std::string_view text, std::string_view key) {
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(pos, end - pos);
    if (line.substr(0, key.size()) == key) {
      std::string_view rest = line.substr(key.size());
      size_t colon = rest.find(':');
      if (colon != std::string_view::npos && trim(rest.substr(0, colon)).empty()) {
        return trim(rest.substr(colon + 1));
      }
    }
    pos = end + 1;
  }
  return {};
}

std::vector<std::string> split_words(std::string_view s) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
    size_t j = i;
    while (j < s.size() && !std::isspace(static_cast<unsigned char>(s[j]))) ++j;
    if (j > i) out.emplace_back(s.substr(i, j - i));
    i = j;
  }
  return out;
}

#ifdef STRATA_X86
struct Cpuid {
  unsigned a = 0, b = 0, c = 0, d = 0;
};

Cpuid cpuid(unsigned leaf, unsigned subleaf) {
  Cpuid r;
  if (!__get_cpuid_count(leaf, subleaf, &r.a, &r.b, &r.c, &r.d)) return Cpuid{};
  return r;
}

uint64_t read_xcr0() {
  uint32_t lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (uint64_t{hi} << 32) | lo;
}

bool bit(unsigned reg, int n) { return (reg >> n) & 1u; }

// cpuid says what the silicon has; XCR0 says whether the kernel saves the
// register state, without which the instructions fault. Both must agree.
std::vector<CpuFeature> x86_features(std::string* vendor, std::string* brand) {
  Cpuid l0 = cpuid(0, 0);
  char v[13] = {};
  std::memcpy(v, &l0.b, 4);
  std::memcpy(v + 4, &l0.d, 4);
  std::memcpy(v + 8, &l0.c, 4);
  *vendor = v;
  if (cpuid(0x80000000, 0).a >= 0x80000004) {
    char b[49] = {};
    for (unsigned i = 0; i < 3; ++i) {
      Cpuid r = cpuid(0x80000002 + i, 0);
      std::memcpy(b + 16 * i, &r, 16);
    }
    *brand = std::string(trim(b));
  }

  Cpuid l1 = cpuid(1, 0);
  Cpuid l7 = l0.a >= 7 ? cpuid(7, 0) : Cpuid{};
  Cpuid l7s1 = (l0.a >= 7 && l7.a >= 1) ? cpuid(7, 1) : Cpuid{};
  const bool osxsave = bit(l1.c, 27);
  const uint64_t xcr0 = osxsave ? read_xcr0() : 0;
  const bool os_avx = (xcr0 & 0x6) == 0x6;                 // SSE + AVX state
  const bool os_avx512 = os_avx && (xcr0 & 0xe0) == 0xe0;  // opmask, ZMM_Hi256, Hi16_ZMM
  const bool os_amx = (xcr0 & 0x60000) == 0x60000;         // XTILECFG, XTILEDATA

  return {
      {"sse4_2", bit(l1.c, 20)},
      {"avx", os_avx && bit(l1.c, 28)},
      {"avx2", os_avx && bit(l7.b, 5)},
      {"fma", os_avx && bit(l1.c, 12)},
      {"f16c", os_avx && bit(l1.c, 29)},
      {"avx512f", os_avx512 && bit(l7.b, 16)},
      {"avx512bw", os_avx512 && bit(l7.b, 30)},
      {"avx512vl", os_avx512 && bit(l7.b, 31)},
      {"avx512_bf16", os_avx512 && bit(l7s1.a, 5)},
      {"avx512_fp16", os_avx512 && bit(l7.d, 23)},
      {"amx_tile", os_amx && bit(l7.d, 24)},
      {"amx_bf16", os_amx && bit(l7.d, 22)},
  };
}
#endif

CpuInfo probe_cpu() {
  CpuInfo cpu;
  const std::string cpuinfo = read_or_empty("/proc/cpuinfo");
  cpu.cpuinfo_flags = split_words(line_value(cpuinfo, "flags"));
  std::string brand;
#ifdef STRATA_X86
  cpu.features = x86_features(&cpu.vendor, &brand);
#else
  // Without cpuid, the kernel's flags are the best source there is.
  for (const char* name : {"sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw",
                           "avx512vl", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16"}) {
    bool on = std::find(cpu.cpuinfo_flags.begin(), cpu.cpuinfo_flags.end(), name) !=
              cpu.cpuinfo_flags.end();
    cpu.features.push_back({name, on});
  }
#endif
  std::string_view model = line_value(cpuinfo, "model name");
  cpu.model = !model.empty() ? std::string(model) : brand;
  if (cpu.vendor.empty()) cpu.vendor = std::string(line_value(cpuinfo, "vendor_id"));
  long online = sysconf(_SC_NPROCESSORS_ONLN);
  cpu.online_cpus = online > 0 ? static_cast<int>(online) : 0;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0) cpu.allowed_cpus = CPU_COUNT(&set);
  cpu.dtype_conversion_isa = std::string(dtype_conversion_isa());
  return cpu;
}

// The cgroup path of `controller` ("" for v2's unified line) in
// /proc/self/cgroup, or nullopt when the process is in no such hierarchy.
std::optional<std::string> cgroup_path(std::string_view self_cgroup, bool v2) {
  size_t pos = 0;
  while (pos < self_cgroup.size()) {
    size_t end = self_cgroup.find('\n', pos);
    if (end == std::string_view::npos) end = self_cgroup.size();
    std::string_view line = self_cgroup.substr(pos, end - pos);
    pos = end + 1;
    size_t c1 = line.find(':');
    size_t c2 = c1 == std::string_view::npos ? c1 : line.find(':', c1 + 1);
    if (c2 == std::string_view::npos) continue;
    std::string_view controllers = line.substr(c1 + 1, c2 - c1 - 1);
    bool match = v2 ? controllers.empty() : false;
    if (!v2) {
      // v1 lists controllers comma-separated: "4:cpu,memory:/x".
      size_t start = 0;
      while (!match && start <= controllers.size()) {
        size_t comma = controllers.find(',', start);
        if (comma == std::string_view::npos) comma = controllers.size();
        match = controllers.substr(start, comma - start) == "memory";
        start = comma + 1;
      }
    }
    if (match) return std::string(line.substr(c2 + 1));
  }
  return std::nullopt;
}

// Walks from the process's cgroup up to the root, keeping the smallest
// limit: a parent's limit binds its children too. Inside a cgroup namespace
// the path may not exist under the mount; the mount root is tried last.
void probe_cgroup_limit(MemoryInfo* mem) {
  const std::string self = read_or_empty("/proc/self/cgroup");
  struct Layout {
    bool v2;
    const char* mount;
    const char* file;
  };
  const Layout layouts[] = {{true, "/sys/fs/cgroup", "memory.max"},
                            {true, "/sys/fs/cgroup/unified", "memory.max"},
                            {false, "/sys/fs/cgroup/memory", "memory.limit_in_bytes"}};
  for (const Layout& l : layouts) {
    std::optional<std::string> path = cgroup_path(self, l.v2);
    if (!path) continue;
    std::string dir = *path;
    bool found_file = false;
    for (;;) {
      std::string file = absl::StrCat(l.mount, dir == "/" ? "" : dir, "/", l.file);
      std::string text = read_or_empty(file);
      if (!text.empty()) {
        found_file = true;
        std::optional<uint64_t> limit = parse_cgroup_limit(text);
        if (limit && (!mem->cgroup_limit_bytes || *limit < *mem->cgroup_limit_bytes)) {
          mem->cgroup_limit_bytes = limit;
          mem->cgroup_limit_file = file;
        }
      }
      if (dir.empty() || dir == "/") break;
      size_t slash = dir.rfind('/');
      dir = slash == 0 || slash == std::string::npos ? "/" : dir.substr(0, slash);
    }
    if (found_file) {
      mem->cgroup_version = l.v2 ? 2 : 1;
      return;
    }
  }
}

}  // namespace

bool CpuInfo::has(std::string_view feature) const {
  for (const CpuFeature& f : features) {
    if (f.name == feature) return f.supported;
  }
  return false;
}

uint64_t MemoryInfo::usable_bytes() const {
  if (cgroup_limit_bytes) return std::min(available_bytes, *cgroup_limit_bytes);
  return available_bytes;
}

std::optional<uint64_t> parse_meminfo_bytes(std::string_view meminfo, std::string_view key) {
  std::string_view v = line_value(meminfo, key);
  if (v.empty()) return std::nullopt;
  std::vector<std::string> words = split_words(v);
  std::optional<uint64_t> n = parse_u64(words.front());
  if (!n) return std::nullopt;
  if (words.size() > 1 && (words[1] == "kB" || words[1] == "KB")) return *n * 1024;
  return n;
}

std::string parse_sysfs_choice(std::string_view text) {
  size_t open = text.find('[');
  size_t close = text.find(']', open == std::string_view::npos ? 0 : open);
  if (open == std::string_view::npos || close == std::string_view::npos) {
    return std::string(trim(text));
  }
  return std::string(text.substr(open + 1, close - open - 1));
}

std::optional<uint64_t> parse_cgroup_limit(std::string_view text) {
  text = trim(text);
  if (text == "max") return std::nullopt;
  std::optional<uint64_t> v = parse_u64(text);
  // cgroup v1 writes "no limit" as LONG_MAX rounded down to a page.
  if (!v || *v >= (uint64_t{1} << 62)) return std::nullopt;
  return v;
}

std::string describe_memlock(const MemlockLimit& limit) {
  if (limit.unlimited()) {
    return "unlimited: host-tier buffers of any size can be locked and registered with io_uring";
  }
  const uint64_t soft = *limit.soft_bytes;
  std::string size = soft >= (uint64_t{1} << 30)
                         ? absl::StrCat(soft >> 30, " GiB")
                         : (soft >= (uint64_t{1} << 20) ? absl::StrCat(soft >> 20, " MiB")
                                                        : absl::StrCat(soft >> 10, " KiB"));
  if (soft >= kMemlockWarnBytes) {
    return absl::StrCat(size,
                        ": mlock() and io_uring registered buffers of the host tier are "
                        "capped at ",
                        size, " in total");
  }
  return absl::StrCat(size, ": locking or io_uring-registering more than ", size,
                      " of host-tier buffers fails (CUDA pinning is not charged to it); raise "
                      "with `ulimit -l unlimited` or memlock in /etc/security/limits.conf");
}

HostInfo probe_host() {
  HostInfo h;
  h.cpu = probe_cpu();

  const std::string meminfo = read_or_empty("/proc/meminfo");
  h.memory.total_bytes = parse_meminfo_bytes(meminfo, "MemTotal").value_or(0);
  h.memory.available_bytes = parse_meminfo_bytes(meminfo, "MemAvailable").value_or(0);
  probe_cgroup_limit(&h.memory);

  h.huge_pages.thp_enabled =
      parse_sysfs_choice(read_or_empty("/sys/kernel/mm/transparent_hugepage/enabled"));
  h.huge_pages.thp_defrag =
      parse_sysfs_choice(read_or_empty("/sys/kernel/mm/transparent_hugepage/defrag"));
  h.huge_pages.total = parse_meminfo_bytes(meminfo, "HugePages_Total").value_or(0);
  h.huge_pages.free = parse_meminfo_bytes(meminfo, "HugePages_Free").value_or(0);
  h.huge_pages.page_size_bytes = parse_meminfo_bytes(meminfo, "Hugepagesize").value_or(0);

  struct rlimit rl;
  if (getrlimit(RLIMIT_MEMLOCK, &rl) == 0) {
    if (rl.rlim_cur != RLIM_INFINITY) h.memlock.soft_bytes = rl.rlim_cur;
    if (rl.rlim_max != RLIM_INFINITY) h.memlock.hard_bytes = rl.rlim_max;
  }
  return h;
}

}  // namespace strata
