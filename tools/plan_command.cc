// strata plan --model NAME --deepspeed_config F [--gpu-mem B] [--host-mem B]
//             [--nvme B] [--world-size N [--nodes M]] [--json]
// How many bytes a training run needs on each tier (GPU, host, NVMe), by
// tensor role, for the placement the ds_config asks for; compared with the
// tiers' capacities and with DeepSpeed's own model-state estimate; and, when
// something does not fit, what to change (engine/plan.h); the step time per
// resource (engine/step_time.h) and, with --device cpu, the peak RSS of that
// `strata train` run (model/gpt2_plan.h). This file parses flags and prints.
//
// Capacities: --gpu-mem (unknown when absent), --host-mem (default: what the
// host probe says is usable: MemAvailable capped by the cgroup limit),
// --nvme (default: free space under the first nvme_path, when one is set).
// --world-size N: one rank's bytes with ZeRO's partitioning over N
// data-parallel ranks (the config's batch sizes resolved for N), beside
// DeepSpeed's estimate for N GPUs (--nodes M: M nodes of N/M GPUs; host and
// NVMe capacities are one node's).
// A plan that does not fit still exits 0: "fits" says so and "advice" says
// what to change. Errors (unknown model, unreadable config) exit 1; a bad
// flag value exits 2.
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/config/ds_config.h"
#include "core/parse.h"
#include "core/status.h"
#include "engine/plan.h"
#include "engine/step_time.h"
#include "model/gpt2_config.h"
#include "model/gpt2_plan.h"
#include "model/text_corpus.h"
#include "tools/cli_util.h"
#include "tools/commands.h"

