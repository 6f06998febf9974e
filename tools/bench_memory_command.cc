// strata bench memory: DRAM bandwidth (copy, triad, Adam-like stream).
#include <cstdio>

#include "core/memory_bandwidth.h"
#include "tools/cli_util.h"
#include "tools/commands.h"

namespace strata::tools {

void add_bench_memory_command(CLI::App& bench, int* exit_code) {
  auto* cmd =
      bench.add_subcommand("memory", "DRAM bandwidth: copy, triad and the 28 B/param Adam stream");
  auto opts = std::make_shared<MemoryBandwidthOptions>();
  auto json = std::make_shared<bool>(false);
  cmd->add_option("--elements", opts->elements, "elements per array (default 32Mi)")
      ->check(CLI::Range(size_t{1} << 16, size_t{1} << 34));
  cmd->add_option("--threads", opts->threads, "threads (0 = all cores)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--repeats", opts->repeats, "timed runs; the best is reported")
      ->check(CLI::Range(1, 1000));
  cmd->add_flag("--json", *json, "print one JSON object on stdout");
  cmd->callback([=] {
    auto results = measure_memory_bandwidth(*opts);
    if (!results.ok()) {
      *exit_code = report_status(results.status());
      return;
    }
    if (*json) {
      nlohmann::json out = {{"threads", results->front().threads},
                            {"elements", results->front().elements}};
      for (const BandwidthResult& r : *results) {
        out[r.kernel] = {{"gb_per_s", r.gb_per_s},
                         {"bytes_per_element", r.bytes_per_element},
                         {"best_seconds", r.best_seconds}};
      }
      print_json(out);
    } else {
      std::fprintf(stderr, "DRAM bandwidth, %d threads, %zu elements per array, best of %d\n",
                   results->front().threads, results->front().elements, opts->repeats);
      for (const BandwidthResult& r : *results) {
        std::fprintf(stderr, "  %-6s %7.2f GB/s  (%2zu B/element, %.3f ms)\n", r.kernel.c_str(),
                     r.gb_per_s, r.bytes_per_element, r.best_seconds * 1e3);
      }
    }
    *exit_code = 0;
  });
}

}  // namespace strata::tools
