// strata bench step: a GPT-2-shaped training step on SimDevice, sync vs overlap.
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
                  "elements per gradient bucket (zero_optimization.reduce_bucket_size; 5e8)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--steps", o->steps, "steps per mode; the first records the trace (4)")
      ->check(CLI::Range(2, 100));
  cmd->add_option("--threads", o->cpu_threads, "CPU optimizer threads (all cores)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_flag("--no-device-costs{false}", o->device_costs,
                "charge nothing for host syncs, device syncs, pageable copies and launches");
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
                 "%.0f TFLOPS, link %.0f GB/s, CUDA costs %s; %s, optimizer offload %s\n",
                 model->c_str(), static_cast<long long>(r->width),
                 static_cast<long long>(o->width_divisor), static_cast<double>(r->params) / 1e6,
                 static_cast<long long>(o->micro_batch), static_cast<long long>(o->seq_len),
                 static_cast<long long>(o->gradient_accumulation_steps), o->tflops,
                 o->link_gb_per_s, o->device_costs ? "charged" : "off", o->precision.c_str(),
                 o->offload.c_str());
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
    const double delayed_speedup = sync_s / steady(r->modes[2], r->params).step_seconds;
    std::fprintf(stderr,
                 "against sync (mean of steps 2..%d): overlap %.2fx, delayed update %.2fx\n",
                 o->steps, speedup, delayed_speedup);
    std::fprintf(stderr, "optimizer %.1f GB/s (sync) against the Adam-like stream's %.1f GB/s\n",
                 steady(r->modes[0], r->params).optimizer_gb_per_s, r->stream_gb_per_s);
    if (*json) {
      print_json({{"model", *model},
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
                  {"reduce_bucket_size", o->reduce_bucket_size > 0
                                             ? o->reduce_bucket_size
                                             : config::ZeroConfig{}.reduce_bucket_size},
                  {"nvme_read_gb_per_s", r->nvme_read_gb_per_s},
                  {"nvme_write_gb_per_s", r->nvme_write_gb_per_s},
                  {"stream_gb_per_s", r->stream_gb_per_s},
                  {"modes", modes},
                  {"overlap_speedup", speedup},
                  {"delayed_speedup", delayed_speedup}});
    }
    *exit_code = 0;
  });
}

}  // namespace strata::tools
