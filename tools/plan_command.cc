// strata plan --model NAME --deepspeed_config F [--gpu-mem B] [--host-mem B]
//             [--nvme B] [--json]
// How many bytes a training run needs on each tier (GPU, host, NVMe), by
// tensor role, for the placement the ds_config asks for; compared with the
// tiers' capacities and with DeepSpeed's own model-state estimate; and, when
// something does not fit, what to change. Placement follows
// engine/training_engine.h (per GPU, one data-parallel rank):
//
//   param16, grad16  N x compute bytes (2 for fp16/bf16, 4 for fp32); on the
//                    GPU, and also homed on the host when the optimizer is
//                    offloaded (the CPU optimizer reads grads and writes
//                    params there). ZeRO-3 offload_param: params homed on the
//                    host or NVMe, the GPU keeps a working set of
//                    (largest layer + stage3_prefetch_bucket_size) params and
//                    the largest layer's grads.
//   grad32           N x 4, the fp32 accumulator, beside the optimizer
//                    (GPU, or host when offloaded, also for nvme).
//   master32, exp_avg, exp_avg_sq  N x 4 each where the optimizer runs (GPU,
//                    host, or NVMe for offload_optimizer nvme). Lion has no
//                    exp_avg_sq; Adagrad keeps its sum in exp_avg_sq only.
//   activations      GPU; Korthikanti et al. (2022) without recomputation:
//                    L*b*s*(34*E + 5*a*s) * compute_bytes/2 + 4*b*s*V
//                    (the fp32 logits), b = train_micro_batch_size_per_gpu.
//   staging          pinned host buffers for NVMe transfers: nvme optimizer:
//                    offload_optimizer.buffer_count x min(sub_group_size, N)
//                    x 4 (one fp32 state of a sub-group each); nvme params:
//                    offload_param.buffer_count x min(buffer_size, N) x
//                    compute bytes. A cpu-offloaded optimizer needs none: its
//                    host-homed param16 / grad16 are the pinned DMA targets.
//
// Capacities: --gpu-mem (unknown when absent), --host-mem (default: what the
// host probe says is usable: MemAvailable capped by the cgroup limit),
// --nvme (default: free space under the first nvme_path, when one is set).
// A plan that does not fit still exits 0: "fits" says so and "advice" says
// what to change. Errors (unknown model, unreadable config) exit 1; a bad
// flag value exits 2.
#include <sys/statvfs.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/config/ds_config.h"
#include "core/host_info.h"
#include "core/memory_bandwidth.h"
#include "core/status.h"
#include "model/gpt2_config.h"
#include "model/text_corpus.h"
#include "tools/cli_util.h"
#include "tools/commands.h"
#include "tools/train_memory.h"

