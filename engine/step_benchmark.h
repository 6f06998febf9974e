// A training step of a GPT-2-shaped model on SimDevice in timed mode, run
// through the TrainingEngine in `sync` mode, `overlap` mode and overlap with
// the delayed parameter update ("delayed"), to measure how close each comes
// to its slowest single resource (`strata bench step`).
//
// The device is modelled: forward and backward of each layer occupy the
// SimDevice compute engine for flops / (tflops * 1e12) seconds (a block:
// 2 * tokens * params + 2 * B * T^2 * C for causal attention; the tied head
// 2 * tokens * V * C; backward twice forward), and copies take their time
// over the modelled PCIe link without moving bytes. Everything on the host is
// real: fp32 gradient accumulation, the CPU optimizer over the full
// parameter count, the host arena and, with offload to NVMe, the swap I/O.
// Widths can be divided (width_divisor) so a GPT-2-XL layer list fits this
// machine's memory: every layer keeps its place and its relative size.
//
// Per step and mode it reports the wall time and the busy time of each
// single resource: device compute (modelled; the SimDevice spends it), H2D
// and D2H (bytes the step moved / link rate, the time SimDevice's copies
// take), the host's gradient and optimizer work (the engine's timers less
// the time the host tier's acquires waited for transfers: PCIe and NVMe
// waits are not CPU work), NVMe reads, writes and the drive as a whole (the
// time at least one request was in flight, offload/busy_io_engine.h); the
// slowest of them and step / slowest, which is at least 1 up to timer noise.
// Also the optimizer's effective rate (params x 28 B / optimizer seconds)
// and, once per run, the Adam-like memory stream (core/memory_bandwidth.h)
// it is compared with. The SimDevice charges
// its default costs (gpu/sim_device.h: host sync round trips, device syncs,
// pageable copies, launch overhead), and each step reports how many host
// and device-wide synchronisations and device allocations it made.
//
// world_size N > 1: N data-parallel ranks as threads of this process, each
// with its own SimDevice (its own modelled PCIe link, as each GPU has its
// own), model, engine and Gloo communicator over loopback (ZeRO across
// ranks, engine/offload_optimizer.h), each rank at micro_batch (the global
// batch N times larger). The ranks share this machine's cores (each rank's
// CPU optimizer gets cpu_threads / N, or cores / N). Reported per step:
// rank 0's times and, of every rank, the bytes it moved over its link
// (h2d_bytes, d2h_bytes), the host tier's peak bytes (host_bytes: its fp32
// slices, and at stage 3 its compute param slice; the compute grads and
// stage 1/2 params stay on the device, engine/placement.h
// PlacementOptions) and the bytes its optimizer pass moved
// (optimizer_bytes); `ranks` holds each rank's. The delayed update does not run across ranks (the
// engine refuses it), so only sync and overlap are measured. Each rank's SimDevice moves no data
// but its memory is host memory, so Gloo reduces the gradients and gathers the params on it as it
// would on a GPU with NCCL: the bytes each rank moves over its link are its slice's
// (engine/offload_optimizer.h, "Data parallel"). The config sets communication_data_type to the
// precision, DeepSpeed's default, so that slice of the reduced gradients
// crosses in 16 bits as one rank's gradients do.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace strata::engine {

