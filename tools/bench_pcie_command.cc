// strata bench pcie: host <-> GPU copy bandwidth over the PCIe (or C2C)
// link, from pinned (cudaHostRegister) and pageable host memory, one way
// each (H2D, D2H) and both ways at once on two streams (bidirectional).
// Each figure is the best of --repeats timed copies after one warm-up; a
// copy is timed from enqueue to stream synchronisation on the host clock.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "gpu/cuda_info.h"
#include "gpu/device.h"
#include "tools/cli_util.h"
#include "tools/commands.h"

namespace strata::tools {
namespace {

struct PcieOptions {
  uint64_t size = uint64_t{256} << 20;
  int repeats = 5;
  int device = 0;
};

struct LinkResult {
  double h2d_gb_per_s = 0, d2h_gb_per_s = 0, bidir_gb_per_s = 0;
};

struct HostBuffer {
  void* ptr = nullptr;
  gpu::Device* pinned_on = nullptr;
  ~HostBuffer() {
    if (pinned_on != nullptr) (void)pinned_on->unregister_host_memory(ptr);
    std::free(ptr);
  }
};

struct DeviceBuffer {
  void* ptr = nullptr;
  gpu::Device* device = nullptr;
  ~DeviceBuffer() {
    if (device != nullptr) device->free(ptr);
  }
};

struct StreamGuard {
  gpu::Device& device;
  gpu::StreamId id;
  ~StreamGuard() { device.destroy_stream(id); }
};

absl::Status alloc_host(HostBuffer& buf, uint64_t size, gpu::Device* pin_on) {
  const uint64_t rounded = (size + 4095) / 4096 * 4096;
  buf.ptr = std::aligned_alloc(4096, rounded);
  if (buf.ptr == nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat("cannot allocate ",
                                                     format_bytes(static_cast<double>(size)),
                                                     " of host memory; pass a smaller --size"));
  }
  std::memset(buf.ptr, 0x5a, rounded);  // fault the pages in before timing
  if (pin_on != nullptr) {
    STRATA_RETURN_IF_ERROR(pin_on->register_host_memory(buf.ptr, rounded), "pinning a host buffer");
    buf.pinned_on = pin_on;
  }
  return absl::OkStatus();
}

absl::Status alloc_device(DeviceBuffer& buf, gpu::Device& device, uint64_t size) {
  STRATA_ASSIGN_OR_RETURN(buf.ptr, device.allocate(size), "allocating the device buffer");
  buf.device = &device;
  return absl::OkStatus();
}

using Clock = std::chrono::steady_clock;

// Best bytes/s over `repeats` runs of `run` (after one warm-up), where one
// run moves `bytes`.
template <typename Fn>
absl::StatusOr<double> best_rate(int repeats, double bytes, Fn run) {
  STRATA_RETURN_IF_ERROR(run(), "warm-up copy");
  double best = 0;
  for (int i = 0; i < repeats; ++i) {
    const auto start = Clock::now();
    STRATA_RETURN_IF_ERROR(run());
    const double s = std::chrono::duration<double>(Clock::now() - start).count();
    if (s > 0 && bytes / s > best) best = bytes / s;
  }
  return best;
}

absl::StatusOr<LinkResult> measure(gpu::Device& device, const PcieOptions& o, bool pinned) {
  HostBuffer up, down;
  STRATA_RETURN_IF_ERROR(alloc_host(up, o.size, pinned ? &device : nullptr));
  STRATA_RETURN_IF_ERROR(alloc_host(down, o.size, pinned ? &device : nullptr));
  DeviceBuffer dev_a, dev_b;
  STRATA_RETURN_IF_ERROR(alloc_device(dev_a, device, o.size));
  STRATA_RETURN_IF_ERROR(alloc_device(dev_b, device, o.size));
  STRATA_ASSIGN_OR_RETURN(gpu::StreamId s1, device.create_stream());
  StreamGuard guard1{device, s1};
  STRATA_ASSIGN_OR_RETURN(gpu::StreamId s2, device.create_stream());
  StreamGuard guard2{device, s2};

  const double bytes = static_cast<double>(o.size);
  LinkResult r;
  STRATA_ASSIGN_OR_RETURN(
      r.h2d_gb_per_s, best_rate(o.repeats, bytes, [&]() -> absl::Status {
        STRATA_RETURN_IF_ERROR(device.copy_to_device(dev_a.ptr, up.ptr, o.size, s1));
        return device.synchronize_stream(s1);
      }));
  STRATA_ASSIGN_OR_RETURN(
      r.d2h_gb_per_s, best_rate(o.repeats, bytes, [&]() -> absl::Status {
        STRATA_RETURN_IF_ERROR(device.copy_to_host(down.ptr, dev_b.ptr, o.size, s2));
        return device.synchronize_stream(s2);
      }));
  STRATA_ASSIGN_OR_RETURN(
      r.bidir_gb_per_s, best_rate(o.repeats, 2 * bytes, [&]() -> absl::Status {
        STRATA_RETURN_IF_ERROR(device.copy_to_device(dev_a.ptr, up.ptr, o.size, s1));
        STRATA_RETURN_IF_ERROR(device.copy_to_host(down.ptr, dev_b.ptr, o.size, s2));
        STRATA_RETURN_IF_ERROR(device.synchronize_stream(s1));
        return device.synchronize_stream(s2);
      }));
  r.h2d_gb_per_s /= 1e9;
  r.d2h_gb_per_s /= 1e9;
  r.bidir_gb_per_s /= 1e9;
  return r;
}

absl::Status run_pcie(const PcieOptions& o, bool json) {
  const gpu::CudaInfo info = gpu::probe_cuda();
  if (info.devices.empty()) {
    return absl::FailedPreconditionError(absl::StrCat("no GPU: ", info.why_none));
  }
  if (o.device < 0 || o.device >= static_cast<int>(info.devices.size())) {
    return absl::InvalidArgumentError(absl::StrCat("--device ", o.device, " does not exist; ",
                                                   "this machine has ", info.devices.size(),
                                                   " GPU(s)"));
  }
  const gpu::CudaDeviceInfo& d = info.devices[o.device];
  STRATA_ASSIGN_OR_RETURN(std::unique_ptr<gpu::Device> device, gpu::make_cuda_device(o.device));
  STRATA_ASSIGN_OR_RETURN(LinkResult pinned, measure(*device, o, true), "pinned host memory");
  STRATA_ASSIGN_OR_RETURN(LinkResult pageable, measure(*device, o, false), "pageable host memory");
  auto to_json = [](const LinkResult& r) {
    return nlohmann::json{{"h2d_gb_per_s", r.h2d_gb_per_s},
                          {"d2h_gb_per_s", r.d2h_gb_per_s},
                          {"bidir_gb_per_s", r.bidir_gb_per_s}};
  };
  if (json) {
    print_json({{"device", {{"index", d.index}, {"name", d.name}, {"pci_bus_id", d.pci_bus_id}}},
                {"size_bytes", o.size},
                {"repeats", o.repeats},
                {"pinned", to_json(pinned)},
                {"pageable", to_json(pageable)}});
    return absl::OkStatus();
  }
  std::fprintf(stderr, "PCIe bandwidth, GPU %d (%s, %s), %s per copy, best of %d\n", d.index,
               d.name.c_str(), d.pci_bus_id.c_str(),
               format_bytes(static_cast<double>(o.size)).c_str(), o.repeats);
  std::fprintf(stderr, "  %-9s %10s %10s %10s\n", "host mem", "H2D GB/s", "D2H GB/s", "bidir GB/s");
  for (const auto& [name, r] : {std::pair<const char*, LinkResult>{"pinned", pinned},
                                std::pair<const char*, LinkResult>{"pageable", pageable}}) {
    std::fprintf(stderr, "  %-9s %10.2f %10.2f %10.2f\n", name, r.h2d_gb_per_s, r.d2h_gb_per_s,
                 r.bidir_gb_per_s);
  }
  return absl::OkStatus();
}

}  // namespace

void add_bench_pcie_command(CLI::App& bench, int* exit_code) {
  auto* cmd = bench.add_subcommand(
      "pcie", "Host <-> GPU copy bandwidth: pinned and pageable, H2D, D2H and bidirectional");
  auto opts = std::make_shared<PcieOptions>();
  auto json = std::make_shared<bool>(false);
  cmd->add_option("--size", opts->size,
                  "bytes per copy, e.g. 268435456 or 256MiB (default 256 MiB)")
      ->transform(byte_size(4096, uint64_t{1} << 36));
  cmd->add_option("--repeats", opts->repeats, "timed copies per figure; the best is reported")
      ->check(CLI::Range(1, 1000));
  cmd->add_option("--gpu", opts->device, "CUDA device index (default 0)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_flag("--json", *json, "print one JSON object on stdout");
  cmd->callback([=] { *exit_code = report_status(run_pcie(*opts, *json)); });
}

}  // namespace strata::tools
