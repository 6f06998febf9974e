#include "engine/step_benchmark.h"

#include <algorithm>
#include <filesystem>
#include <memory>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/config/ds_config.h"
#include "core/memory_bandwidth.h"
#include "core/status.h"
#include "dist/communicator.h"
#include "dist/net.h"
#include "engine/placement.h"
#include "engine/training_engine.h"
#include "gpu/sim_device.h"
#include "offload/busy_io_engine.h"
#include "swap/io_bench.h"
#include "swap/io_config.h"
#include "tbb/task_arena.h"

namespace strata::engine {
namespace {

// GPT-2's layer list with modelled compute: the engine drives it like the
// real model, the device only spends time.
class TimedGpt2Layers final : public Model {
 public:
  TimedGpt2Layers(const StepBenchmarkOptions& o, int64_t width, gpu::SimDevice* device)
      : device_(device) {
    const int64_t c = width, tokens = o.micro_batch * o.seq_len;
    const double flops_per_s = o.tflops * 1e12;
    layers_.push_back({{"wte", uint64_t(o.vocab_size * c)}, {"wpe", uint64_t(o.positions * c)}});
    forward_seconds_.push_back(0);  // a lookup
    std::vector<ParamSpec> block = {{"ln_1.w", uint64_t(c)},
                                    {"ln_1.b", uint64_t(c)},
                                    {"attn.qkv.w", uint64_t(3 * c * c)},
                                    {"attn.qkv.b", uint64_t(3 * c)},
                                    {"attn.proj.w", uint64_t(c * c)},
                                    {"attn.proj.b", uint64_t(c)},
                                    {"ln_2.w", uint64_t(c)},
                                    {"ln_2.b", uint64_t(c)},
                                    {"mlp.fc.w", uint64_t(4 * c * c)},
                                    {"mlp.fc.b", uint64_t(4 * c)},
                                    {"mlp.proj.w", uint64_t(4 * c * c)},
                                    {"mlp.proj.b", uint64_t(c)}};
    uint64_t block_params = 0;
    for (const ParamSpec& p : block) block_params += p.numel;
    const double block_flops =
        2.0 * tokens * block_params + 2.0 * o.micro_batch * o.seq_len * o.seq_len * c;  // causal
    for (int64_t l = 0; l < o.n_layer; ++l) {
      layers_.push_back(block);
      forward_seconds_.push_back(block_flops / flops_per_s);
    }
    layers_.push_back({{"ln_f.w", uint64_t(c)}, {"ln_f.b", uint64_t(c)}});
    forward_seconds_.push_back(2.0 * tokens * o.vocab_size * c / flops_per_s);  // tied head
  }

  int num_layers() const override { return static_cast<int>(layers_.size()); }
  std::vector<ParamSpec> layer_params(int layer) const override { return layers_[layer]; }
  void init_param(int layer, int param, float* out) const override {
    std::fill_n(out, layers_[layer][param].numel, 0.01f);
  }
  absl::Status forward(int layer, const LayerContext& ctx) override {
    return device_->launch_timed_compute(ctx.stream, forward_seconds_[layer]);
  }
  absl::Status backward(int layer, const LayerContext& ctx) override {
    return device_->launch_timed_compute(ctx.stream, 2 * forward_seconds_[layer]);
  }
  double loss() const override { return 0; }

  double step_compute_seconds() const {
    double s = 0;
    for (double f : forward_seconds_) s += 3 * f;
    return s;
  }
  int64_t params() const {
    int64_t n = 0;
    for (const auto& l : layers_) {
      for (const ParamSpec& p : l) n += static_cast<int64_t>(p.numel);
    }
    return n;
  }

