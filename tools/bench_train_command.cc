// strata bench train [--model NAME] [--steps N] [--seq-len T] [--micro-batch B]
//                    [--dtype fp16|bf16|fp32] [--offload none,cpu,nvme]
//                    [--overlap sync,overlap] [--nvme-path DIR] [--data PATH]
//                    [--checkpoint-activations] [--gpu-mem SIZE] [--json]
// Training throughput per placement on the simulated device (see
// tools/train_bench.h): tokens/s and mean step time over the steps after the
// first, and the offload overhead against no offload in the same overlap
// mode. Human text on stderr; --json prints one object on stdout.
#include <algorithm>
#include <cstdio>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "model/cpu/matmul.h"
#include "offload/tiered_store.h"
#include "tools/cli_util.h"
#include "tools/commands.h"
#include "tools/train_bench.h"

namespace strata::tools {
namespace {

struct BenchTrainArgs {
  TrainBenchOptions options;
  std::vector<std::string> offload = {"none", "cpu", "nvme"};
  std::vector<std::string> overlap = {"sync", "overlap"};
  double gpu_mem_gib = 8;
  bool json = false;
};

std::string name(const TrainBenchPlacement& p) {
  return absl::StrFormat("%s/%s", std::string(config::to_string(p.offload)),
                         std::string(config::to_string(p.overlap)));
}

nlohmann::json to_json(const TrainBenchResult& r) {
  nlohmann::json j = {{"offload", std::string(config::to_string(r.placement.offload))},
                      {"overlap", std::string(config::to_string(r.placement.overlap))}};
  if (!r.error.empty()) {
    j["error"] = r.error;
    return j;
  }
  j["steps"] = r.steps;
  j["tokens_per_step"] = r.tokens_per_step;
  j["first_step_seconds"] = r.first_step_seconds;
  j["mean_step_seconds"] = r.mean_step_seconds;
  j["tokens_per_second"] = r.tokens_per_second;
  j["overhead_fraction"] =
      r.overhead_fraction ? nlohmann::json(*r.overhead_fraction) : nlohmann::json(nullptr);
  j["first_loss"] = r.first_loss;
  j["last_loss"] = r.last_loss;
  j["skipped_steps"] = r.skipped_steps;
  nlohmann::json moved = nlohmann::json::object();
  for (int t = 0; t < offload::kTierCount; ++t) {
    moved[offload::tier_name(static_cast<offload::Tier>(t))] = r.bytes_moved_per_step[t];
  }
  j["bytes_moved_per_step"] = moved;
  j["saved_activation_bytes"] = r.saved_activation_bytes;
  j["grad_seconds_per_step"] = r.grad_seconds_per_step;
  j["optimizer_seconds_per_step"] = r.optimizer_seconds_per_step;
  j["optimizer_gb_per_s"] = r.optimizer_gb_per_s;
  return j;
}

int run(BenchTrainArgs a) {
  a.options.gpu_mem = static_cast<uint64_t>(a.gpu_mem_gib * (1 << 30));
  a.options.placements.clear();
  for (const std::string& mode : a.overlap) {
    for (const std::string& dev : a.offload) {
      a.options.placements.push_back(
          {dev == "none"  ? config::OffloadDevice::kNone
           : dev == "cpu" ? config::OffloadDevice::kCpu
                          : config::OffloadDevice::kNvme,
           mode == "sync" ? config::OverlapMode::kSync : config::OverlapMode::kOverlap});
    }
  }
  const TrainBenchOptions& o = a.options;
  if (absl::Status st = validate_train_bench_options(o); !st.ok()) return report_status(st);
  const int threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  model::cpu::set_blas_threads(threads);
  // The header waits for the first result: an error before it (the data,
  // the configs) is then the only line.
  const std::string header = absl::StrFormat(
      "strata bench train: %s, %lld steps per placement (first not timed), seq %lld x micro batch "
      "%lld, %s%s, %d threads\n",
      o.model, static_cast<long long>(o.steps), static_cast<long long>(o.seq_len),
      static_cast<long long>(o.micro_batch), o.dtype,
      o.checkpoint_activations ? ", activation checkpointing" : "", threads);
  bool header_printed = false;
  auto summary = run_train_bench(o, [&](const TrainBenchResult& r) {
    if (!header_printed) std::fputs(header.c_str(), stderr);
    header_printed = true;
    if (!r.error.empty()) {
      std::fprintf(stderr, "  %-14s failed: %s\n", name(r.placement).c_str(), r.error.c_str());
    } else {
      std::fprintf(stderr, "  %-14s %9.1f tokens/s  %8.3f s/step  (first step %.3f s)\n",
                   name(r.placement).c_str(), r.tokens_per_second, r.mean_step_seconds,
                   r.first_step_seconds);
    }
    std::fflush(stderr);
  });
  if (!summary.ok()) return report_status(summary.status());
  std::fprintf(stderr, "%s: %.2fM params, vocab %lld, data %s\n", summary->model.c_str(),
               static_cast<double>(summary->params) / 1e6, static_cast<long long>(summary->vocab),
               summary->data.c_str());
  std::fprintf(stderr, "  Adam-like stream %.2f GB/s (28 B/param)\n", summary->stream_gb_per_s);
  std::fprintf(stderr, "  %-14s %12s %10s %10s %12s %8s %8s %8s %10s\n", "placement", "tokens/s",
               "s/step", "overhead", "last loss", "grad s", "opt s", "opt GB/s", "of stream");
  bool failed = false;
  for (const TrainBenchResult& r : summary->results) {
    if (!r.error.empty()) {
      failed = true;
      std::fprintf(stderr, "  %-14s failed: %s\n", name(r.placement).c_str(), r.error.c_str());
      continue;
    }
    const std::string overhead =
        r.overhead_fraction ? absl::StrFormat("%+.1f%%", *r.overhead_fraction * 100) : "-";
    std::fprintf(
        stderr, "  %-14s %12.1f %10.3f %10s %12.4f %8.4f %8.4f %8.2f %10.2f\n",
        name(r.placement).c_str(), r.tokens_per_second, r.mean_step_seconds, overhead.c_str(),
        r.last_loss, r.grad_seconds_per_step, r.optimizer_seconds_per_step, r.optimizer_gb_per_s,
        summary->stream_gb_per_s > 0 ? r.optimizer_gb_per_s / summary->stream_gb_per_s : 0.0);
  }
  if (a.json) {
    nlohmann::json out = {{"model", summary->model},
                          {"params", summary->params},
                          {"vocab", summary->vocab},
                          {"data", summary->data},
                          {"steps", o.steps},
                          {"seq_len", o.seq_len},
                          {"micro_batch", o.micro_batch},
                          {"dtype", o.dtype},
                          {"checkpoint_activations", o.checkpoint_activations},
                          {"threads", threads},
                          {"stream_gb_per_s", summary->stream_gb_per_s},
                          {"placements", nlohmann::json::array()}};
    for (const TrainBenchResult& r : summary->results) {
      nlohmann::json p = to_json(r);
      if (r.error.empty() && summary->stream_gb_per_s > 0) {
        p["optimizer_stream_ratio"] = r.optimizer_gb_per_s / summary->stream_gb_per_s;
      }
      out["placements"].push_back(std::move(p));
    }
    print_json(out);
  }
  return failed ? 1 : 0;
}

}  // namespace

void add_bench_train_command(CLI::App& bench, int* exit_code) {
  auto* cmd = bench.add_subcommand(
      "train", "Training tokens/s per placement (offload none/cpu/nvme x sync/overlap)");
  auto a = std::make_shared<BenchTrainArgs>();
  cmd->add_option("--model", a->options.model, "gpt2-tiny (default), gpt2, gpt2-medium, ...");
  cmd->add_option("--steps", a->options.steps, "steps per placement, the first not timed (6)")
      ->check(CLI::Range(int64_t{2}, int64_t{1} << 20));
  cmd->add_option("--seq-len", a->options.seq_len, "tokens per sequence (128)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  cmd->add_option("--micro-batch", a->options.micro_batch, "sequences per step (2)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  cmd->add_option("--dtype", a->options.dtype, "compute dtype: fp16 (default), bf16 or fp32")
      ->check(CLI::IsMember({"fp16", "bf16", "fp32"}));
  cmd->add_option("--offload", a->offload, "offload_optimizer devices to run (none,cpu,nvme)")
      ->delimiter(',')
      ->check(CLI::IsMember({"none", "cpu", "nvme"}));
  cmd->add_option("--overlap", a->overlap, "strata.overlap modes to run (sync,overlap)")
      ->delimiter(',')
      ->check(CLI::IsMember({"sync", "overlap"}));
  cmd->add_option("--nvme-path", a->options.nvme_path,
                  "folder for the nvme placement's swap files (default: a temporary folder)");
  cmd->add_option("--data", a->options.data,
                  "train on this text (byte-level vocab 256) instead of synthetic tokens");
  cmd->add_flag("--checkpoint-activations", a->options.checkpoint_activations,
                "recompute each block's activations in backward");
  cmd->add_option("--gpu-mem", a->gpu_mem_gib, "simulated device memory in GiB (8)")
      ->check(finite_number({.min = 0.001, .max = 1e6}));
  cmd->add_option("--seed", a->options.seed, "data and weight initialisation (1337)")
      ->check(whole_number(0, std::numeric_limits<int64_t>::max()));
  cmd->add_flag(
      "--no-fuse", [a](int64_t) { a->options.fuse_gradient_pass = false; },
      "run the unfused gradient path (accumulate, statistics, step: three passes)");
  cmd->add_flag("--json", a->json, "print one JSON object on stdout");
  cmd->callback([=] { *exit_code = run(*a); });
}

}  // namespace strata::tools