namespace strata::tools {
namespace {

using nlohmann::json;

// Every flag as typed; parsed with core/parse.h in run_plan.
struct PlanArgs {
  std::string model;
  std::string config_file;
  std::string gpu_mem;
  std::string host_mem;
  std::string nvme;
  std::string world_size = "1";
  std::string nodes = "1";
  bool json = false;
  // The `strata train --device cpu` run to predict the peak RSS of.
  std::string device;
  std::string seq_len;
  std::string vocab_size;
  std::string data;
  bool checkpoint_activations = false;
  bool async_save = false;
  // Rates for the predicted step time; no --cpu-gbps: measured now.
  std::string gpu_tflops = "200";  // achieved, dense fp16/bf16
  std::string pcie_gbps = "25";    // each direction
  std::string nvme_gbps = "3";
  std::string cpu_gbps;
};

// The largest capacity a flag may give: far above any machine's memory (1
// PiB) or drives (64 PiB), so a typo is refused instead of planned with.
constexpr uint64_t kMaxMemoryBytes = uint64_t{1} << 50;
constexpr uint64_t kMaxNvmeBytes = uint64_t{1} << 56;

// The flags' values, checked.
struct PlanFlags {
  engine::PlanCapacities capacities{.probe = true};
  engine::StepRates rates;
  int64_t seq_len = 0;
  int64_t vocab_size = 0;
  int world_size = 1;
};

absl::StatusOr<PlanFlags> parse_flags(const PlanArgs& a) {
  PlanFlags f;
  for (auto [text, flag, max, out] :
       {std::tuple{&a.gpu_mem, "--gpu-mem", kMaxMemoryBytes, &f.capacities.gpu},
        std::tuple{&a.host_mem, "--host-mem", kMaxMemoryBytes, &f.capacities.host},
        std::tuple{&a.nvme, "--nvme", kMaxNvmeBytes, &f.capacities.nvme}}) {
    if (text->empty()) continue;
    STRATA_ASSIGN_OR_RETURN(const uint64_t bytes, parse_byte_size(*text, flag, 1, max));
    *out = engine::TierCapacity{static_cast<int64_t>(bytes), flag};
  }
  // Rates above these are no machine's: an exaflop GPU, 10 TB/s links.
  for (auto [text, flag, max, out] :
       {std::tuple{&a.gpu_tflops, "--gpu-tflops", 1e6, &f.rates.gpu_tflops},
        std::tuple{&a.pcie_gbps, "--pcie-bw", 1e4, &f.rates.pcie_gbps},
        std::tuple{&a.nvme_gbps, "--nvme-bw", 1e4, &f.rates.nvme_gbps},
        std::tuple{&a.cpu_gbps, "--cpu-gbps", 1e4, &f.rates.cpu_gbps}}) {
    if (text->empty()) continue;
    STRATA_ASSIGN_OR_RETURN(
        *out, parse_double(*text, flag, {.min = 0, .max = max, .min_inclusive = false}));
  }
  for (auto [text, flag, out] : {std::tuple{&a.seq_len, "--seq-len", &f.seq_len},
                                 std::tuple{&a.vocab_size, "--vocab-size", &f.vocab_size}}) {
    if (text->empty()) continue;
    STRATA_ASSIGN_OR_RETURN(*out, parse_int(*text, flag, 1, int64_t{1} << 24));
  }
  // Far beyond any job, so a typo is refused.
  constexpr int64_t kMaxRanks = 1 << 20;
  STRATA_ASSIGN_OR_RETURN(const int64_t world,
                          parse_int(a.world_size, "--world-size", 1, kMaxRanks));
  STRATA_ASSIGN_OR_RETURN(const int64_t nodes, parse_int(a.nodes, "--nodes", 1, kMaxRanks));
  if (world % nodes != 0) {
    return absl::InvalidArgumentError(absl::StrCat("--world-size ", world,
                                                   " is not a multiple of --nodes ", nodes,
                                                   "; give ranks per node times nodes"));
  }
  f.world_size = static_cast<int>(world);
  f.capacities.nodes = static_cast<int>(nodes);
  // Only the RSS prediction of --device cpu reads them; silently ignoring
  // them would let a typo or a wrong path pass unnoticed.
  if (a.device != "cpu" && (!a.data.empty() || !a.vocab_size.empty())) {
    return absl::InvalidArgumentError(
        "--data and --vocab-size are read only with --device cpu (the peak RSS of strata "
        "train on the CPU); add --device cpu or drop them");
  }
  return f;
}

// Bytes of text `strata train --data PATH` reads (one token a byte), or the error.
absl::StatusOr<uint64_t> text_bytes(const std::string& path) {
  STRATA_ASSIGN_OR_RETURN(std::vector<std::string> files, model::list_corpus_files(path), "--data");
  uint64_t total = 0;
  for (const std::string& f : files) {
    std::error_code ec;
    const uint64_t size = std::filesystem::file_size(f, ec);
    if (ec) return absl::NotFoundError(absl::StrCat("--data: ", f, ": ", ec.message()));
    total += size;
  }
  return total;
}

json roles_json(const engine::PlanRoles& r) {
  return {{"param16", r.param16},         {"grad16", r.grad16},   {"grad32", r.grad32},
          {"master32", r.master32},       {"exp_avg", r.exp_avg}, {"exp_avg_sq", r.exp_avg_sq},
          {"activations", r.activations}, {"staging", r.staging}};
}

json tier_json(const engine::TierPlan& t) {
  json j = {{"roles", roles_json(t.need)}, {"total", t.need.total()}};
  j["capacity"] = t.capacity ? json(t.capacity->bytes) : json(nullptr);
  j["capacity_source"] = t.capacity ? t.capacity->source : "";
  j["shared_by_ranks"] = t.sharers;
  j["fits"] = nullptr;
  if (const auto fits = t.fits()) j["fits"] = *fits;
  return j;
}

json optional_json(std::optional<bool> v) { return v ? json(*v) : json(nullptr); }

void print_human(const engine::MemoryPlan& p, const std::string& file) {
  auto line = [](const char* fmt, auto... args) { std::fprintf(stderr, fmt, args...); };
  line("%s: %lld params (largest layer %lld), %s, optimizer %s; plan for %s\n", p.model.c_str(),
       static_cast<long long>(p.params), static_cast<long long>(p.largest_module_params),
       p.precision.c_str(), p.optimizer.c_str(), file.c_str());
  if (p.world_size > 1) {
    std::string split;
    for (const std::string& r : p.partitioned) split += (split.empty() ? "" : ", ") + r;
    line("  per rank of %d (%d a node); split across ranks: %s\n", p.world_size, p.ranks_per_node,
         split.empty() ? "nothing" : split.c_str());
  }
  line("  %-12s %12s %12s %12s\n", "role", "gpu", "host", "nvme");
  const char* names[] = {"param16", "grad16",     "grad32",      "master32",
                         "exp_avg", "exp_avg_sq", "activations", "staging"};
  for (const char* name : names) {
    auto col = [&](const engine::TierPlan& t) {
      return format_bytes(static_cast<double>(roles_json(t.need)[name].get<int64_t>()));
    };
    line("  %-12s %12s %12s %12s\n", name, col(p.gpu).c_str(), col(p.host).c_str(),
         col(p.nvme).c_str());
  }
  for (const engine::TierPlan* t : {&p.gpu, &p.host, &p.nvme}) {
    const std::string need = format_bytes(static_cast<double>(t->need.total()));
    if (t->need.total() == 0) {
      line("  %-5s not used\n", t->name.c_str());
    } else if (!t->capacity) {
      line("  %-5s needs %s (capacity unknown%s)\n", t->name.c_str(), need.c_str(),
           t->name == "gpu" ? "; pass --gpu-mem, e.g. 32GiB" : "");
    } else if (t->sharers > 1) {
      line("  %-5s needs %s a rank, %s for the node's %d ranks, of %s (%s): %s\n", t->name.c_str(),
           need.c_str(), format_bytes(static_cast<double>(t->need.total()) * t->sharers).c_str(),
           t->sharers, format_bytes(static_cast<double>(t->capacity->bytes)).c_str(),
           t->capacity->source.c_str(), *t->fits() ? "fits" : "DOES NOT FIT");
    } else {
      line("  %-5s needs %s of %s (%s): %s\n", t->name.c_str(), need.c_str(),
           format_bytes(static_cast<double>(t->capacity->bytes)).c_str(),
           t->capacity->source.c_str(), *t->fits() ? "fits" : "DOES NOT FIT");
    }
  }
  line("  DeepSpeed %s (%s): GPU %s, CPU %s", p.deepspeed.estimator.c_str(),
       p.deepspeed.formula.c_str(), format_bytes(static_cast<double>(p.deepspeed.gpu)).c_str(),
       format_bytes(static_cast<double>(p.deepspeed.cpu)).c_str());
  if (p.ranks_per_node > 1) {
    line(" a node, %s a rank", format_bytes(static_cast<double>(p.deepspeed.cpu_per_rank)).c_str());
  }
  line("\n");
  for (const std::string& n : p.notes) line("  note: %s\n", n.c_str());
  for (const std::string& a : p.advice) line("  to fit: %s\n", a.c_str());
}

int run_plan(const PlanArgs& a) {
  auto usage = [](const absl::Status& s) { return report_status(s) == 0 ? 0 : 2; };
  auto flags = parse_flags(a);
  if (!flags.ok()) return usage(flags.status());
  auto gpt2 = model::gpt2_config_by_name(a.model);
  if (!gpt2.ok()) return report_status(gpt2.status());
  if (flags->seq_len > gpt2->seq_len) {
    return usage(absl::InvalidArgumentError(absl::StrCat("--seq-len ", flags->seq_len, " exceeds ",
                                                         gpt2->name, "'s ", gpt2->seq_len,
                                                         " positions; give at most that")));
  }
  std::vector<std::string> warnings;
  auto cfg = config::load_ds_config(a.config_file, &warnings, flags->world_size);
  for (const std::string& w : warnings) std::fprintf(stderr, "strata: warning: %s\n", w.c_str());
  if (!cfg.ok()) return report_status(cfg.status());

  const engine::PlanModel shape = model::gpt2_plan_model(*gpt2);
  auto plan = engine::plan_memory(shape, *cfg, flags->capacities);
  if (!plan.ok()) return report_status(plan.status());
  auto times = engine::predict_step_time(shape, *cfg, flags->rates, flags->seq_len);
  if (!times.ok()) return report_status(times.status());

  // The peak RSS of `strata train --device cpu` for this run (the simulated
  // GPU and the CPU model live in host memory).
  std::optional<engine::TrainMemoryEstimate> rss;
  if (a.device == "cpu") {
    model::Gpt2Config m = *gpt2;
    if (flags->vocab_size > 0) m.vocab_size = flags->vocab_size;
    uint64_t data_bytes = 0;
    if (!a.data.empty()) {
      auto bytes = text_bytes(a.data);
      if (!bytes.ok()) return report_status(bytes.status());
      data_bytes = *bytes;
    }
    auto e = model::estimate_gpt2_train_memory({.model = m,
                                                .config = *cfg,
                                                .seq_len = flags->seq_len,
                                                .simulated_device = true,
                                                .checkpoint_activations = a.checkpoint_activations,
                                                .data_bytes = data_bytes,
                                                .async_checkpoint = a.async_save});
    if (!e.ok()) return report_status(e.status());
    rss = *e;
  }

  const engine::MemoryPlan& p = *plan;
  const std::optional<bool> fits = p.fits();
  if (a.json) {
    json j = {
        {"model",
         {{"name", gpt2->name},
          {"n_layer", gpt2->n_layer},
          {"n_head", gpt2->n_head},
          {"n_embd", gpt2->n_embd},
          {"vocab_size", gpt2->vocab_size},
          {"seq_len", gpt2->seq_len},
          {"params", p.params},
          {"largest_layer_params", p.largest_module_params}}},
        {"config",
         {{"file", a.config_file},
          {"zero_stage", cfg->zero.stage},
          {"precision", p.precision},
          {"compute_bytes", p.compute_bytes},
          {"optimizer", p.optimizer},
          {"offload_optimizer", std::string(config::to_string(cfg->zero.offload_optimizer.device))},
          {"offload_param", std::string(config::to_string(cfg->zero.offload_param.device))},
          {"micro_batch", cfg->train_micro_batch_size_per_gpu},
          {"gradient_accumulation_steps", cfg->gradient_accumulation_steps},
          {"train_batch_size", cfg->train_batch_size},
          {"world_size", p.world_size},
          {"ranks_per_node", p.ranks_per_node},
          {"partitioned", p.partitioned}}},
        {"tiers",
         {{"gpu", tier_json(p.gpu)}, {"host", tier_json(p.host)}, {"nvme", tier_json(p.nvme)}}},
        {"formulas",
         {{"activations", "n_layer*b*s*(34*n_embd + 5*n_head*s)*compute_bytes/2 + 4*b*s*vocab"},
          {"staging",
           "host: the cache of NVMe-homed tensors, min(NVMe total, max(2 layers, "
           "strata.prefetch_window_bytes))"}}},
        {"deepspeed",
         {{"estimator", p.deepspeed.estimator},
          {"formula", p.deepspeed.formula},
          {"gpu", p.deepspeed.gpu},
          {"cpu", p.deepspeed.cpu},
          {"cpu_per_rank", p.deepspeed.cpu_per_rank}}},
        {"fits", optional_json(fits)},
        {"train_rss_estimate", rss ? rss->to_json() : json(nullptr)},
        {"step_seconds", times->to_json()},
        {"advice", p.advice},
        {"notes", p.notes},
        {"warnings", warnings}};
    print_json(j);
  } else {
    print_human(p, a.config_file);
    const engine::StepRates& r = flags->rates;
    std::fprintf(stderr,
                 "  step time per resource: GPU %.3f s (%.0f TFLOPS), PCIe H2D %.3f s / D2H %.3f s "
                 "(%.0f GB/s), CPU optimizer %.3f s (%.1f GB/s, %s), NVMe %.3f s (%.1f GB/s); "
                 "sync order about %.3f s, fully overlapped (delayed update) about %.3f s\n",
                 times->compute, r.gpu_tflops, times->h2d, times->d2h, r.pcie_gbps, times->cpu,
                 times->cpu_gbps, times->cpu_source.c_str(), times->nvme, r.nvme_gbps,
                 times->sync_step(), times->slowest());
    if (rss) {
      std::fprintf(stderr, "  strata train --device cpu: peak RSS about %s (%s)\n",
                   format_bytes(static_cast<double>(rss->total())).c_str(),
                   rss->describe_parts().c_str());
    }
    std::fprintf(stderr, "%s\n",
                 fits == false ? "verdict: DOES NOT FIT (see \"to fit\" above)"
                 : !fits       ? "verdict: nothing is short on the tiers checked; pass "
                                 "--gpu-mem (and --nvme) to check them all"
                               : "verdict: fits");
  }
  return 0;
}

}  // namespace

void add_plan_command(CLI::App& app, int* exit_code) {
  auto* cmd = app.add_subcommand(
      "plan", "Bytes per memory tier for training a model with a ds_config, and whether it fits");
  auto a = std::make_shared<PlanArgs>();
  cmd->add_option("--model", a->model, "gpt2-tiny, gpt2, gpt2-medium, gpt2-large or gpt2-xl")
      ->required();
  cmd->add_option("--deepspeed_config", a->config_file, "the ds_config JSON file")->required();
  cmd->add_option("--gpu-mem", a->gpu_mem, "GPU memory, e.g. 32GiB (default: unknown)");
  cmd->add_option("--host-mem", a->host_mem, "host memory (default: MemAvailable / cgroup limit)");
  cmd->add_option("--nvme", a->nvme, "NVMe space (default: free space under nvme_path)");
  cmd->add_option("--world-size", a->world_size,
                  "data-parallel ranks: plan one rank's share with ZeRO's partitioning (1)");
  cmd->add_option("--nodes", a->nodes, "nodes the ranks span, for host/NVMe and DeepSpeed's (1)");
  cmd->add_flag("--json", a->json, "print one JSON object on stdout");
  cmd->add_option("--device", a->device,
                  "cpu: also predict the peak RSS of strata train --device cpu for this run")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->add_option("--seq-len", a->seq_len, "train's --seq-len (default: the model's)");
  cmd->add_option("--vocab-size", a->vocab_size,
                  "with --device cpu: the trained vocabulary (256 for byte-level text)");
  cmd->add_option("--data", a->data, "with --device cpu: train's --data (file or folder)");
  cmd->add_flag("--checkpoint-activations", a->checkpoint_activations,
                "with --device cpu: train's --checkpoint-activations");
  cmd->add_flag("--async-save", a->async_save, "with --device cpu: train's --async-save");
  cmd->add_option("--gpu-tflops", a->gpu_tflops, "achieved GPU TFLOPS for the step time (200)");
  cmd->add_option("--pcie-bw", a->pcie_gbps, "PCIe GB/s each way (25)");
  cmd->add_option("--nvme-bw", a->nvme_gbps, "NVMe GB/s (3)");
  cmd->add_option("--cpu-gbps", a->cpu_gbps,
                  "the CPU optimizer's GB/s (default: an Adam-like stream measured now)");
  cmd->callback([=] { *exit_code = run_plan(*a); });
}

}  // namespace strata::tools
