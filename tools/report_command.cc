// strata report: what this box can do for offloaded training, like ds_report
// but about this runtime. Every probe runs for real (a ring is set up and
// used, an O_DIRECT file is written and read); the report ends with the
// problems found and what to do about each.
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/build_info.h"
#include "core/host_info.h"
#include "core/topology.h"
#include "gpu/cuda_info.h"
#include "swap/io_engine.h"
#include "swap/io_probe.h"
#include "tools/cli_util.h"
#include "tools/commands.h"

namespace strata::tools {
namespace {

using nlohmann::json;

struct Problem {
  std::string component;  // "memlock", "io_uring", "direct_io", ...
  std::string severity;   // "warn": slower or limited; "error": a feature is unusable
  std::string message;
  std::string fix;
};

struct Report {
  HostInfo host;
  absl::StatusOr<Topology> topology = absl::UnknownError("not probed");
  std::string nvme_path;
  absl::StatusOr<swap::DirectIoProbe> direct_io = absl::UnknownError("not probed");
  swap::IoUringProbe io_uring;
  // The swap engine make_io_engine() picks with default options, and why.
  std::string io_engine;
  std::string io_engine_reason;
  gpu::CudaInfo cuda;
  gpu::NcclInfo nccl;
  std::vector<Problem> problems;
};

std::string default_nvme_path() {
  char cwd[4096];
  if (getcwd(cwd, sizeof cwd) != nullptr && access(cwd, W_OK) == 0) return cwd;
  return "/tmp";
}

std::string temp_dir() {
  const char* t = std::getenv("TMPDIR");
  return t != nullptr && *t != '\0' ? t : "/tmp";
}

std::string cpu_list(const std::vector<int>& cpus) {
  // Compresses 0,1,2,3,8 into "0-3,8".
  std::vector<std::string> parts;
  for (size_t i = 0; i < cpus.size();) {
    size_t j = i;
    while (j + 1 < cpus.size() && cpus[j + 1] == cpus[j] + 1) ++j;
    parts.push_back(j == i ? absl::StrCat(cpus[i]) : absl::StrCat(cpus[i], "-", cpus[j]));
    i = j + 1;
  }
  return absl::StrJoin(parts, ",");
}

// NUMA node of a CUDA device, matched to the hwloc view by PCI bus id (CUDA
// and hwloc differ in domain width and hex case).
int cuda_numa_node(const Report& r, const std::string& cuda_bus_id) {
  if (!r.topology.ok()) return -1;
  unsigned d1, b1, s1, f1;
  if (std::sscanf(cuda_bus_id.c_str(), "%x:%x:%x.%x", &d1, &b1, &s1, &f1) != 4) return -1;
  for (const PciDevice& p : r.topology->pci_devices) {
    unsigned d2, b2, s2, f2;
    if (std::sscanf(p.bus_id.c_str(), "%x:%x:%x.%x", &d2, &b2, &s2, &f2) == 4 && d1 == d2 &&
        b1 == b2 && s1 == s2 && f1 == f2) {
      return p.numa_node;
    }
  }
  return -1;
}

void find_problems(Report& r) {
  auto add = [&](std::string component, std::string severity, std::string message,
                 std::string fix) {
    r.problems.push_back(
        {std::move(component), std::move(severity), std::move(message), std::move(fix)});
  };
  const HostInfo& h = r.host;
  if (!h.cpu.has("avx2")) {
    add("cpu", "warn",
        "the CPU (or the OS) offers no AVX2: the CPU optimizer and dtype "
        "conversions run scalar code, several times slower",
        "run on a CPU with AVX2 or AVX-512 (and a kernel that enables it)");
  }
  if (h.memory.cgroup_limit_bytes && *h.memory.cgroup_limit_bytes < h.memory.total_bytes) {
    add("memory", "warn",
        absl::StrCat("the memory cgroup limits this process to ",
                     format_bytes(*h.memory.cgroup_limit_bytes), " of ",
                     format_bytes(h.memory.total_bytes), " RAM (", h.memory.cgroup_limit_file,
                     "); host-tier budgets are checked against it"),
        "raise the container's memory limit (docker --memory, systemd MemoryMax) if the plan "
        "needs more");
  }
  if (h.huge_pages.thp_enabled == "never") {
    add("huge_pages", "warn",
        "transparent huge pages are off: the host tier uses 4 KiB pages (more TLB misses in the "
        "CPU optimizer) unless hugetlbfs pages are reserved",
        "echo madvise > /sys/kernel/mm/transparent_hugepage/enabled (as root)");
  }
  if (!h.memlock.unlimited() && *h.memlock.soft_bytes < kMemlockWarnBytes) {
    add("memlock", "warn",
        absl::StrCat("RLIMIT_MEMLOCK is ", format_bytes(*h.memlock.soft_bytes),
                     ": the host tier cannot be locked and io_uring registered buffers are "
                     "capped at that size"),
        "ulimit -l unlimited, or a 'memlock' line in /etc/security/limits.conf; in docker "
        "--ulimit memlock=-1");
  }
  if (!r.topology.ok()) {
    add("topology", "warn",
        absl::StrCat("hwloc could not read the topology: ", r.topology.status().message()),
        "optimizer threads are not pinned per NUMA node; check that /sys is mounted");
  }
  if (!r.io_uring.ring_ok) {
    add("io_uring", "error", r.io_uring.why_not,
        "NVMe swap uses the thread-pool engine (--engine threads), which costs more CPU per "
        "request");
  } else if (!r.io_uring.io_test_ok) {
    add("io_uring", "error", r.io_uring.why_not,
        "check the directory's filesystem; NVMe swap uses the thread-pool engine meanwhile");
  } else if (!r.io_uring.registered_buffers_ok) {
    add("io_uring", "warn", r.io_uring.registered_buffers_error,
        "raise RLIMIT_MEMLOCK (ulimit -l unlimited); without registered buffers every request "
        "pins its pages again");
  }
  if (!r.direct_io.ok()) {
    add("direct_io", "error", absl::StrCat("--nvme-path: ", r.direct_io.status().message()),
        "pass --nvme-path with an existing, writable directory on the NVMe drive");
  } else {
    const swap::DirectIoProbe& d = *r.direct_io;
    if (!d.o_direct_ok) {
      add("direct_io", "error", d.why_not,
          "without O_DIRECT swap traffic goes through the page cache and competes with the host "
          "tier for RAM; use a local ext4 or xfs directory on the NVMe drive");
    }
    if (d.filesystem == "tmpfs" || d.filesystem == "ramfs") {
      add("direct_io", "warn",
          absl::StrCat(d.path, " is on ", d.filesystem,
                       ": swapping there only moves data from "
                       "RAM to RAM"),
          "pass --nvme-path with a directory on the NVMe drive");
    } else if (d.filesystem == "overlayfs") {
      add("direct_io", "warn",
          absl::StrCat(d.path,
                       " is on overlayfs (a container layer): slower, and O_DIRECT "
                       "depends on the layer below"),
          "bind-mount a directory of the NVMe drive into the container (docker -v) and use it");
    }
  }
  if (r.cuda.devices.empty()) {
    add("cuda", "warn", r.cuda.why_none, "training runs on --device cpu only");
  } else if (r.cuda.devices.size() > 1 && !r.nccl.available) {
    add("nccl", "warn", r.nccl.why_not,
        "multi-GPU runs need NCCL: install libnccl2 (the NVIDIA apt repository)");
  }
}

Report gather(const std::string& nvme_path_flag) {
  Report r;
  r.host = probe_host();
  r.topology = discover_topology();
  r.nvme_path = nvme_path_flag.empty() ? default_nvme_path() : nvme_path_flag;
  r.direct_io = swap::probe_direct_io(r.nvme_path);
  // An unusable --nvme-path is reported once, under direct_io; io_uring is
  // still worth knowing about, so it is tested in the temp directory instead.
  r.io_uring = swap::probe_io_uring(r.direct_io.ok() ? r.nvme_path : temp_dir());
  if (auto engine = swap::make_io_engine(swap::IoEngineOptions{}); engine.ok()) {
    r.io_engine = std::string((*engine)->name());
    r.io_engine_reason = (*engine)->selection_reason();
  } else {
    r.io_engine_reason = std::string(engine.status().message());
  }
  r.cuda = gpu::probe_cuda();
  r.nccl = gpu::probe_nccl();
  find_problems(r);
  return r;
}

json opt_bytes(const std::optional<uint64_t>& v) { return v ? json(*v) : json(nullptr); }

json to_json(const Report& r) {
  const BuildInfo& b = build_info();
  const HostInfo& h = r.host;
  json out;
  out["build"] = {{"version", std::string(b.version)},
                  {"git_revision", std::string(b.git_revision)},
                  {"build_type", std::string(b.build_type)},
                  {"compiler", std::string(b.compiler)},
                  {"cxx_flags", std::string(b.cxx_flags)},
                  {"cuda", b.cuda},
                  {"cuda_archs", std::string(b.cuda_archs)},
                  {"cuda_compiler_version", std::string(b.cuda_compiler_version)},
                  {"sanitizers", b.sanitizers}};

  json features = json::object();
  for (const CpuFeature& f : h.cpu.features) features[f.name] = f.supported;
  out["cpu"] = {{"model", h.cpu.model},
                {"vendor", h.cpu.vendor},
                {"online_cpus", h.cpu.online_cpus},
                {"allowed_cpus", h.cpu.allowed_cpus},
                {"features", features},
                {"dtype_conversion_isa", h.cpu.dtype_conversion_isa}};

  out["memory"] = {{"total_bytes", h.memory.total_bytes},
                   {"available_bytes", h.memory.available_bytes},
                   {"usable_bytes", h.memory.usable_bytes()},
                   {"cgroup",
                    {{"version", h.memory.cgroup_version},
                     {"limit_bytes", opt_bytes(h.memory.cgroup_limit_bytes)},
                     {"limit_file", h.memory.cgroup_limit_file}}},
                   {"huge_pages",
                    {{"thp_enabled", h.huge_pages.thp_enabled},
                     {"thp_defrag", h.huge_pages.thp_defrag},
                     {"hugetlb_total", h.huge_pages.total},
                     {"hugetlb_free", h.huge_pages.free},
                     {"hugetlb_page_size_bytes", h.huge_pages.page_size_bytes}}},
                   {"memlock",
                    {{"unlimited", h.memlock.unlimited()},
                     {"soft_bytes", opt_bytes(h.memlock.soft_bytes)},
                     {"hard_bytes", opt_bytes(h.memlock.hard_bytes)},
                     {"meaning", describe_memlock(h.memlock)}}}};

  if (r.topology.ok()) {
    const Topology& t = *r.topology;
    json nodes = json::array();
    for (const NumaNode& n : t.numa_nodes) {
      nodes.push_back(
          {{"os_index", n.os_index}, {"memory_bytes", n.memory_bytes}, {"cpus", n.cpus}});
    }
    out["numa"] = {{"nodes", nodes}};
    json caches = json::array();
    for (const CacheLevel& c : t.caches) {
      caches.push_back(
          {{"level", c.level}, {"kind", c.kind}, {"size_bytes", c.size_bytes}, {"count", c.count}});
    }
    json pci = json::array();
    for (const PciDevice& p : t.pci_devices) {
      pci.push_back({{"kind", std::string(pci_kind_name(p.kind))},
                     {"bus_id", p.bus_id},
                     {"vendor_id", absl::StrFormat("0x%04x", p.vendor_id)},
                     {"device_id", absl::StrFormat("0x%04x", p.device_id)},
                     {"class_id", absl::StrFormat("0x%04x", p.class_id)},
                     {"numa_node", p.numa_node},
                     {"os_devices", p.os_devices}});
    }
    out["topology"] = {{"packages", t.packages}, {"cores", t.cores},
                       {"pus", t.pus},           {"total_memory_bytes", t.total_memory_bytes},
                       {"caches", caches},       {"pci_devices", pci}};
  } else {
    const std::string err(r.topology.status().message());
    out["numa"] = {{"error", err}};
    out["topology"] = {{"error", err}};
  }

  const swap::IoUringProbe& u = r.io_uring;
  json opcodes = json::object();
  for (const auto& [name, ok] : u.opcodes) opcodes[name] = ok;
  out["io_uring"] = {{"available", u.works()},
                     {"ring_ok", u.ring_ok},
                     {"setup_errno", u.setup_errno},
                     {"io_uring_disabled_sysctl", u.io_uring_disabled},
                     {"feature_bits", u.feature_bits},
                     {"features", u.features},
                     {"opcodes", opcodes},
                     {"registered_buffers_ok", u.registered_buffers_ok},
                     {"test_dir", u.test_dir},
                     {"io_test_ok", u.io_test_ok},
                     {"why_not", u.why_not}};
  out["io_engine"] = {{"engine", r.io_engine.empty() ? json(nullptr) : json(r.io_engine)},
                      {"reason", r.io_engine_reason}};

  if (r.direct_io.ok()) {
    const swap::DirectIoProbe& d = *r.direct_io;
    out["direct_io"] = {{"path", d.path},
                        {"ok", d.o_direct_ok},
                        {"filesystem", d.filesystem},
                        {"fs_magic", absl::StrFormat("0x%x", d.fs_magic)},
                        {"total_bytes", d.total_bytes},
                        {"free_bytes", d.free_bytes},
                        {"fs_block_size", d.fs_block_size},
                        {"device", d.device},
                        {"logical_block_size", d.logical_block_size},
                        {"physical_block_size", d.physical_block_size},
                        {"alignment", d.alignment},
                        {"why_not", d.why_not}};
  } else {
    out["direct_io"] = {{"path", r.nvme_path},
                        {"ok", false},
                        {"error", std::string(r.direct_io.status().message())}};
  }

  json devices = json::array();
  for (const gpu::CudaDeviceInfo& d : r.cuda.devices) {
    devices.push_back({{"index", d.index},
                       {"name", d.name},
                       {"compute_capability", absl::StrCat(d.compute_major, ".", d.compute_minor)},
                       {"total_memory_bytes", d.total_memory_bytes},
                       {"multiprocessors", d.multiprocessors},
                       {"pci_bus_id", d.pci_bus_id},
                       {"numa_node", cuda_numa_node(r, d.pci_bus_id)}});
  }
  out["cuda"] = {{"compiled", r.cuda.compiled},
                 {"runtime_version", gpu::cuda_version_string(r.cuda.runtime_version)},
                 {"driver_version", gpu::cuda_version_string(r.cuda.driver_version)},
                 {"devices", devices},
                 {"why_none", r.cuda.why_none}};
  out["nccl"] = {
      {"available", r.nccl.available}, {"version", r.nccl.version}, {"why_not", r.nccl.why_not}};

  json problems = json::array();
  for (const Problem& p : r.problems) {
    problems.push_back({{"component", p.component},
                        {"severity", p.severity},
                        {"message", p.message},
                        {"fix", p.fix}});
  }
  out["problems"] = problems;
  return out;
}

// ---- human output (stderr), ds_report style ----

enum class Mark { kNone, kOk, kWarn, kNo };

void line(std::string_view label, Mark mark, const std::string& value) {
  constexpr size_t kWidth = 30;
  std::string left = absl::StrCat(std::string(label), " ");
  if (left.size() < kWidth) left.append(kWidth - left.size(), '.');
  const char* m = mark == Mark::kOk     ? "[OK]   "
                  : mark == Mark::kWarn ? "[WARN] "
                  : mark == Mark::kNo   ? "[NO]   "
                                        : "       ";
  std::fprintf(stderr, "  %s %s%s\n", left.c_str(), m, value.c_str());
}

void section(const char* name) { std::fprintf(stderr, "%s\n", name); }

Mark ok_or(bool ok, Mark otherwise) { return ok ? Mark::kOk : otherwise; }

void print_human(const Report& r) {
  const BuildInfo& b = build_info();
  const HostInfo& h = r.host;
  std::fprintf(stderr, "strata report\n%s\n", std::string(72, '-').c_str());

  section("build");
  line("version", Mark::kNone,
       absl::StrCat(std::string(b.version), " (", std::string(b.git_revision), ", ",
                    std::string(b.build_type), b.sanitizers ? ", sanitizers" : "", ")"));
  line("compiler", Mark::kNone, std::string(b.compiler));
  line("flags", Mark::kNone, std::string(b.cxx_flags));
  line("CUDA support", ok_or(b.cuda, Mark::kNo),
       b.cuda ? absl::StrCat("on, archs ", std::string(b.cuda_archs), ", nvcc ",
                             std::string(b.cuda_compiler_version))
              : "off (built with STRATA_CUDA=OFF)");

  section("cpu");
  line("model", Mark::kNone, absl::StrCat(h.cpu.model, " (", h.cpu.vendor, ")"));
  line("logical cpus", Mark::kNone,
       absl::StrCat(h.cpu.online_cpus, " online, ", h.cpu.allowed_cpus, " allowed"));
  for (const CpuFeature& f : h.cpu.features) {
    line(f.name, ok_or(f.supported, Mark::kNo), f.supported ? "yes" : "no");
  }
  line("dtype conversions use", ok_or(h.cpu.dtype_conversion_isa != "scalar", Mark::kWarn),
       h.cpu.dtype_conversion_isa);

  section("memory");
  line("total", Mark::kNone, format_bytes(h.memory.total_bytes));
  line("available", Mark::kNone, format_bytes(h.memory.available_bytes));
  line("cgroup limit", Mark::kNone,
       h.memory.cgroup_limit_bytes
           ? absl::StrCat(format_bytes(*h.memory.cgroup_limit_bytes), " (cgroup v",
                          h.memory.cgroup_version, ", ", h.memory.cgroup_limit_file, ")")
           : (h.memory.cgroup_version != 0
                  ? absl::StrCat("none (cgroup v", h.memory.cgroup_version, ")")
                  : "none"));
  line("usable by the host tier", Mark::kNone, format_bytes(h.memory.usable_bytes()));
  line("transparent huge pages", ok_or(h.huge_pages.thp_enabled != "never", Mark::kWarn),
       absl::StrCat(h.huge_pages.thp_enabled.empty() ? "unknown" : h.huge_pages.thp_enabled,
                    " (defrag ", h.huge_pages.thp_defrag, ")"));
  line("hugetlb pages", Mark::kNone,
       absl::StrCat(h.huge_pages.free, " free of ", h.huge_pages.total, ", ",
                    format_bytes(h.huge_pages.page_size_bytes), " each"));
  line("RLIMIT_MEMLOCK",
       ok_or(h.memlock.unlimited() || *h.memlock.soft_bytes >= kMemlockWarnBytes, Mark::kWarn),
       describe_memlock(h.memlock));

  section("topology (hwloc)");
  if (!r.topology.ok()) {
    line("topology", Mark::kWarn, std::string(r.topology.status().message()));
  } else {
    const Topology& t = *r.topology;
    line("packages / cores / PUs", Mark::kNone,
         absl::StrCat(t.packages, " / ", t.cores, " / ", t.pus));
    for (const NumaNode& n : t.numa_nodes) {
      line(absl::StrCat("numa node ", n.os_index), Mark::kNone,
           absl::StrCat(format_bytes(n.memory_bytes), ", cpus ", cpu_list(n.cpus)));
    }
    for (const CacheLevel& c : t.caches) {
      std::string name = absl::StrCat("L", c.level,
                                      c.kind == "data"          ? "d"
                                      : c.kind == "instruction" ? "i"
                                                                : "");
      line(name, Mark::kNone, absl::StrCat(format_bytes(c.size_bytes), " x ", c.count));
    }
    if (t.pci_devices.empty()) {
      line("GPUs / NVMe (PCI)", Mark::kNone, "none visible (no PCI information here)");
    }
    for (const PciDevice& p : t.pci_devices) {
      line(absl::StrCat(std::string(pci_kind_name(p.kind)), " ", p.bus_id), Mark::kNone,
           absl::StrFormat("%04x:%04x, numa node %s%s", p.vendor_id, p.device_id,
                           p.numa_node < 0 ? "unknown" : absl::StrCat(p.numa_node),
                           p.os_devices.empty()
                               ? ""
                               : absl::StrCat(" (", absl::StrJoin(p.os_devices, ", "), ")")));
    }
  }

  section("io_uring");
  const swap::IoUringProbe& u = r.io_uring;
  line("ring setup", ok_or(u.ring_ok, Mark::kNo), u.ring_ok ? "ok" : u.why_not);
  if (u.ring_ok) {
    line("features", Mark::kNone, absl::StrJoin(u.features, " "));
    std::vector<std::string> missing;
    std::vector<std::string> have;
    for (const auto& [name, ok] : u.opcodes) (ok ? have : missing).push_back(name);
    line("opcodes", ok_or(missing.empty() && !u.opcodes.empty(), Mark::kWarn),
         u.opcodes.empty()
             ? "kernel cannot be probed (before 5.6)"
             : absl::StrCat(absl::StrJoin(have, " "),
                            missing.empty() ? "" : "; missing: ", absl::StrJoin(missing, " ")));
    line("registered buffers", ok_or(u.registered_buffers_ok, Mark::kWarn),
         u.registered_buffers_ok ? "ok (64 KiB)" : u.registered_buffers_error);
    line("write+fsync+read", ok_or(u.io_test_ok, Mark::kNo),
         u.io_test_ok ? absl::StrCat("ok in ", u.test_dir) : u.why_not);
  }
  line("swap engine", ok_or(!r.io_engine.empty(), Mark::kNo),
       r.io_engine.empty() ? r.io_engine_reason
                           : absl::StrCat(r.io_engine, " (", r.io_engine_reason, ")"));

  section("direct I/O (--nvme-path)");
  if (!r.direct_io.ok()) {
    line(r.nvme_path, Mark::kNo, std::string(r.direct_io.status().message()));
  } else {
    const swap::DirectIoProbe& d = *r.direct_io;
    line("path", Mark::kNone, d.path);
    line("filesystem", Mark::kNone, absl::StrFormat("%s (0x%x)", d.filesystem, d.fs_magic));
    line("free space", Mark::kNone,
         absl::StrCat(format_bytes(d.free_bytes), " of ", format_bytes(d.total_bytes)));
    line("device", Mark::kNone,
         d.logical_block_size != 0
             ? absl::StrCat(d.device, ", logical block ", d.logical_block_size, " B, physical ",
                            d.physical_block_size, " B")
             : absl::StrCat(d.device, " (no block device), fs block ", d.fs_block_size, " B"));
    line("O_DIRECT write+read", ok_or(d.o_direct_ok, Mark::kNo),
         d.o_direct_ok ? absl::StrCat("ok (", d.alignment, " B aligned)") : d.why_not);
  }

  section("cuda");
  line("runtime / driver", Mark::kNone,
       absl::StrCat(gpu::cuda_version_string(r.cuda.runtime_version), " / ",
                    gpu::cuda_version_string(r.cuda.driver_version)));
  if (r.cuda.devices.empty()) line("devices", Mark::kNo, r.cuda.why_none);
  for (const gpu::CudaDeviceInfo& d : r.cuda.devices) {
    int node = cuda_numa_node(r, d.pci_bus_id);
    line(absl::StrCat("device ", d.index), Mark::kOk,
         absl::StrCat(d.name, ", sm_", d.compute_major, d.compute_minor, ", ",
                      format_bytes(d.total_memory_bytes), ", ", d.multiprocessors, " SMs, ",
                      d.pci_bus_id, node >= 0 ? absl::StrCat(", numa node ", node) : ""));
  }
  line("NCCL", ok_or(r.nccl.available, Mark::kNo),
       r.nccl.available ? r.nccl.version : r.nccl.why_not);

  std::fprintf(stderr, "problems (%zu)\n", r.problems.size());
  if (r.problems.empty()) std::fprintf(stderr, "  none\n");
  for (const Problem& p : r.problems) {
    std::fprintf(stderr, "  %s %s: %s\n         -> %s\n",
                 p.severity == "error" ? "[NO]  " : "[WARN]", p.component.c_str(),
                 p.message.c_str(), p.fix.c_str());
  }
}

}  // namespace

void add_report_command(CLI::App& app, int* exit_code) {
  auto* cmd = app.add_subcommand("report",
                                 "What this box can do: build, CPU, memory, topology, "
                                 "io_uring, O_DIRECT, CUDA, NCCL, and problems found");
  auto json_out = std::make_shared<bool>(false);
  auto nvme_path = std::make_shared<std::string>();
  cmd->add_flag("--json", *json_out, "print one JSON object on stdout");
  cmd->add_option("--nvme-path", *nvme_path,
                  "directory to test io_uring and O_DIRECT in (default: the current directory, "
                  "else /tmp)");
  cmd->callback([=] {
    Report r = gather(*nvme_path);
    if (*json_out) {
      print_json(to_json(r));
    } else {
      print_human(r);
    }
    // Problems are findings, not failures: the report itself succeeded.
    *exit_code = 0;
  });
}

}  // namespace strata::tools
