// StepTimes: how long one optimizer step takes on each resource (GPU
// compute, PCIe each way, the CPU optimizer's memory stream, NVMe), from the
// bytes and flops the engine's placement (engine::plan_placement) implies and
// the rates given. `strata plan` prints it; with everything overlapped a step
// takes about the slowest of them, in sync order about their sum.
//
//   compute   tokens * (6N + 12 * n_layer * n_embd * s) flops, tokens =
//             micro batch * accumulation * s
//   PCIe      with optimizer offload: grads down once a micro-batch; params
//             up once a step, or for each micro-batch's forward and again for
//             its backward when the device cannot hold every layer (stage 3
//             with stage3_max_live_parameters below the model)
//   CPU       N * (28 + accumulation * (compute bytes + 8)) bytes: the step's
//             28 B/param and the fp32 accumulation of each micro-batch
//   NVMe      the NVMe-homed states read and written once a step; NVMe-homed
//             params read twice a micro-batch and written once a step
//
// Thread-safe. Errors: what plan_placement refuses; measuring the CPU rate
// (StepRates::cpu_gbps 0) can fail like measure_adam_stream.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "core/config/ds_config.h"
#include "engine/plan.h"
#include "nlohmann/json.hpp"

namespace strata::engine {

struct StepRates {
  double gpu_tflops = 200;  // achieved, dense fp16/bf16
  double pcie_gbps = 25;    // each direction
  double nvme_gbps = 3;
  double cpu_gbps = 0;  // the optimizer's memory stream; 0: measured now
};

struct StepTimes {
  double compute = 0, h2d = 0, d2h = 0, cpu = 0, nvme = 0;  // seconds
  double cpu_gbps = 0;                                      // the rate the CPU time assumes
  std::string cpu_source;  // "--cpu-gbps", "measured now (Adam-like stream)", ...
  double slowest() const;
  double sync_step() const;  // compute, D2H, CPU and NVMe one after another
  nlohmann::json to_json() const;
};

// seq_len 0: the model's. `cpu_source` names where a nonzero cpu_gbps came from.
absl::StatusOr<StepTimes> predict_step_time(const PlanModel& model, const config::DsConfig& config,
                                            const StepRates& rates, int64_t seq_len = 0,
                                            std::string cpu_source = "--cpu-gbps");

}  // namespace strata::engine