struct StepBenchmarkOptions {
  // The layer list: embeddings, n_layer blocks, final LayerNorm + tied head.
  int64_t n_layer = 48;
  int64_t n_embd = 1600;
  int64_t vocab_size = 50257;
  int64_t positions = 1024;
  int64_t width_divisor = 4;  // n_embd / width_divisor is the width used
  int64_t micro_batch = 8;    // B
  int64_t seq_len = 1024;     // T
  int64_t gradient_accumulation_steps = 1;
  double tflops = 150;          // modelled device throughput
  double link_gb_per_s = 50;    // modelled PCIe, each direction
  std::string offload = "cpu";  // offload_optimizer.device: cpu or nvme
  // fp16 (dynamic loss scaling: overlap keeps rollback copies) or bf16 (none
  // needed without clipping).
  std::string precision = "fp16";
  std::string nvme_dir = "/tmp";
  int steps = 4;        // per mode; the first records the store's trace
  int cpu_threads = 0;  // CPU optimizer threads; 0: all cores
  // SimDevice's cost model (gpu/sim_device.h); off shows what the schedule
  // would take if synchronising calls were free.
  bool device_costs = true;
  // strata.prefetch_window_bytes; 0: the config's default. Small windows
  // keep NVMe-homed states moving on small shapes (tests).
  int64_t prefetch_window_bytes = 0;
  // zero_optimization.reduce_bucket_size (elements per gradient bucket);
  // 0: not set, so the engine picks about eight buckets per model (DeepSpeed's
  // 5e8 would hold this whole model, and overlap mode would then hand the
  // gradients over only after the backward).
  int64_t reduce_bucket_size = 0;
  int world_size = 1;  // data-parallel ranks (threads), see above
  // zero_optimization.stage, 1 to 3 (stage 0 cannot offload the optimizer).
  int zero_stage = 2;
};

// One rank's bytes in one step.
struct StepBenchmarkRankBytes {
  double h2d_bytes = 0;        // over its modelled PCIe link, host to device
  double d2h_bytes = 0;        // device to host
  double host_bytes = 0;       // its host tier's peak (the host arena in use)
  double host_plan_bytes = 0;  // what its placement plans for that tier (below)
  double optimizer_bytes = 0;  // its optimizer passes (StepStats::optimizer_bytes)
};

struct StepBenchmarkStep {
  double step_seconds = 0;
  double compute_seconds = 0;
  double h2d_seconds = 0;
  double d2h_seconds = 0;
  double host_seconds = 0;        // gradient accumulation + optimizer, measured
  double nvme_read_seconds = 0;   // busy: at least one read in flight
  double nvme_write_seconds = 0;  // busy: at least one write in flight
  double nvme_seconds = 0;        // busy: either (one drive serves both)
  double nvme_read_bytes = 0;
  double nvme_write_bytes = 0;
  double optimizer_seconds = 0;  // StepStats::optimizer_seconds
  double optimizer_bytes = 0;    // StepStats::optimizer_bytes: what its passes moved
  double h2d_bytes = 0;          // StepStats::bytes_in of the device tier
  double d2h_bytes = 0;          // StepStats::bytes_out of the device tier
  double host_bytes = 0;         // the host tier's peak bytes after the step
  // The host tier the engine's placement plans (Placement::host_homed +
  // host_cache, what `strata plan` prints as the host tier): host_bytes is
  // at most this; exactly this across ranks with the optimizer on cpu (one
  // rank at gas 1 never allocates its fp32 accumulator, which it counts).
  double host_plan_bytes = 0;
  // With world_size > 1: every rank's bytes (rank 0's are the fields above).
  std::vector<StepBenchmarkRankBytes> ranks;
  // optimizer_bytes / optimizer_seconds.
  double optimizer_gb_per_s = 0;
  std::string slowest;
  double slowest_seconds = 0;
  double ratio = 0;  // step / slowest
  int speculative_layers = 0;
  int rolled_back_layers = 0;
  // Device::sync_counters() over the step (a mean when steps are averaged).
  double host_syncs = 0;
  double device_syncs = 0;
  double device_allocations = 0;
  // Sets slowest, slowest_seconds and ratio from the resource times (NVMe:
  // nvme_seconds, the drive busy with either direction).
  void rate_against_slowest();
};

struct StepBenchmarkMode {
  std::string mode;  // "sync", "overlap" or "delayed"
  std::vector<StepBenchmarkStep> steps;
};

struct StepBenchmarkResult {
  StepBenchmarkOptions options;
  int64_t params = 0;  // of the (divided) model
  int64_t width = 0;
  double nvme_read_gb_per_s = 0;  // probe, NVMe offload only
  double nvme_write_gb_per_s = 0;
  double stream_gb_per_s = 0;  // the Adam-like stream (28 B/element), this run
  std::vector<StepBenchmarkMode> modes;
};

// InvalidArgument for inconsistent options; errors of the engine otherwise.
absl::StatusOr<StepBenchmarkResult> run_step_benchmark(const StepBenchmarkOptions& options);

}  // namespace strata::engine