 private:
  gpu::SimDevice* device_;
  std::vector<std::vector<ParamSpec>> layers_;
  std::vector<double> forward_seconds_;
};

absl::StatusOr<config::DsConfig> bench_config(const StepBenchmarkOptions& o,
                                              const std::string& mode, const std::string& dir) {
  // The global batch: each rank's micro batch times the ranks.
  std::string zero = absl::StrCat("{\"stage\": ", o.zero_stage,
                                  ", \"offload_optimizer\": {\"device\": \"", o.offload, "\"");
  if (o.offload == "nvme") absl::StrAppend(&zero, ", \"nvme_path\": \"", dir, "\"");
  absl::StrAppend(&zero, "}");
  if (o.reduce_bucket_size > 0) {
    absl::StrAppend(&zero, ", \"reduce_bucket_size\": ", o.reduce_bucket_size);
  }
  absl::StrAppend(&zero, "}");
  const std::string json = absl::StrCat(
      "{\"train_micro_batch_size_per_gpu\": ", o.micro_batch,
      ", \"gradient_accumulation_steps\": ", o.gradient_accumulation_steps, ", \"", o.precision,
      "\": {\"enabled\": true}, \"optimizer\": {\"type\": \"AdamW\", \"params\": "
      "{\"lr\": 1e-4}}, \"communication_data_type\": \"",
      o.precision, "\", \"zero_optimization\": ", zero, ", \"strata\": {\"overlap\": \"",
      mode == "sync" ? "sync" : "overlap",
      "\", \"delayed_param_update\": ", mode == "delayed" ? "true" : "false",
      o.prefetch_window_bytes > 0
          ? absl::StrCat(", \"prefetch_window_bytes\": ", o.prefetch_window_bytes)
          : std::string(),
      "}}");
  std::vector<std::string> warnings;
  return config::parse_ds_config(json, "bench step", &warnings, o.world_size);
}

// One mode's steps on one rank (comm null: the only rank).
absl::StatusOr<StepBenchmarkMode> run_mode(const StepBenchmarkOptions& o, const char* mode,
                                           const std::string& dir, tbb::task_arena* arena,
                                           dist::Communicator* comm, int64_t* params) {
  const int64_t width = o.n_embd / o.width_divisor;
  StepBenchmarkMode m;
  m.mode = mode;
  gpu::SimDevice device({.capacity_bytes = uint64_t{80} << 30,
                         .h2d_gb_per_s = o.link_gb_per_s,
                         .d2h_gb_per_s = o.link_gb_per_s,
                         .move_data = false,
                         .costs = {.enabled = o.device_costs}});
  TimedGpt2Layers model(o, width, &device);
  *params = model.params();
  STRATA_ASSIGN_OR_RETURN(config::DsConfig cfg, bench_config(o, mode, dir));
  EngineOptions eo;
  eo.allow_buffered_io = true;
  eo.exec.arena = arena;
  eo.comm = comm;
  // The engine's I/O as it would build it from ds_config "aio", wrapped to
  // time the drive's busy intervals.
  std::unique_ptr<swap::IoEngine> io;
  std::unique_ptr<offload::BusyIoEngine> busy_io;
  if (o.offload == "nvme") {
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    STRATA_ASSIGN_OR_RETURN(swap::IoEngineOptions io_options,
                            swap::io_engine_options(cfg.aio, {dir}));
    io_options.allow_buffered = true;
    STRATA_ASSIGN_OR_RETURN(io, swap::make_io_engine(io_options));
    busy_io = std::make_unique<offload::BusyIoEngine>(io.get());
    eo.io = busy_io.get();
  }
  STRATA_ASSIGN_OR_RETURN(std::unique_ptr<TrainingEngine> engine,
                          TrainingEngine::create(cfg, &model, &device, std::move(eo)));
  for (int s = 0; s < o.steps; ++s) {
    const uint64_t host_stall0 = engine->store_stats().tiers[1].stall_ns;
    const offload::IoBusyTimes io0 = busy_io ? busy_io->busy() : offload::IoBusyTimes{};
    STRATA_ASSIGN_OR_RETURN(StepStats st, engine->train_step(), absl::StrCat(mode, " step ", s));
    const offload::IoBusyTimes io1 = busy_io ? busy_io->busy() : offload::IoBusyTimes{};
    const uint64_t host_stall = engine->store_stats().tiers[1].stall_ns - host_stall0;
    StepBenchmarkStep r;
    r.host_syncs = static_cast<double>(st.host_syncs);
    r.device_syncs = static_cast<double>(st.device_syncs);
    r.device_allocations = static_cast<double>(st.device_allocations);
    r.step_seconds = st.step_seconds;
    r.compute_seconds = model.step_compute_seconds() * o.gradient_accumulation_steps;
    r.h2d_seconds = st.bytes_in[0] / (o.link_gb_per_s * 1e9);
    r.d2h_seconds = st.bytes_out[0] / (o.link_gb_per_s * 1e9);
    // The engine times its gradient and optimizer work with the waits for
    // the store's transfers inside; those waits are the link's and the
    // drive's time, not the CPU's.
    r.host_seconds = std::max(
        0.0, st.grad_seconds + st.optimizer_seconds - static_cast<double>(host_stall) * 1e-9);
    r.optimizer_seconds = st.optimizer_seconds;
    r.optimizer_bytes = static_cast<double>(st.optimizer_bytes);
    r.optimizer_gb_per_s = st.optimizer_gb_per_s;
    r.h2d_bytes = static_cast<double>(st.bytes_in[0]);
    r.d2h_bytes = static_cast<double>(st.bytes_out[0]);
    r.host_bytes = static_cast<double>(engine->store_stats().tiers[1].peak_bytes);
    const Placement& plan = engine->optimizer().placement();
    r.host_plan_bytes = static_cast<double>(plan.host_homed + plan.host_cache);
    r.nvme_read_seconds = (io1.read_ns - io0.read_ns) * 1e-9;
    r.nvme_write_seconds = (io1.write_ns - io0.write_ns) * 1e-9;
    r.nvme_seconds = (io1.any_ns - io0.any_ns) * 1e-9;
    // The NVMe tier counts bytes written to disk as bytes_in, read as bytes_out.
    r.nvme_read_bytes = static_cast<double>(st.bytes_out[2]);
    r.nvme_write_bytes = static_cast<double>(st.bytes_in[2]);
    r.speculative_layers = st.speculative_layers;
    r.rolled_back_layers = st.rolled_back_layers;
    r.rate_against_slowest();
    m.steps.push_back(std::move(r));
  }
  engine.reset();  // before the I/O engines it uses
  return m;
}

}  // namespace

void StepBenchmarkStep::rate_against_slowest() {
  const std::pair<const char*, double> resources[] = {{"compute", compute_seconds},
                                                      {"h2d", h2d_seconds},
                                                      {"d2h", d2h_seconds},
                                                      {"cpu", host_seconds},
                                                      {"nvme", nvme_seconds}};
  slowest.clear();
  slowest_seconds = 0;
  for (const auto& [name, seconds] : resources) {
    if (seconds > slowest_seconds) {
      slowest = name;
      slowest_seconds = seconds;
    }
  }
  ratio = slowest_seconds > 0 ? step_seconds / slowest_seconds : 0;
}

absl::StatusOr<StepBenchmarkResult> run_step_benchmark(const StepBenchmarkOptions& o) {
  if (o.n_layer < 1 || o.width_divisor < 1 || o.n_embd % o.width_divisor != 0 ||
      o.micro_batch < 1 || o.seq_len < 1 || o.seq_len > o.positions || o.steps < 2 ||
      o.gradient_accumulation_steps < 1 || !(o.tflops > 0) || !(o.link_gb_per_s > 0) ||
      (o.offload != "cpu" && o.offload != "nvme") ||
      (o.precision != "fp16" && o.precision != "bf16") || o.world_size < 1 || o.world_size > 64 ||
      o.zero_stage < 1 || o.zero_stage > 3) {
    return absl::InvalidArgumentError(
        "bench step needs n_layer >= 1, a width divisor that divides n_embd, seq_len <= "
        "positions, steps >= 2, positive tflops and link rate, offload cpu or nvme, "
        "precision fp16 or bf16, a world size from 1 to 64 and a ZeRO stage from 1 to 3");
  }
  StepBenchmarkResult result;
  result.options = o;
  result.width = o.n_embd / o.width_divisor;
  const std::string dir = o.nvme_dir + "/strata-bench-step";
  if (o.offload == "nvme") {
    STRATA_ASSIGN_OR_RETURN(swap::SequentialIoReport probe,
                            swap::probe_directory(dir, uint64_t{256} << 20));
    result.nvme_read_gb_per_s = probe.read->gb_per_s;
    result.nvme_write_gb_per_s = probe.write->gb_per_s;
  }

  // The roofline of the host optimizer, measured in this run (the machine's
  // load changes it): 8M elements (224 MiB), far beyond the caches.
  STRATA_ASSIGN_OR_RETURN(
      const BandwidthResult stream,
      measure_adam_stream({.elements = size_t{8} << 20, .threads = o.cpu_threads, .repeats = 3}),
      "the Adam-like stream");
  result.stream_gb_per_s = stream.gb_per_s;

  std::unique_ptr<tbb::task_arena> arena;
  if (o.cpu_threads > 0) arena = std::make_unique<tbb::task_arena>(o.cpu_threads);
  std::vector<const char*> modes = {"sync", "overlap", "delayed"};
  if (o.world_size > 1) modes.pop_back();  // the engine refuses it across ranks
  for (const char* mode : modes) {
    if (o.world_size == 1) {
      STRATA_ASSIGN_OR_RETURN(StepBenchmarkMode m,
                              run_mode(o, mode, dir, arena.get(), nullptr, &result.params));
      result.modes.push_back(std::move(m));
      continue;
    }
    // One thread per rank, each joined to the others over loopback.
    STRATA_ASSIGN_OR_RETURN(const int port, dist::pick_free_port(), "bench step --world-size");
    const int cores = o.cpu_threads > 0
                          ? o.cpu_threads
                          : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
    const int per_rank = std::max(1, cores / o.world_size);
    std::vector<absl::StatusOr<StepBenchmarkMode>> ranks(o.world_size,
                                                         absl::UnknownError("not run"));
    std::vector<std::thread> threads;
    for (int r = 0; r < o.world_size; ++r) {
      threads.emplace_back([&, r] {
        auto comm =
            dist::connect({.rank = r,
                           .world_size = o.world_size,
                           .local_rank = r,
                           .local_world_size = o.world_size,
                           .master_addr = "127.0.0.1",
                           .master_port = port},
                          {.backend = dist::Backend::kGloo, .timeout = std::chrono::seconds(120)});
        if (!comm.ok()) {
          ranks[r] = comm.status();
          return;
        }
        tbb::task_arena rank_arena(per_rank);
        int64_t params = 0;
        ranks[r] =
            run_mode(o, mode, absl::StrCat(dir, "/rank", r), &rank_arena, comm->get(), &params);
        if (r == 0) result.params = params;
      });
    }
    for (std::thread& t : threads) t.join();
    for (int r = 0; r < o.world_size; ++r) {
      STRATA_RETURN_IF_ERROR(ranks[r].status(), absl::StrCat(mode, ", rank ", r));
    }
    StepBenchmarkMode m = *ranks[0];  // a copy: ranks[0] is read below
    for (size_t s = 0; s < m.steps.size(); ++s) {
      for (int r = 0; r < o.world_size; ++r) {
        const StepBenchmarkStep& x = ranks[r]->steps[s];
        m.steps[s].ranks.push_back({.h2d_bytes = x.h2d_bytes,
                                    .d2h_bytes = x.d2h_bytes,
                                    .host_bytes = x.host_bytes,
                                    .host_plan_bytes = x.host_plan_bytes,
                                    .optimizer_bytes = x.optimizer_bytes});
      }
    }
    result.modes.push_back(std::move(m));
  }
  std::error_code ec;
  if (o.offload == "nvme") std::filesystem::remove_all(dir, ec);
  return result;
}

}  // namespace strata::engine
