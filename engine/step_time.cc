#include "engine/step_time.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/memory_bandwidth.h"
#include "core/status.h"
#include "engine/placement.h"

namespace strata::engine {

double StepTimes::slowest() const { return std::max({compute, h2d, d2h, cpu, nvme}); }

double StepTimes::sync_step() const { return compute + d2h + cpu + nvme; }

nlohmann::json StepTimes::to_json() const {
  return {{"gpu_compute", compute},
          {"pcie_h2d", h2d},
          {"pcie_d2h", d2h},
          {"cpu_optimizer", cpu},
          {"nvme", nvme},
          {"slowest", slowest()},
          {"sync_step", sync_step()},
          {"cpu_gb_per_s", cpu_gbps},
          {"cpu_rate_source", cpu_source}};
}

absl::StatusOr<StepTimes> predict_step_time(const PlanModel& model, const config::DsConfig& config,
                                            const StepRates& rates, int64_t seq_len,
                                            std::string cpu_source) {
  if (seq_len > model.seq_len) {
    return absl::InvalidArgumentError(absl::StrCat("sequence length ", seq_len, " exceeds ",
                                                   model.name, "'s ", model.seq_len, " positions"));
  }
  STRATA_ASSIGN_OR_RETURN(const Placement pl, plan_placement(config, model.layers));
  StepTimes t;
  const double n = static_cast<double>(model.param_count());
  const double cb = static_cast<double>(dtype_size(pl.dtype));
  const double gas = static_cast<double>(std::max<int64_t>(1, config.gradient_accumulation_steps));
  const double seq = static_cast<double>(seq_len > 0 ? seq_len : model.seq_len);
  const double tokens = static_cast<double>(config.train_micro_batch_size_per_gpu) * gas * seq;
  const double attention = 12.0 * static_cast<double>(model.n_layer * model.n_embd) * seq;
  t.compute = tokens * (6 * n + attention) / (rates.gpu_tflops * 1e12);
  t.cpu_source = "no optimizer offload";
  if (pl.offload) {
    const double link = rates.pcie_gbps * 1e9;
    const bool streams_params = pl.device_working_set < pl.device_all_layers;
    t.h2d = (streams_params ? 2 * gas : 1) * n * cb / link;
    t.d2h = gas * n * cb / link;
    t.cpu_gbps = rates.cpu_gbps;
    t.cpu_source = std::move(cpu_source);
    if (t.cpu_gbps <= 0) {
      STRATA_ASSIGN_OR_RETURN(BandwidthResult bw,
                              measure_adam_stream({.elements = size_t{16} << 20, .repeats = 3}),
                              "measuring the CPU optimizer's memory stream");
      t.cpu_gbps = bw.gb_per_s;
      t.cpu_source = "measured now (Adam-like stream)";
    }
    t.cpu = n * (28 + gas * (cb + 8)) / (t.cpu_gbps * 1e9);
  }
  const RoleBytes& on_nvme = pl.nvme_roles;
  const double states = static_cast<double>(on_nvme.master + on_nvme.exp_avg + on_nvme.exp_avg_sq);
  const double params = static_cast<double>(on_nvme.param);
  t.nvme = (2 * states + (2 * gas + 1) * params) / (rates.nvme_gbps * 1e9);
  return t;
}

}  // namespace strata::engine