namespace strata::tools {
namespace {

using config::OffloadDevice;
using nlohmann::json;

struct PlanArgs {
  std::string model;
  std::string config_file;
  std::string gpu_mem;
  std::string host_mem;
  std::string nvme;
  bool json = false;
  // The `strata train --device cpu` run to predict the peak RSS of.
  std::string device;
  int64_t seq_len = 0;
  int64_t vocab_size = 0;
  std::string data;
  bool checkpoint_activations = false;
  bool async_save = false;
  // Rates for the predicted step time; 0 for the CPU: measured now.
  double gpu_tflops = 200;  // achieved, dense fp16/bf16
  double pcie_gbps = 25;    // each direction
  double nvme_gbps = 3;
  double cpu_gbps = 0;  // the optimizer's memory stream
};

// The time one optimizer step takes on each resource, from the bytes and
// flops the placement implies and the rates given (or measured).
struct StepTimes {
  double compute = 0, h2d = 0, d2h = 0, cpu = 0, nvme = 0;
  double cpu_gbps = 0;
  std::string cpu_source;
  json to_json() const {
    const double sync = compute + d2h + cpu + nvme;
    const double slowest = std::max({compute, h2d, d2h, cpu, nvme});
    return {{"gpu_compute", compute},
            {"pcie_h2d", h2d},
            {"pcie_d2h", d2h},
            {"cpu_optimizer", cpu},
            {"nvme", nvme},
            {"slowest", slowest},
            {"sync_step", sync},
            {"cpu_gb_per_s", cpu_gbps},
            {"cpu_rate_source", cpu_source}};
  }
};

absl::StatusOr<StepTimes> predict_step(const PlanArgs& a, const model::Gpt2Config& m,
                                       const config::DsConfig& c, int64_t params, int cb) {
  StepTimes t;
  const double n = static_cast<double>(params);
  const double gas = static_cast<double>(c.gradient_accumulation_steps);
  const double seq = static_cast<double>(a.seq_len > 0 ? a.seq_len : m.seq_len);
  const double tokens = static_cast<double>(c.train_micro_batch_size_per_gpu) * gas * seq;
  // 6 flops per parameter per token, plus attention's 12 * layers * width * seq.
  const double flops = tokens * (6 * n + 12.0 * static_cast<double>(m.n_layer * m.n_embd) * seq);
  t.compute = flops / (a.gpu_tflops * 1e12);
  const bool opt_off = c.zero.offload_optimizer.device != OffloadDevice::kNone;
  const bool par_off = c.zero.offload_param.device != OffloadDevice::kNone;
  const double link = a.pcie_gbps * 1e9;
  t.cpu_source = "no optimizer offload";
  if (opt_off) {
    // Updated params go up once a step; at stage 3 they come up for each
    // micro-batch's forward and again for its backward. Grads come down
    // once a micro-batch.
    t.h2d = (par_off ? 2 * gas : 1) * n * cb / link;
    t.d2h = gas * n * cb / link;
    t.cpu_gbps = a.cpu_gbps;
    t.cpu_source = "--cpu-gbps";
    if (t.cpu_gbps <= 0) {
      STRATA_ASSIGN_OR_RETURN(BandwidthResult bw,
                              measure_adam_stream({.elements = size_t{16} << 20, .repeats = 3}),
                              "measuring the CPU optimizer's memory stream");
      t.cpu_gbps = bw.gb_per_s;
      t.cpu_source = "measured now (Adam-like stream)";
    }
    // 28 B/param for the step, (compute bytes + 8) per micro-batch to
    // accumulate the gradient in fp32.
    t.cpu = n * (28 + gas * (cb + 8)) / (t.cpu_gbps * 1e9);
  }
  double nvme_bytes = 0;
  if (c.zero.offload_optimizer.device == OffloadDevice::kNvme) nvme_bytes += 2 * 12 * n;
  if (c.zero.offload_param.device == OffloadDevice::kNvme) nvme_bytes += 2 * gas * n * cb + n * cb;
  t.nvme = nvme_bytes / (a.nvme_gbps * 1e9);
  return t;
}

// Bytes of text `strata train --data PATH` reads (one token a byte), or the error.
absl::StatusOr<uint64_t> text_bytes(const std::string& path) {
  STRATA_ASSIGN_OR_RETURN(std::vector<std::string> files, model::list_corpus_files(path), "--data");
  uint64_t total = 0;
  std::error_code ec;
  for (const std::string& f : files) total += std::filesystem::file_size(f, ec);
  return total;
}

// Bytes of each role on one tier.
struct Roles {
  int64_t param16 = 0;
  int64_t grad16 = 0;
  int64_t grad32 = 0;
  int64_t master32 = 0;
  int64_t exp_avg = 0;
  int64_t exp_avg_sq = 0;
  int64_t activations = 0;
  int64_t staging = 0;

