// The user's DeepSpeed ds_config JSON, parsed into typed structs and validated
// with DeepSpeed's rules (see docs/ds_config.md "DeepSpeed semantics").
//
// What: parse_ds_config / load_ds_config turn the JSON users already have
// into a DsConfig with every default filled in; to_json prints it back
// (resolved). Known keys are type- and range-checked; unknown keys are not an
// error but add a warning (with a "did you mean" for likely typos); keys
// DeepSpeed knows but strata does not use add a warning that they are
// ignored, and those it reads but does not act on (buffer_count,
// pipeline_read, sub_group_size, stage3_max_reuse_distance, ...) a warning
// saying what strata does instead, when set to other than DeepSpeed's
// default; sizes no machine holds (a micro batch above 65536, strata byte
// keys above 1 PiB) and eps <= 0 are errors naming the key; deprecated keys
// (zero_optimization.cpu_offload, cpu_offload_param, cpu_offload_use_pin_memory) are mapped onto
// their replacements with a warning. Old and new names of one setting (aio.thread_count and
// intra_op_parallelism, bfloat16 and bf16, stage3_prefetch_bucket_size and
// prefetch_bucket_size, ...) are both accepted; giving both is an error.
//
// Errors: InvalidArgument (NotFound for a missing file) whose message is one
// line "SOURCE: key.path: what is wrong (got VALUE); what to do". Duplicate
// JSON keys, a number with a fraction where an integer is expected, and
// JSON null are handled strictly / leniently as follows: duplicates are an
// error; 2e8 is accepted where an integer is expected (it is integral), 2.5
// is not; null means "not given" (the default applies).
//
// strata extensions live under "strata": {...} (StrataConfig), and nvme_path
// may be a list of directories (striping across drives).
//
// Threading: pure functions, no shared state. Usage:
//   std::vector<std::string> warnings;
//   STRATA_ASSIGN_OR_RETURN(DsConfig cfg, load_ds_config(path, &warnings));
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace strata::config {

enum class OffloadDevice { kNone, kCpu, kNvme };

struct OffloadOptimizerConfig {
  OffloadDevice device = OffloadDevice::kNone;
  std::vector<std::string> nvme_paths;  // "nvme_path": a string or (strata) a list
  int64_t buffer_count = 4;
  bool pin_memory = false;
  // DeepSpeed's overlap of swap-in (read) and swap-out (write) with the
  // optimizer. Unset: strata's NVMe pipeline (read-ahead, write-behind) is
  // on; false turns that half off (each transfer then runs to its end on
  // the thread that needs it), true keeps it on. Read by
  // swap::nvme_pipeline (swap/io_config.h).
  std::optional<bool> pipeline_read;
  std::optional<bool> pipeline_write;
  bool fast_init = false;
  double ratio = 1.0;  // fraction of the optimizer step done on the CPU, in [0, 1]
  bool operator==(const OffloadOptimizerConfig&) const = default;
};

// Only meaningful with ZeRO stage 3 (validation rejects it otherwise).
struct OffloadParamConfig {
  OffloadDevice device = OffloadDevice::kNone;
  std::vector<std::string> nvme_paths;
  int64_t buffer_count = 5;
  int64_t buffer_size = 100'000'000;  // elements per buffer
  int64_t max_in_cpu = 1'000'000'000;
  bool pin_memory = false;
  bool operator==(const OffloadParamConfig&) const = default;
};

struct ZeroConfig {
  int stage = 0;  // 0..3
  OffloadOptimizerConfig offload_optimizer;
  OffloadParamConfig offload_param;
  bool contiguous_gradients = true;
  bool overlap_comm = false;  // DeepSpeed: true by default at stage 3 only
  bool allgather_partitions = true;
  bool reduce_scatter = true;
  int64_t reduce_bucket_size = 500'000'000;
  // false: the config did not set reduce_bucket_size, and the engine picks
  // buckets that keep the host optimizer overlapped with backward (about
  // eight per model) instead of DeepSpeed's 5e8, which makes a model below
  // 500M params one bucket (engine/training_engine.cc, plan_buckets).
  bool reduce_bucket_size_given = false;
  int64_t allgather_bucket_size = 500'000'000;
  int64_t stage3_prefetch_bucket_size = 50'000'000;
  int64_t stage3_max_live_parameters = 1'000'000'000;
  int64_t stage3_max_reuse_distance = 1'000'000'000;
  int64_t stage3_param_persistence_threshold = 100'000;
  int64_t sub_group_size = 1'000'000'000;
  bool operator==(const ZeroConfig&) const = default;
};

// Dynamic loss scaling when loss_scale == 0 (DeepSpeed's loss_scaler.py).
// Differs from DeepSpeed on purpose: DeepSpeed silently starts at 2^32 with
// hysteresis 1 when the block has none of the scaling keys; strata always
// uses the documented defaults below.
struct Fp16Config {
  bool enabled = false;
  bool auto_cast = false;
  double loss_scale = 0;         // 0: dynamic; > 0: static scale
  int initial_scale_power = 16;  // dynamic scale starts at 2^initial_scale_power
  int64_t loss_scale_window = 1000;
  int hysteresis = 2;
  bool consecutive_hysteresis = false;
  double min_loss_scale = 1;
  bool operator==(const Fp16Config&) const = default;
};

struct Bf16Config {
  bool enabled = false;  // from "bf16" or its older name "bfloat16"
  bool operator==(const Bf16Config&) const = default;
};

// aio: DeepSpeed's async I/O knobs; strata's engine is io_uring.
struct AioConfig {
  int64_t block_size = 1'048'576;  // bytes, a multiple of 4096 (O_DIRECT)
  int64_t queue_depth = 8;
  int64_t intra_op_parallelism = 1;  // older name: thread_count
  bool single_submit = false;
  bool overlap_events = true;
  bool use_gds = false;
  bool operator==(const AioConfig&) const = default;
};

enum class OptimizerType { kNone, kAdam, kAdamW, kAdagrad, kLion };

struct OptimizerConfig {
  OptimizerType type = OptimizerType::kNone;  // kNone: no "optimizer" section
  // "Adam" runs as AdamW unless params.adam_w_mode is false; "AdamW" always is.
  // type is then kAdamW or kAdam accordingly.
  double lr = 1e-3;
  std::array<double, 2> betas = {0.9, 0.999};
  double eps = 1e-8;
  double weight_decay = 0;
  bool bias_correction = true;
  bool operator==(const OptimizerConfig&) const = default;
};

enum class SchedulerType {
  kNone,
  kLRRangeTest,
  kOneCycle,
  kWarmupLR,
  kWarmupDecayLR,
  kWarmupCosineLR
};

struct SchedulerConfig {
  SchedulerType type = SchedulerType::kNone;
  nlohmann::json params = nlohmann::json::object();  // as written; the engine reads them
  bool operator==(const SchedulerConfig&) const = default;
};

enum class OverlapMode { kSync, kOverlap };

// strata's own keys, under "strata".
struct StrataConfig {
  OverlapMode overlap = OverlapMode::kOverlap;  // "sync" | "overlap"
  std::vector<std::string> nvme_paths;  // default NVMe dirs when an offload has no nvme_path
  std::string trace_file;               // Chrome trace JSON; empty: off
  std::string log_level;                // as STRATA_LOG ("info,swap=debug"); empty: unchanged
  bool delayed_param_update = false;    // one-step delayed parameter update
  int64_t prefetch_window_bytes = 1LL << 30;
  // overlap mode: host bytes for copies of the optimizer states of layers
  // stepped before the backward has finished, so an overflow or a clip can
  // restore them exactly; layers beyond it are stepped after the backward.
  int64_t rollback_buffer_bytes = 1LL << 30;
  bool operator==(const StrataConfig&) const = default;
};

struct DsConfig {
  // Resolved with DeepSpeed's rule: train = micro * accumulation * world size.
  int64_t train_batch_size = 0;
  int64_t train_micro_batch_size_per_gpu = 0;
  int64_t gradient_accumulation_steps = 0;
  int world_size = 1;
  Fp16Config fp16;
  Bf16Config bf16;
  ZeroConfig zero;
  AioConfig aio;
  OptimizerConfig optimizer;
  SchedulerConfig scheduler;
  double gradient_clipping = 0;  // 0: off
  // "fp16" | "bf16" | "fp32"; empty: unset. Across ranks, the dtype the
  // rank's slice of the gradients' fp32 sum crosses PCIe in where the
  // reduction runs on the device (engine/offload_optimizer.h, "Data
  // parallel"): a 16-bit one rounds the sum once, as DeepSpeed's
  // reduction in that dtype does, and moves half the bytes. Unset or
  // "fp32": fp32, exact (strata's default; DeepSpeed's is the gradients'
  // dtype).
  std::string communication_data_type;
  int64_t steps_per_print = 10;
  bool wall_clock_breakdown = false;
  StrataConfig strata;
  bool operator==(const DsConfig&) const = default;
};

struct BatchSizes {
  int64_t train_batch_size = 0;
  int64_t micro_batch_per_gpu = 0;
  int64_t gradient_accumulation_steps = 0;
};

// DeepSpeed's batch rule: any two of the three imply the third by integer
// division; only one of train/micro given sets accumulation to 1; neither
// train nor micro given is an error; then each must be > 0 and train must
// equal micro * accumulation * world_size (the error names all values).
// Messages name the keys but no source; callers prefix it.
absl::StatusOr<BatchSizes> resolve_batch_sizes(std::optional<int64_t> train_batch_size,
                                               std::optional<int64_t> micro_batch_per_gpu,
                                               std::optional<int64_t> gradient_accumulation_steps,
                                               int world_size);

// Parses and validates ds_config text. `source_name` (a file name) starts
// every message. Warnings (unknown, ignored or deprecated keys) are appended
// to *warnings when it is non-null. world_size >= 1 is the data-parallel size.
absl::StatusOr<DsConfig> parse_ds_config(std::string_view json_text, std::string_view source_name,
                                         std::vector<std::string>* warnings, int world_size = 1);

// Reads `path` and parses it as above. A missing file, a directory or an
// empty file is an error naming the path.
absl::StatusOr<DsConfig> load_ds_config(const std::string& path, std::vector<std::string>* warnings,
                                        int world_size = 1);

// The resolved configuration as ds_config JSON (every key, defaults filled
// in, canonical key names); parse_ds_config of its dump gives `cfg` back.
nlohmann::json to_json(const DsConfig& cfg);

// Names as written in ds_config / printed by to_json.
std::string_view to_string(OffloadDevice d);
std::string_view to_string(OptimizerType t);
std::string_view to_string(SchedulerType t);
std::string_view to_string(OverlapMode m);

}  // namespace strata::config
