// strata bench store: a synthetic offloaded training step on SimDevice.
#include <cstdio>

#include "offload/store_benchmark.h"
#include "tools/cli_util.h"
#include "tools/commands.h"

namespace strata::tools {

void add_bench_store_command(CLI::App& bench, int* exit_code) {
  auto* cmd = bench.add_subcommand(
      "store", "Synthetic offloaded step on SimDevice: step time vs its slowest resource");
  auto o = std::make_shared<offload::StoreBenchmarkOptions>();
  auto layer_mb = std::make_shared<double>(16);
  auto json = std::make_shared<bool>(false);
  cmd->add_option("--layers", o->layers, "layers")->check(CLI::Range(2, 4096));
  cmd->add_option("--layer-mb", *layer_mb, "fp16 parameter MiB per layer")
      ->check(finite_number({.min = 0.01, .max = 65536.0}));
  // A modelled duration is slept: a minute a layer is already far beyond a real one.
  const DoubleRange ms{.min = 0, .max = 60'000};
  cmd->add_option("--fwd-ms", o->forward_ms_per_layer, "modelled forward ms per layer")
      ->check(finite_number(ms));
  cmd->add_option("--bwd-ms", o->backward_ms_per_layer, "modelled backward ms per layer")
      ->check(finite_number(ms));
  cmd->add_option("--optimizer-ms", o->optimizer_ms_per_layer, "modelled optimizer ms per layer")
      ->check(finite_number(ms));
  // 0 GB/s would model a link that never delivers.
  cmd->add_option("--link-gbps", o->link_gb_per_s, "modelled PCIe GB/s per direction")
      ->check(finite_number({.min = 0.001, .max = 1e6}));
  cmd->add_option("--device-layers", o->device_layers, "device budget in layers")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--host-state-layers", o->host_state_layers,
                  "host budget for NVMe-homed states, in layers")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--steps", o->steps, "steps (the first records the trace)")
      ->check(CLI::Range(2, 1000));
  cmd->add_option("--nvme-path", o->nvme_dir, "directory for the swap file")
      ->check(CLI::ExistingDirectory);
  cmd->add_flag("--json", *json, "print one JSON object on stdout");
  cmd->callback([=] {
    o->layer_param_bytes = static_cast<uint64_t>(*layer_mb * (1 << 20)) & ~uint64_t{4095};
    auto r = offload::run_store_benchmark(*o);
    if (!r.ok()) {
      *exit_code = report_status(r.status());
      return;
    }
    nlohmann::json steps = nlohmann::json::array();
    for (const auto& s : r->steps) {
      steps.push_back({{"step_seconds", s.step_seconds},
                       {"compute_seconds", s.compute_seconds},
                       {"h2d_seconds", s.h2d_seconds},
                       {"d2h_seconds", s.d2h_seconds},
                       {"nvme_read_seconds", s.nvme_read_seconds},
                       {"nvme_write_seconds", s.nvme_write_seconds},
                       {"nvme_seconds", s.nvme_seconds},
                       {"nvme_read_bytes", s.nvme_read_bytes},
                       {"nvme_write_bytes", s.nvme_write_bytes},
                       {"optimizer_seconds", s.optimizer_seconds},
                       {"slowest", s.slowest},
                       {"slowest_seconds", s.slowest_seconds},
                       {"ratio", s.ratio},
                       {"device_stall_seconds", s.device_stall_seconds},
                       {"host_stall_seconds", s.host_stall_seconds},
                       {"device_hits", s.device_hits},
                       {"device_misses", s.device_misses},
                       {"host_hits", s.host_hits},
                       {"host_misses", s.host_misses}});
    }
    if (*json) {
      print_json({{"layers", o->layers},
                  {"layer_param_bytes", o->layer_param_bytes},
                  {"io_engine", r->io_engine},
                  {"nvme_read_gb_per_s", r->nvme_read_gb_per_s},
                  {"nvme_write_gb_per_s", r->nvme_write_gb_per_s},
                  {"steps", steps}});
    } else {
      std::fprintf(stderr,
                   "synthetic step: %d layers x %s fp16 params, states on NVMe (%s: read %.2f "
                   "GB/s, write %.2f GB/s), link %.0f GB/s\n",
                   o->layers, format_bytes(o->layer_param_bytes).c_str(), r->io_engine.c_str(),
                   r->nvme_read_gb_per_s, r->nvme_write_gb_per_s, o->link_gb_per_s);
      std::fprintf(stderr,
                   "step   wall s  compute   h2d     d2h   nvme_rd  nvme_wr  nvme     slowest      "
                   "ratio  stall(dev/host) s   (NVMe: busy time)\n");
      int i = 0;
      for (const auto& s : r->steps) {
        std::fprintf(
            stderr,
            "%4d  %7.3f  %7.3f %7.3f %7.3f  %7.3f  %7.3f  %7.3f  %-11s %6.3f  %.3f/%.3f%s\n", i,
            s.step_seconds, s.compute_seconds, s.h2d_seconds, s.d2h_seconds, s.nvme_read_seconds,
            s.nvme_write_seconds, s.nvme_seconds, s.slowest.c_str(), s.ratio,
            s.device_stall_seconds, s.host_stall_seconds, i == 0 ? "  (records the trace)" : "");
        ++i;
      }
    }
    *exit_code = 0;
  });
}

}  // namespace strata::tools
