// A synthetic training step over the TieredStore, on SimDevice, to measure
// how well the store overlaps its moves with compute.
//
// The model: `layers` layers of fp16 parameters (`layer_param_bytes` each)
// homed on the host, fp16 gradients homed on the host, and fp32 master
// weights and Adam moments (6x the parameter bytes per layer) homed on NVMe.
// A compute thread runs forward (acquire params on the device, modelled
// compute) and backward (params again, gradients written on the device),
// handing each finished layer to an optimizer thread, which acquires the
// gradient and the states on the host (NVMe reads), spends the modelled
// optimizer time and writes the new fp16 parameters (H2D next step) and the
// states (NVMe writes on eviction). Device copies move no bytes
// (SimDevice move_data = false) so the CPU stays free; NVMe I/O is real.
//
// Reported per step: wall time, and the busy time of each single resource
// (compute and the optimizer as modelled, H2D and D2H at the modelled link,
// which SimDevice's copies take; NVMe reads, writes and the drive as a whole
// as the time at least one request was in flight, offload/busy_io_engine.h),
// the slowest of them and the ratio step / slowest (at least 1: no resource
// is busier than the step is long). The sequential probe's rates are
// reported beside them.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace strata::offload {

struct StoreBenchmarkOptions {
  int layers = 24;
  uint64_t layer_param_bytes = uint64_t{16} << 20;
  double forward_ms_per_layer = 4.0;
  double backward_ms_per_layer = 8.0;
  double optimizer_ms_per_layer = 0.0;
  double link_gb_per_s = 50.0;         // modelled PCIe, each direction
  int device_layers = 4;               // device budget, in layers of params + grads
  int host_state_layers = 4;           // host budget for NVMe-homed states, in layers
  uint64_t prefetch_window_bytes = 0;  // 0: two layers of states
  int steps = 3;
  std::string nvme_dir = "/tmp";
  uint64_t nvme_probe_bytes = uint64_t{256} << 20;
};

struct StoreStepResult {
  double step_seconds = 0;
  double compute_seconds = 0;
  double h2d_seconds = 0;
  double d2h_seconds = 0;
  double nvme_read_seconds = 0;
  double nvme_write_seconds = 0;
  double nvme_seconds = 0;  // reads or writes in flight: the drive's busy time
  uint64_t nvme_read_bytes = 0, nvme_write_bytes = 0;
  double optimizer_seconds = 0;
  std::string slowest;  // name of the slowest resource
  double slowest_seconds = 0;
  double ratio = 0;  // step / slowest
  double device_stall_seconds = 0;
  double host_stall_seconds = 0;
  uint64_t device_hits = 0, device_misses = 0, host_hits = 0, host_misses = 0;
};

struct StoreBenchmarkResult {
  StoreBenchmarkOptions options;
  double nvme_read_gb_per_s = 0;   // probe
  double nvme_write_gb_per_s = 0;  // probe
  std::string io_engine;
  std::vector<StoreStepResult> steps;
};

absl::StatusOr<StoreBenchmarkResult> run_store_benchmark(const StoreBenchmarkOptions& options);

}  // namespace strata::offload