  int64_t total() const {
    return param16 + grad16 + grad32 + master32 + exp_avg + exp_avg_sq + activations + staging;
  }
  json to_json() const {
    return {{"param16", param16},         {"grad16", grad16},   {"grad32", grad32},
            {"master32", master32},       {"exp_avg", exp_avg}, {"exp_avg_sq", exp_avg_sq},
            {"activations", activations}, {"staging", staging}};
  }
};

struct Tier {
  const char* name;
  Roles need;
  std::optional<int64_t> capacity;
  std::string capacity_source;  // "--gpu-mem", "MemAvailable", ...

  std::optional<bool> fits() const {
    if (need.total() == 0) return true;
    if (!capacity) return std::nullopt;
    return need.total() <= *capacity;
  }
};

struct Plan {
  model::Gpt2Config model;
  int64_t params = 0;
  int64_t largest_layer = 0;
  int compute_bytes = 2;
  std::string precision;
  std::string optimizer;
  Tier gpu{"gpu"}, host{"host"}, nvme{"nvme"};
  std::string ds_estimator;
  std::string ds_formula;
  int64_t ds_gpu = 0;
  int64_t ds_cpu = 0;
  std::vector<std::string> notes;
  std::vector<std::string> advice;
};

// "32GiB", "32G", "1.5 TiB", "4096": binary units, as `strata bench io`.
absl::StatusOr<int64_t> parse_bytes(const std::string& text, const char* flag) {
  auto bad = [&] {
    return absl::InvalidArgumentError(absl::StrCat(
        flag, " '", text, "' is not a size; use bytes or a number with K, M, G or T (e.g. 32GiB)"));
  };
  size_t i = 0;
  while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.'))
    ++i;
  const std::string number = text.substr(0, i);
  if (number.empty() || number.find('.') != number.rfind('.') || number == ".") return bad();
  std::string unit;
  for (size_t j = i; j < text.size(); ++j) {
    if (text[j] == ' ') continue;
    unit += static_cast<char>(std::toupper(static_cast<unsigned char>(text[j])));
  }
  double mult = 0;
  if (unit.empty() || unit == "B") mult = 1;
  if (unit == "K" || unit == "KB" || unit == "KIB") mult = 1024.0;
  if (unit == "M" || unit == "MB" || unit == "MIB") mult = 1024.0 * 1024;
  if (unit == "G" || unit == "GB" || unit == "GIB") mult = 1024.0 * 1024 * 1024;
  if (unit == "T" || unit == "TB" || unit == "TIB") mult = 1024.0 * 1024 * 1024 * 1024;
  if (mult == 0) return bad();
  const double bytes = std::stod(number) * mult;
  if (!(bytes >= 1) || bytes > 9e18) {
    return absl::InvalidArgumentError(absl::StrCat(flag, " '", text, "' must be at least 1 byte"));
  }
  return static_cast<int64_t>(bytes);
}

std::optional<int64_t> free_bytes_under(const std::string& path) {
  struct statvfs st {};
  if (path.empty() || ::statvfs(path.c_str(), &st) != 0) return std::nullopt;
  return static_cast<int64_t>(st.f_bavail) * static_cast<int64_t>(st.f_frsize);
}

std::string first_nvme_path(const config::DsConfig& c) {
  for (const auto* paths : {&c.zero.offload_optimizer.nvme_paths, &c.zero.offload_param.nvme_paths,
                            &c.strata.nvme_paths}) {
    if (!paths->empty()) return paths->front();
  }
  return "";
}

void place(const model::Gpt2Config& m, const config::DsConfig& c, Plan* p) {
  const int64_t n = p->params;
  const int64_t cb = p->compute_bytes;
  const auto& z = c.zero;
  const OffloadDevice opt = z.offload_optimizer.device;
  const OffloadDevice par = z.offload_param.device;
  const config::OptimizerType type = c.optimizer.type;
  const bool has_exp_avg = type != config::OptimizerType::kAdagrad;
  const bool has_exp_avg_sq = type != config::OptimizerType::kLion;

  // Parameters and their 16-bit gradients.
  if (par == OffloadDevice::kNone) {
    p->gpu.need.param16 = n * cb;
    p->gpu.need.grad16 = n * cb;
  } else {
    p->gpu.need.param16 = (p->largest_layer + std::min(z.stage3_prefetch_bucket_size, n)) * cb;
    p->gpu.need.grad16 = p->largest_layer * cb;
    Tier& home = par == OffloadDevice::kCpu ? p->host : p->nvme;
    home.need.param16 += n * cb;
    if (par == OffloadDevice::kNvme) {
      p->host.need.staging +=
          z.offload_param.buffer_count * std::min(z.offload_param.buffer_size, n) * cb;
    }
  }
  if (opt != OffloadDevice::kNone) {
    // The CPU optimizer reads gradients and writes parameters on the host.
    if (par == OffloadDevice::kNone) p->host.need.param16 += n * cb;
    p->host.need.grad16 += n * cb;
  }

  // Optimizer: fp32 accumulator, master and states.
  Tier& opt_tier = opt == OffloadDevice::kNone ? p->gpu : p->host;
  Tier& state_tier = opt == OffloadDevice::kNvme ? p->nvme : opt_tier;
  opt_tier.need.grad32 = n * 4;
  state_tier.need.master32 = n * 4;
  state_tier.need.exp_avg = has_exp_avg ? n * 4 : 0;
  state_tier.need.exp_avg_sq = has_exp_avg_sq ? n * 4 : 0;
  if (opt == OffloadDevice::kNvme) {
    p->host.need.staging += z.offload_optimizer.buffer_count * std::min(z.sub_group_size, n) * 4;
  }

  // Activations of one micro-batch (16-bit formula scaled to the compute dtype).
  const int64_t b = c.train_micro_batch_size_per_gpu, s = m.seq_len, e = m.n_embd;
  p->gpu.need.activations =
      m.n_layer * b * s * (34 * e + 5 * m.n_head * s) * cb / 2 + 4 * b * s * m.vocab_size;
}

// DeepSpeed's estimate_zero{2,3}_model_states_mem_needs for this placement,
// one GPU on one node, additional_buffer_factor 1.5, zero_init.
void deepspeed_estimate(const config::DsConfig& c, Plan* p) {
  const double n = static_cast<double>(p->params);
  const double largest = static_cast<double>(p->largest_layer);
  const bool opt_off = c.zero.offload_optimizer.device != OffloadDevice::kNone;
  const bool par_off = c.zero.offload_param.device != OffloadDevice::kNone;
  if (c.zero.stage < 3) {
    p->ds_estimator = "estimate_zero2_model_states_mem_needs_all_live";
    if (opt_off) {
      p->ds_formula = "cpu_offload: GPU 2N, CPU N*max(4G, 16)*1.5 with G = 1";
      p->ds_gpu = static_cast<int64_t>(2 * n);
      p->ds_cpu = static_cast<int64_t>(n * 16 * 1.5);
    } else {
      p->ds_formula = "no offload: GPU 2N + 18N/G, CPU 4N*1.5 with G = 1";
      p->ds_gpu = static_cast<int64_t>(2 * n) + static_cast<int64_t>(18 * n);
      p->ds_cpu = static_cast<int64_t>(n * 4 * 1.5);
    }
    if (c.zero.stage < 2) {
      p->notes.push_back("DeepSpeed has no estimator for ZeRO stage 0/1; its ZeRO-2 one is shown");
    }
    return;
  }
  p->ds_estimator = "estimate_zero3_model_states_mem_needs_all_live";
  const int64_t largest_mem = static_cast<int64_t>(4 * largest);
  if (opt_off && par_off) {
    p->ds_formula = "params and optimizer offloaded: GPU 4*largest_layer, CPU 18N*1.5";
    p->ds_gpu = largest_mem;
    p->ds_cpu = static_cast<int64_t>(n * 18 * 1.5);
  } else if (opt_off) {
    p->ds_formula = "optimizer offloaded: GPU 4*largest_layer + 2N/G, CPU 16N*1.5 with G = 1";
    p->ds_gpu = largest_mem + static_cast<int64_t>(2 * n);
    p->ds_cpu = static_cast<int64_t>(n * 16 * 1.5);
  } else {
    p->ds_formula = "no offload: GPU 4*largest_layer + 18N/G, CPU 4*largest_layer*1.5 with G = 1";
    p->ds_gpu = largest_mem + static_cast<int64_t>(18 * n);
    p->ds_cpu = static_cast<int64_t>(largest * 4 * 1.5);
  }
  if (par_off && !opt_off) {
    p->notes.push_back("DeepSpeed has no estimate for offload_param without offload_optimizer");
  }
}

void advise(const config::DsConfig& c, Plan* p) {
  const auto& z = c.zero;
  if (p->gpu.fits() == false) {
    const Roles& g = p->gpu.need;
    if (z.offload_optimizer.device == OffloadDevice::kNone) {
      p->advice.push_back(absl::StrCat(
          "GPU: set zero_optimization.offload_optimizer.device to \"cpu\" to move the optimizer's ",
          format_bytes(static_cast<double>(g.grad32 + g.master32 + g.exp_avg + g.exp_avg_sq)),
          " (fp32 gradients, master weights, optimizer states) to the host"));
    } else if (z.offload_param.device == OffloadDevice::kNone) {
      p->advice.push_back(
          "GPU: ZeRO stage 3 with zero_optimization.offload_param.device \"cpu\" keeps only the "
          "working layers on the GPU");
    }
    const int64_t b = c.train_micro_batch_size_per_gpu;
    if (b > 1) {
      p->advice.push_back(absl::StrCat(
          "GPU: activations take ", format_bytes(static_cast<double>(g.activations)),
          " at train_micro_batch_size_per_gpu ", b, "; a smaller micro batch (", b / 2,
          " needs about half) with gradient_accumulation_steps raised to keep train_batch_size ",
          c.train_batch_size));
    } else {
      p->advice.push_back(
          absl::StrCat("GPU: activations take ", format_bytes(static_cast<double>(g.activations)),
                       " at micro batch 1; use a shorter sequence or a larger GPU"));
    }
  }
  if (p->host.fits() == false) {
    if (z.offload_optimizer.device == OffloadDevice::kCpu) {
      const Roles& h = p->host.need;
      p->advice.push_back(absl::StrCat(
          "host: set zero_optimization.offload_optimizer.device to \"nvme\" with an nvme_path to "
          "move master weights and optimizer states (",
          format_bytes(static_cast<double>(h.master32 + h.exp_avg + h.exp_avg_sq)), ") to NVMe"));
    }
    if (z.offload_param.device == OffloadDevice::kCpu) {
      p->advice.push_back(
          "host: set zero_optimization.offload_param.device to \"nvme\" to move the 16-bit "
          "parameters to NVMe");
    }
    if (z.offload_optimizer.device == OffloadDevice::kNvme) {
      const int64_t n = p->params;
      p->advice.push_back(
          absl::StrCat("host: lower zero_optimization.sub_group_size (now ", z.sub_group_size,
                       "): the NVMe swap buffers are offload_optimizer.buffer_count ",
                       z.offload_optimizer.buffer_count, " x min(sub_group_size, params) x 4 B = ",
                       format_bytes(static_cast<double>(z.offload_optimizer.buffer_count *
                                                        std::min(z.sub_group_size, n) * 4))));
    }
    if (z.offload_param.device == OffloadDevice::kNvme) {
      p->advice.push_back(
          absl::StrCat("host: lower zero_optimization.offload_param.buffer_size (now ",
                       z.offload_param.buffer_size, ") or buffer_count (now ",
                       z.offload_param.buffer_count, ")"));
    }
    p->advice.push_back("host: free memory or give a larger --host-mem if more is available");
  }
  if (p->nvme.fits() == false) {
    p->advice.push_back(
        "NVMe: free space under nvme_path, or list several drives in nvme_path to stripe across "
        "them");
  }
}

json tier_json(const Tier& t) {
  json j = {{"roles", t.need.to_json()}, {"total", t.need.total()}};
  j["capacity"] = t.capacity ? json(*t.capacity) : json(nullptr);
  j["capacity_source"] = t.capacity_source;
  j["fits"] = nullptr;
  if (const auto fits = t.fits()) j["fits"] = *fits;
  return j;
}

void print_human(const Plan& p, const std::string& file) {
  auto line = [](const char* fmt, auto... args) { std::fprintf(stderr, fmt, args...); };
  line("%s: %lld params (largest layer %lld), %s, optimizer %s; plan for %s\n",
       p.model.name.c_str(), static_cast<long long>(p.params),
       static_cast<long long>(p.largest_layer), p.precision.c_str(), p.optimizer.c_str(),
       file.c_str());
  line("  %-12s %12s %12s %12s\n", "role", "gpu", "host", "nvme");
  const char* names[] = {"param16", "grad16",     "grad32",      "master32",
                         "exp_avg", "exp_avg_sq", "activations", "staging"};
  for (const char* name : names) {
    auto col = [&](const Tier& t) {
      return format_bytes(static_cast<double>(t.need.to_json()[name].get<int64_t>()));
    };
    line("  %-12s %12s %12s %12s\n", name, col(p.gpu).c_str(), col(p.host).c_str(),
         col(p.nvme).c_str());
  }
  for (const Tier* t : {&p.gpu, &p.host, &p.nvme}) {
    const std::string need = format_bytes(static_cast<double>(t->need.total()));
    if (t->need.total() == 0) {
      line("  %-5s not used\n", t->name);
    } else if (!t->capacity) {
      line("  %-5s needs %s (capacity unknown%s)\n", t->name, need.c_str(),
           std::string(t->name) == "gpu" ? "; pass --gpu-mem, e.g. 32GiB" : "");
    } else {
      line("  %-5s needs %s of %s (%s): %s\n", t->name, need.c_str(),
           format_bytes(static_cast<double>(*t->capacity)).c_str(), t->capacity_source.c_str(),
           *t->fits() ? "fits" : "DOES NOT FIT");
    }
  }
  line("  DeepSpeed %s (%s): GPU %s, CPU %s\n", p.ds_estimator.c_str(), p.ds_formula.c_str(),
       format_bytes(static_cast<double>(p.ds_gpu)).c_str(),
       format_bytes(static_cast<double>(p.ds_cpu)).c_str());
  for (const std::string& n : p.notes) line("  note: %s\n", n.c_str());
  for (const std::string& a : p.advice) line("  to fit: %s\n", a.c_str());
}

int run_plan(const PlanArgs& a) {
  auto usage = [](const absl::Status& s) { return report_status(s) == 0 ? 0 : 2; };
  std::optional<int64_t> gpu_cap, host_cap, nvme_cap;
  for (auto [text, flag, out] : {std::tuple{&a.gpu_mem, "--gpu-mem", &gpu_cap},
                                 std::tuple{&a.host_mem, "--host-mem", &host_cap},
                                 std::tuple{&a.nvme, "--nvme", &nvme_cap}}) {
    if (text->empty()) continue;
    auto bytes = parse_bytes(*text, flag);
    if (!bytes.ok()) return usage(bytes.status());
    *out = *bytes;
  }
  auto model = model::gpt2_config_by_name(a.model);
  if (!model.ok()) return report_status(model.status());
  std::vector<std::string> warnings;
  auto cfg = config::load_ds_config(a.config_file, &warnings);
  for (const std::string& w : warnings) std::fprintf(stderr, "strata: warning: %s\n", w.c_str());
  if (!cfg.ok()) return report_status(cfg.status());

  Plan p;
  p.model = *model;
  p.params = model::gpt2_param_count(*model);
  p.largest_layer = model::gpt2_largest_layer_params(*model);
  p.compute_bytes = cfg->fp16.enabled || cfg->bf16.enabled ? 2 : 4;
  p.precision = cfg->fp16.enabled ? "fp16" : cfg->bf16.enabled ? "bf16" : "fp32";
  p.optimizer = std::string(config::to_string(cfg->optimizer.type));
  if (cfg->optimizer.type == config::OptimizerType::kNone) {
    p.optimizer = "AdamW";
    p.notes.push_back("the config has no \"optimizer\" section; AdamW (two fp32 states) assumed");
  }
  place(*model, *cfg, &p);
  deepspeed_estimate(*cfg, &p);

  p.gpu.capacity = gpu_cap;
  p.gpu.capacity_source = gpu_cap ? "--gpu-mem" : "";
  if (host_cap) {
    p.host.capacity = host_cap;
    p.host.capacity_source = "--host-mem";
  } else {
    const MemoryInfo mem = probe_host().memory;
    if (mem.usable_bytes() > 0) {
      p.host.capacity = static_cast<int64_t>(mem.usable_bytes());
      p.host.capacity_source =
          mem.cgroup_limit_bytes && *mem.cgroup_limit_bytes < mem.available_bytes ? "cgroup limit"
                                                                                  : "MemAvailable";
    }
  }
  if (nvme_cap) {
    p.nvme.capacity = nvme_cap;
    p.nvme.capacity_source = "--nvme";
  } else if (p.nvme.need.total() > 0) {
    const std::string path = first_nvme_path(*cfg);
    if (auto free = free_bytes_under(path)) {
      p.nvme.capacity = free;
      p.nvme.capacity_source = absl::StrCat("free under ", path);
    }
  }
  advise(*cfg, &p);

  auto times = predict_step(a, *model, *cfg, p.params, p.compute_bytes);
  if (!times.ok()) return report_status(times.status());

  // The peak RSS of `strata train --device cpu` for this run (the simulated
  // GPU and the CPU model live in host memory).
  std::optional<TrainMemoryEstimate> rss;
  if (a.device == "cpu") {
    model::Gpt2Config m = *model;
    if (a.vocab_size > 0) m.vocab_size = a.vocab_size;
    uint64_t data_bytes = 0;
    if (!a.data.empty()) {
      auto bytes = text_bytes(a.data);
      if (!bytes.ok()) return report_status(bytes.status());
      data_bytes = *bytes;
    }
    auto e = estimate_train_memory({.model = m,
                                    .config = *cfg,
                                    .seq_len = a.seq_len,
                                    .simulated_device = true,
                                    .checkpoint_activations = a.checkpoint_activations,
                                    .data_tokens = static_cast<int64_t>(data_bytes),
                                    .async_checkpoint = a.async_save});
    if (!e.ok()) return report_status(e.status());
    rss = *e;
  }

  bool short_somewhere = false, unchecked = false;
  for (const Tier* t : {&p.gpu, &p.host, &p.nvme}) {
    const std::optional<bool> f = t->fits();
    if (!f.has_value()) unchecked = true;
    if (f == false) short_somewhere = true;
  }
  // null: nothing known to be short, but not every tier could be checked.
  json fits_json = nullptr;
  if (short_somewhere || !unchecked) fits_json = !short_somewhere;

  if (a.json) {
    json j = {
        {"model",
         {{"name", p.model.name},
          {"n_layer", p.model.n_layer},
          {"n_head", p.model.n_head},
          {"n_embd", p.model.n_embd},
          {"vocab_size", p.model.vocab_size},
          {"seq_len", p.model.seq_len},
          {"params", p.params},
          {"largest_layer_params", p.largest_layer}}},
        {"config",
         {{"file", a.config_file},
          {"zero_stage", cfg->zero.stage},
          {"precision", p.precision},
          {"compute_bytes", p.compute_bytes},
          {"optimizer", p.optimizer},
          {"offload_optimizer", std::string(config::to_string(cfg->zero.offload_optimizer.device))},
          {"offload_param", std::string(config::to_string(cfg->zero.offload_param.device))},
          {"micro_batch", cfg->train_micro_batch_size_per_gpu}}},
        {"tiers",
         {{"gpu", tier_json(p.gpu)}, {"host", tier_json(p.host)}, {"nvme", tier_json(p.nvme)}}},
        {"formulas",
         {{"activations", "n_layer*b*s*(34*n_embd + 5*n_head*s)*compute_bytes/2 + 4*b*s*vocab"},
          {"staging",
           "host, nvme optimizer: offload_optimizer.buffer_count*min(sub_group_size,N)*4; "
           "+ nvme params: offload_param.buffer_count*min(buffer_size,N)*compute_bytes"}}},
        {"deepspeed",
         {{"estimator", p.ds_estimator},
          {"formula", p.ds_formula},
          {"gpu", p.ds_gpu},
          {"cpu", p.ds_cpu}}},
        {"fits", fits_json},
        {"train_rss_estimate", rss ? rss->to_json() : json(nullptr)},
        {"step_seconds", times->to_json()},
        {"advice", p.advice},
        {"notes", p.notes},
        {"warnings", warnings}};
    print_json(j);
  } else {
    print_human(p, a.config_file);
    const json st = times->to_json();
    std::fprintf(stderr,
                 "  step time per resource: GPU %.3f s (%.0f TFLOPS), PCIe H2D %.3f s / D2H %.3f s "
                 "(%.0f GB/s), CPU optimizer %.3f s (%.1f GB/s, %s), NVMe %.3f s (%.1f GB/s); "
                 "sync order about %.3f s, fully overlapped (delayed update) about %.3f s\n",
                 times->compute, a.gpu_tflops, times->h2d, times->d2h, a.pcie_gbps, times->cpu,
                 times->cpu_gbps, times->cpu_source.c_str(), times->nvme, a.nvme_gbps,
                 st["sync_step"].get<double>(), st["slowest"].get<double>());
    if (rss) {
      std::fprintf(stderr, "  strata train --device cpu: peak RSS about %s (%s)\n",
                   format_bytes(static_cast<double>(rss->total())).c_str(),
                   rss->describe_parts().c_str());
    }
    std::fprintf(stderr, "%s\n",
                 short_somewhere ? "verdict: DOES NOT FIT (see \"to fit\" above)"
                 : unchecked     ? "verdict: nothing is short on the tiers checked; pass "
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
  cmd->add_flag("--json", a->json, "print one JSON object on stdout");
  cmd->add_option("--device", a->device,
                  "cpu: also predict the peak RSS of strata train --device cpu for this run")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->add_option("--seq-len", a->seq_len, "with --device cpu: train's --seq-len")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--vocab-size", a->vocab_size,
                  "with --device cpu: the trained vocabulary (256 for byte-level text)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--data", a->data, "with --device cpu: train's --data (file or folder)");
  cmd->add_flag("--checkpoint-activations", a->checkpoint_activations,
                "with --device cpu: train's --checkpoint-activations");
  cmd->add_flag("--async-save", a->async_save, "with --device cpu: train's --async-save");
  cmd->add_option("--gpu-tflops", a->gpu_tflops, "achieved GPU TFLOPS for the step time (200)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--pcie-bw", a->pcie_gbps, "PCIe GB/s each way (25)")->check(CLI::PositiveNumber);
  cmd->add_option("--nvme-bw", a->nvme_gbps, "NVMe GB/s (3)")->check(CLI::PositiveNumber);
  cmd->add_option("--cpu-gbps", a->cpu_gbps,
                  "the CPU optimizer's GB/s (default: an Adam-like stream measured now)")
      ->check(CLI::PositiveNumber);
  cmd->callback([=] { *exit_code = run_plan(*a); });
}

}  // namespace strata::tools
