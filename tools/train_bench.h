// run_train_bench: what `strata bench train` measures. Trains a GPT-2 family
// model for a few steps in each requested placement -- optimizer offload
// none / cpu / nvme crossed with strata.overlap sync / overlap -- each on a
// fresh SimDevice, model and TrainingEngine built from a ds_config made
// here, and reports per placement the step time and tokens per second over
// the steps after the first (the first records the store's trace and
// warms caches), and the offload overhead against the no-offload run of the
// same overlap mode: (step(offload) - step(none)) / step(none).
//
// Data: synthetic tokens in the model's own vocabulary (gpt2 keeps its
// 50257-entry BPE vocabulary, so it is the real 124M model), or, with
// `data`, a byte-level corpus (model::load_byte_corpus; vocabulary 256).
//
// Errors: bad options (unknown model, seq_len beyond the model, fewer than
// 2 steps, an unusable nvme_path) are returned before any placement runs.
// A placement that fails to build or step is reported in its result
// (`error`), and the others still run. Threads: call from one thread; the
// model uses all cores through OpenBLAS / oneTBB (set_blas_threads is the
// caller's). Host memory: one placement at a time, each freed before the next.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/config/ds_config.h"

namespace strata::tools {

struct TrainBenchPlacement {
  config::OffloadDevice offload = config::OffloadDevice::kNone;
  config::OverlapMode overlap = config::OverlapMode::kSync;
};

struct TrainBenchOptions {
  std::string model = "gpt2-tiny";
  int64_t steps = 6;  // per placement, the first not timed; at least 2
  int64_t seq_len = 128;
  int64_t micro_batch = 2;
  std::string dtype = "fp16";  // fp16 | bf16 | fp32
  bool checkpoint_activations = false;
  std::string data;       // empty: synthetic tokens
  std::string nvme_path;  // where swap files go; empty: a temporary folder, removed after
  uint64_t gpu_mem = uint64_t{8} << 30;
  uint64_t seed = 1337;
  // Empty: all six (none, cpu, nvme) x (sync, overlap), in that order.
  std::vector<TrainBenchPlacement> placements;
  bool fuse_gradient_pass = true;  // false: the unfused three-pass gradient path (A/B)
};

struct TrainBenchResult {
  TrainBenchPlacement placement;
  std::string error;  // non-empty: the placement failed (the rest is unset)
  int64_t steps = 0;  // steps run (including the first)
  int64_t tokens_per_step = 0;
  double first_step_seconds = 0;
  double mean_step_seconds = 0;  // over steps 2..N
  double tokens_per_second = 0;  // tokens_per_step / mean_step_seconds
  // Against the no-offload placement of the same overlap mode; unset for
  // none itself or when that placement was not run or failed.
  std::optional<double> overhead_fraction;
  double first_loss = 0, last_loss = 0;
  int64_t skipped_steps = 0;  // fp16 overflow
  // Mean per timed step, by tier (device, host, nvme), in + out.
  std::vector<double> bytes_moved_per_step;
  uint64_t saved_activation_bytes = 0;  // model::gpt2_activation_memory
  // The host optimizer over the timed steps: seconds per step and its
  // effective bandwidth (StepStats::optimizer_bytes / optimizer_seconds,
  // summed over the steps).
  double grad_seconds_per_step = 0;  // gradient copy-out, accumulation, statistics
  double optimizer_seconds_per_step = 0;
  double optimizer_gb_per_s = 0;
};

struct TrainBenchSummary {
  std::string model;
  int64_t params = 0;
  int64_t vocab = 0;
  std::string data;  // "synthetic" or the corpus path
  // The Adam-like stream (measure_adam_stream, 28 B/param), measured once
  // before the placements: what optimizer_gb_per_s is compared with.
  double stream_gb_per_s = 0;
  std::vector<TrainBenchResult> results;
};

// The checks run_train_bench makes before any work: steps >= 2, sizes >= 1,
// a known model whose positions cover seq_len, a known dtype. InvalidArgument
// or NotFound naming the option.
absl::Status validate_train_bench_options(const TrainBenchOptions& options);

// `on_result` (optional) sees each placement's result as it finishes
// (overhead_fraction is filled in afterwards, in the summary).
absl::StatusOr<TrainBenchSummary> run_train_bench(
    const TrainBenchOptions& options,
    const std::function<void(const TrainBenchResult&)>& on_result = {});

// The ds_config of one placement, as run_train_bench builds it (fp16 with
// dynamic loss scaling from 2^8, AdamW, clipping 1.0, ZeRO stage 2).
absl::StatusOr<config::DsConfig> train_bench_ds_config(const TrainBenchOptions& options,
                                                       const TrainBenchPlacement& placement,
                                                       const std::string& nvme_path);

}  // namespace strata::tools
