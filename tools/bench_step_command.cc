// strata bench step: a GPT-2-shaped training step on SimDevice, sync vs overlap.
// --world-size N: N data-parallel ranks (threads, Gloo over loopback, each
// its own SimDevice and modelled link; engine/step_benchmark.h), then the
// same shape on one rank, to print each rank's PCIe and host bytes beside
// one rank's (the ratio ZeRO's partitioning should bring to about 1/N).
#include <cstdio>

#include "absl/strings/str_format.h"
#include "core/config/ds_config.h"
#include "engine/step_benchmark.h"
#include "model/gpt2_config.h"
#include "tools/cli_util.h"
#include "tools/commands.h"

namespace strata::tools {
namespace {

nlohmann::json step_json(const engine::StepBenchmarkStep& s) {
  return {{"step_seconds", s.step_seconds},
          {"compute_seconds", s.compute_seconds},
          {"h2d_seconds", s.h2d_seconds},
          {"d2h_seconds", s.d2h_seconds},
          {"cpu_seconds", s.host_seconds},
          {"nvme_read_seconds", s.nvme_read_seconds},
          {"nvme_write_seconds", s.nvme_write_seconds},
          {"nvme_seconds", s.nvme_seconds},
          {"nvme_read_bytes", s.nvme_read_bytes},
          {"nvme_write_bytes", s.nvme_write_bytes},
          {"optimizer_seconds", s.optimizer_seconds},
          {"optimizer_bytes", s.optimizer_bytes},
          {"h2d_bytes", s.h2d_bytes},
          {"d2h_bytes", s.d2h_bytes},
          {"host_bytes", s.host_bytes},
          {"host_plan_bytes", s.host_plan_bytes},
          {"optimizer_gb_per_s", s.optimizer_gb_per_s},
          {"slowest", s.slowest},
          {"slowest_seconds", s.slowest_seconds},
          {"ratio", s.ratio},
          {"speculative_layers", s.speculative_layers},
          {"rolled_back_layers", s.rolled_back_layers},
          {"host_syncs", s.host_syncs},
          {"device_syncs", s.device_syncs},
          {"device_allocations", s.device_allocations}};
}

// Mean of the steps after the first (which records the store's trace).
engine::StepBenchmarkStep steady(const engine::StepBenchmarkMode& m, int64_t params) {
  engine::StepBenchmarkStep a;
  const double n = static_cast<double>(m.steps.size() - 1);
  for (size_t i = 1; i < m.steps.size(); ++i) {
    const auto& s = m.steps[i];
    a.step_seconds += s.step_seconds / n;
    a.compute_seconds += s.compute_seconds / n;
    a.h2d_seconds += s.h2d_seconds / n;
    a.d2h_seconds += s.d2h_seconds / n;
    a.host_seconds += s.host_seconds / n;
    a.nvme_read_seconds += s.nvme_read_seconds / n;
    a.nvme_write_seconds += s.nvme_write_seconds / n;
    a.nvme_seconds += s.nvme_seconds / n;
    a.nvme_read_bytes += s.nvme_read_bytes / n;
    a.nvme_write_bytes += s.nvme_write_bytes / n;
    a.optimizer_seconds += s.optimizer_seconds / n;
    a.optimizer_bytes += s.optimizer_bytes / n;
    a.h2d_bytes += s.h2d_bytes / n;
    a.d2h_bytes += s.d2h_bytes / n;
    a.host_bytes += s.host_bytes / n;
    a.host_plan_bytes += s.host_plan_bytes / n;
    a.ranks.resize(s.ranks.size());
    for (size_t r = 0; r < s.ranks.size(); ++r) {
      a.ranks[r].h2d_bytes += s.ranks[r].h2d_bytes / n;
      a.ranks[r].d2h_bytes += s.ranks[r].d2h_bytes / n;
      a.ranks[r].host_bytes += s.ranks[r].host_bytes / n;
      a.ranks[r].host_plan_bytes += s.ranks[r].host_plan_bytes / n;
      a.ranks[r].optimizer_bytes += s.ranks[r].optimizer_bytes / n;
    }
    a.host_syncs += s.host_syncs / n;
    a.device_syncs += s.device_syncs / n;
    a.device_allocations += s.device_allocations / n;
  }
  // The rate of the mean bytes over the mean time (the optimizer's passes
  // as the engine counted them: 28 B/param fused, more with rollbacks).
  if (a.optimizer_seconds > 0) a.optimizer_gb_per_s = a.optimizer_bytes / a.optimizer_seconds / 1e9;
  a.rate_against_slowest();
  return a;
}

// Each rank's steady bytes against one rank's: {"rank": r, "<what>": bytes,
// "<what>_ratio": bytes / one rank's}.
nlohmann::json rank_bytes_json(const engine::StepBenchmarkStep& ranks,
                               const engine::StepBenchmarkStep& one) {
  nlohmann::json out = nlohmann::json::array();
  auto ratio = [](double a, double b) { return b > 0 ? a / b : 0.0; };
  for (size_t r = 0; r < ranks.ranks.size(); ++r) {
    const engine::StepBenchmarkRankBytes& b = ranks.ranks[r];
    out.push_back({{"rank", r},
                   {"h2d_bytes", b.h2d_bytes},
                   {"d2h_bytes", b.d2h_bytes},
                   {"pcie_bytes", b.h2d_bytes + b.d2h_bytes},
                   {"host_bytes", b.host_bytes},
                   {"host_plan_bytes", b.host_plan_bytes},
                   {"optimizer_bytes", b.optimizer_bytes},
                   {"pcie_ratio", ratio(b.h2d_bytes + b.d2h_bytes, one.h2d_bytes + one.d2h_bytes)},
                   {"h2d_ratio", ratio(b.h2d_bytes, one.h2d_bytes)},
                   {"d2h_ratio", ratio(b.d2h_bytes, one.d2h_bytes)},
                   {"host_ratio", ratio(b.host_bytes, one.host_bytes)},
                   {"optimizer_ratio", ratio(b.optimizer_bytes, one.optimizer_bytes)}});
  }
  return out;
}

}  // namespace

void add_bench_step_command(CLI::App& bench, int* exit_code) {
  auto* cmd = bench.add_subcommand(
      "step",
      "A GPT-2-shaped step on SimDevice through the engine: sync vs overlap, each "
      "against its slowest resource");
  auto o = std::make_shared<engine::StepBenchmarkOptions>();
  auto model = std::make_shared<std::string>("gpt2-xl");
  auto json = std::make_shared<bool>(false);
  cmd->add_option("--model", *model, "layer list of this GPT-2 (default gpt2-xl)");
  cmd->add_option("--width-divisor", o->width_divisor,
                  "divide the width so the model fits this machine (default 4)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--micro-batch", o->micro_batch, "sequences per micro-batch (8)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--seq-len", o->seq_len, "tokens per sequence (1024)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--gas", o->gradient_accumulation_steps, "gradient accumulation steps (1)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--tflops", o->tflops, "modelled device TFLOPS (150)")
      ->check(finite_number({.min = 0.001, .max = 1e6}));
  cmd->add_option("--link-gbps", o->link_gb_per_s, "modelled PCIe GB/s each way (50)")
      ->check(finite_number({.min = 0.001, .max = 1e6}));
  cmd->add_option("--offload", o->offload, "offload_optimizer.device: cpu or nvme (cpu)")
      ->check(CLI::IsMember({"cpu", "nvme"}));
  cmd->add_option("--precision", o->precision, "fp16 or bf16 (fp16)")
      ->check(CLI::IsMember({"fp16", "bf16"}));
  cmd->add_option("--nvme-path", o->nvme_dir, "directory for the NVMe swap file (/tmp)")
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--reduce-bucket-size", o->reduce_bucket_size,
                  "elements per gradient bucket (zero_optimization.reduce_bucket_size; unset: "
                  "about eight buckets per model)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--steps", o->steps, "steps per mode; the first records the trace (4)")
      ->check(CLI::Range(2, 100));
  cmd->add_option("--threads", o->cpu_threads, "CPU optimizer threads (all cores)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_flag("--no-device-costs{false}", o->device_costs,
                "charge nothing for host syncs, device syncs, pageable copies and launches");
  cmd->add_option("--world-size", o->world_size,
                  "data-parallel ranks, threads of this process with a modelled link each; "
                  "compared with one rank (1)")
      ->check(CLI::Range(1, 64));
  cmd->add_option("--zero-stage", o->zero_stage,
                  "zero_optimization.stage, 1 to 3 (2); the optimizer is offloaded")
      ->check(CLI::Range(1, 3));
  cmd->add_flag("--json", *json, "print one JSON object on stdout");
  cmd->callback([=] {
    auto shape = model::gpt2_config_by_name(*model);
    if (!shape.ok()) {
      *exit_code = report_status(shape.status());
      return;
    }
    o->n_layer = shape->n_layer;
    o->n_embd = shape->n_embd;
    o->vocab_size = shape->vocab_size;
    o->positions = shape->seq_len;
    auto r = engine::run_step_benchmark(*o);
    if (!r.ok()) {
      *exit_code = report_status(r.status());
      return;
    }
    nlohmann::json modes = nlohmann::json::object();
    std::fprintf(stderr,
                 "%s layer list, width %lld (/%lld), %.1fM params; B=%lld T=%lld gas %lld; device "
                 "%.0f TFLOPS, link %.0f GB/s, CUDA costs %s; %s, ZeRO stage %d, optimizer "
                 "offload %s\n",
                 model->c_str(), static_cast<long long>(r->width),
                 static_cast<long long>(o->width_divisor), static_cast<double>(r->params) / 1e6,
                 static_cast<long long>(o->micro_batch), static_cast<long long>(o->seq_len),
                 static_cast<long long>(o->gradient_accumulation_steps), o->tflops,
                 o->link_gb_per_s, o->device_costs ? "charged" : "off", o->precision.c_str(),
                 o->zero_stage, o->offload.c_str());
    std::fprintf(stderr,
                 "mode     step s  compute   h2d     d2h     cpu    nvme   slowest  ratio  "
                 "speculative/rolled back  host/device syncs per step\n");
    for (const auto& m : r->modes) {
      nlohmann::json steps = nlohmann::json::array();
      for (const auto& s : m.steps) steps.push_back(step_json(s));
      const engine::StepBenchmarkStep a = steady(m, r->params);
      const auto& last = m.steps.back();
      modes[m.mode] = {{"steps", steps}, {"steady", step_json(a)}};
      std::fprintf(stderr,
                   "%-7s %7.3f  %7.3f %7.3f %7.3f %7.3f %7.3f  %-7s %6.3f  %d/%d %22.1f/%.1f\n",
                   m.mode.c_str(), a.step_seconds, a.compute_seconds, a.h2d_seconds, a.d2h_seconds,
                   a.host_seconds, a.nvme_seconds, a.slowest.c_str(), a.ratio,
                   last.speculative_layers, last.rolled_back_layers, a.host_syncs, a.device_syncs);
    }
    const double sync_s = steady(r->modes[0], r->params).step_seconds;
    const double speedup = sync_s / steady(r->modes[1], r->params).step_seconds;
    // The delayed update runs on one rank only.
    const double delayed_speedup =
        r->modes.size() > 2 ? sync_s / steady(r->modes[2], r->params).step_seconds : 0;
    std::fprintf(stderr, "against sync (mean of steps 2..%d): overlap %.2fx", o->steps, speedup);
    if (r->modes.size() > 2) std::fprintf(stderr, ", delayed update %.2fx", delayed_speedup);
    std::fprintf(stderr, "\n");
    std::fprintf(stderr, "optimizer %.1f GB/s (sync) against the Adam-like stream's %.1f GB/s\n",
                 steady(r->modes[0], r->params).optimizer_gb_per_s, r->stream_gb_per_s);
    // Per rank against one rank of the same shape (sync mode).
    nlohmann::json per_rank = nullptr;
    if (o->world_size > 1) {
      engine::StepBenchmarkOptions single = *o;
      single.world_size = 1;
      auto one = engine::run_step_benchmark(single);
      if (!one.ok()) {
        *exit_code = report_status(one.status());
        return;
      }
      const engine::StepBenchmarkStep one_sync = steady(one->modes[0], one->params);
      const engine::StepBenchmarkStep dp_sync = steady(r->modes[0], r->params);
      per_rank = rank_bytes_json(dp_sync, one_sync);
      std::fprintf(stderr, "bytes a step (sync)  %-28s %-18s %s\n", "PCIe H2D + D2H", "host tier",
                   "optimizer pass");
      std::fprintf(
          stderr, "  1 rank alone       %-28s %-18s %s\n",
          (format_bytes(one_sync.h2d_bytes) + " + " + format_bytes(one_sync.d2h_bytes)).c_str(),
          format_bytes(one_sync.host_bytes).c_str(),
          format_bytes(one_sync.optimizer_bytes).c_str());
      for (const nlohmann::json& b : per_rank) {
        auto cell = [](double bytes, double ratio) {
          return absl::StrFormat("%s (%.2fx)", format_bytes(bytes), ratio);
        };
        const std::string label =
            absl::StrFormat("rank %d of %d", b["rank"].get<int>(), o->world_size);
        const std::string pcie = absl::StrFormat(
            "%s + %s (%.2fx)", format_bytes(b["h2d_bytes"].get<double>()),
            format_bytes(b["d2h_bytes"].get<double>()), b["pcie_ratio"].get<double>());
        std::fprintf(
            stderr, "  %-18s %-28s %-18s %s\n", label.c_str(), pcie.c_str(),
            cell(b["host_bytes"].get<double>(), b["host_ratio"].get<double>()).c_str(),
            cell(b["optimizer_bytes"].get<double>(), b["optimizer_ratio"].get<double>()).c_str());
      }
      // The placement's host tier beside the measured one: what `strata
      // plan --world-size N` prints for the same config.
      std::fprintf(
          stderr,
          "host tier as planned (strata plan's budget, the fp32 accumulator counted): 1 rank %s, "
          "rank 0 of %d %s\n",
          format_bytes(one_sync.host_plan_bytes).c_str(), o->world_size,
          format_bytes(dp_sync.ranks[0].host_plan_bytes).c_str());
      per_rank = {{"one_rank",
                   {{"h2d_bytes", one_sync.h2d_bytes},
                    {"d2h_bytes", one_sync.d2h_bytes},
                    {"pcie_bytes", one_sync.h2d_bytes + one_sync.d2h_bytes},
                    {"host_bytes", one_sync.host_bytes},
                    {"host_plan_bytes", one_sync.host_plan_bytes},
                    {"optimizer_bytes", one_sync.optimizer_bytes}}},
                  {"ranks", per_rank}};
    }
    if (*json) {
      print_json(
          {{"model", *model},
           {"width", r->width},
           {"params", r->params},
           {"micro_batch", o->micro_batch},
           {"seq_len", o->seq_len},
           {"gradient_accumulation_steps", o->gradient_accumulation_steps},
           {"tflops", o->tflops},
           {"device_costs", o->device_costs},
           {"link_gb_per_s", o->link_gb_per_s},
           {"offload", o->offload},
           {"precision", o->precision},
           {"zero_stage", o->zero_stage},
           // "auto": not set, the engine's about eight buckets per model.
           {"reduce_bucket_size", o->reduce_bucket_size > 0 ? nlohmann::json(o->reduce_bucket_size)
                                                            : nlohmann::json("auto")},
           {"nvme_read_gb_per_s", r->nvme_read_gb_per_s},
           {"nvme_write_gb_per_s", r->nvme_write_gb_per_s},
           {"stream_gb_per_s", r->stream_gb_per_s},
           {"modes", modes},
           {"overlap_speedup", speedup},
           {"delayed_speedup",
            r->modes.size() > 2 ? nlohmann::json(delayed_speedup) : nlohmann::json(nullptr)},
           {"world_size", o->world_size},
           {"per_rank", per_rank}});
    }
    *exit_code = 0;
  });
}

}  // namespace strata::tools
