// Rules across keys, as DeepSpeed's runtime/config.py and runtime/zero apply
// them, plus the defaults that depend on other keys.
#include "absl/strings/str_cat.h"
#include "core/config/ds_config.h"
#include "core/config/ds_config_internal.h"
#include "core/status.h"

namespace strata::config {

absl::StatusOr<BatchSizes> resolve_batch_sizes(std::optional<int64_t> train,
                                               std::optional<int64_t> micro,
                                               std::optional<int64_t> accumulation,
                                               int world_size) {
  if (world_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat("world size must be >= 1, got ", world_size));
  }
  for (auto [value, key] :
       {std::pair{train, "train_batch_size"}, std::pair{micro, "train_micro_batch_size_per_gpu"},
        std::pair{accumulation, "gradient_accumulation_steps"}}) {
    if (value && *value <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(key, ": must be > 0, got ", *value));
    }
  }
  const int64_t world = world_size;
  // micro x accumulation x world, or nullopt when it does not fit in 64 bits.
  auto product = [world](int64_t micro_batch, int64_t acc) -> std::optional<int64_t> {
    int64_t p = 0;
    if (__builtin_mul_overflow(micro_batch, acc, &p) || __builtin_mul_overflow(p, world, &p)) {
      return std::nullopt;
    }
    return p;
  };
  const absl::Status too_large = absl::InvalidArgumentError(
      absl::StrCat("batch sizes too large: train_micro_batch_size_per_gpu x "
                   "gradient_accumulation_steps x world size (",
                   micro.value_or(0), " x ", accumulation.value_or(1), " x ", world_size,
                   ") does not fit in 64 bits"));
  BatchSizes b;
  // Any two imply the third by integer division (a remainder is caught below).
  if (train && micro && accumulation) {
    b = {*train, *micro, *accumulation};
  } else if (train && micro) {
    b = {*train, *micro, *train / *micro / world};
  } else if (train && accumulation) {
    b = {*train, *train / world / *accumulation, *accumulation};
  } else if (micro && accumulation) {
    std::optional<int64_t> t = product(*micro, *accumulation);
    if (!t) return too_large;
    b = {*t, *micro, *accumulation};
  } else if (train) {
    b = {*train, *train / world, 1};
  } else if (micro) {
    std::optional<int64_t> t = product(*micro, 1);
    if (!t) return too_large;
    b = {*t, *micro, 1};
  } else {
    return absl::InvalidArgumentError(
        "train_batch_size and train_micro_batch_size_per_gpu are both missing; give at least "
        "one of them");
  }
  const std::string values =
      absl::StrCat("train_batch_size ", b.train_batch_size, ", train_micro_batch_size_per_gpu ",
                   b.micro_batch_per_gpu, ", gradient_accumulation_steps ",
                   b.gradient_accumulation_steps, ", world size ", world_size);
  if (b.micro_batch_per_gpu <= 0 || b.gradient_accumulation_steps <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "batch sizes do not fit: ", values,
        " (a derived value is 0; train_batch_size must be at least micro batch x accumulation x "
        "world size)"));
  }
  const std::optional<int64_t> want = product(b.micro_batch_per_gpu, b.gradient_accumulation_steps);
  if (!want) return too_large;
  if (b.train_batch_size != *want) {
    return absl::InvalidArgumentError(
        absl::StrCat("batch sizes do not match: ", values,
                     "; train_batch_size must equal train_micro_batch_size_per_gpu x "
                     "gradient_accumulation_steps x world size (",
                     *want, ")"));
  }
  return b;
}

namespace internal {
namespace {

absl::Status check_nvme_paths(std::string_view key, OffloadDevice device,
                              const StrataConfig& strata, Diagnostics* diag,
                              std::vector<std::string>* paths) {
  if (device != OffloadDevice::kNvme || !paths->empty()) return absl::OkStatus();
  if (!strata.nvme_paths.empty()) {
    *paths = strata.nvme_paths;
    return absl::OkStatus();
  }
  return diag->error(absl::StrCat(std::string(key), ".nvme_path"),
                     "missing: device is \"nvme\"; set nvme_path to a directory on an NVMe drive "
                     "(or list several under strata.nvme_paths)");
}

}  // namespace

absl::Status validate_ds_config(const ParseFacts& facts, int world_size, Diagnostics* diag,
                                DsConfig* cfg) {
  auto batch = resolve_batch_sizes(facts.train_batch_size, facts.micro_batch_per_gpu,
                                   facts.gradient_accumulation_steps, world_size);
  if (!batch.ok()) return diag->error("", std::string(batch.status().message()));
  cfg->train_batch_size = batch->train_batch_size;
  cfg->train_micro_batch_size_per_gpu = batch->micro_batch_per_gpu;
  cfg->gradient_accumulation_steps = batch->gradient_accumulation_steps;
  cfg->world_size = world_size;

  if (cfg->fp16.enabled && cfg->bf16.enabled) {
    return diag->error(absl::StrCat(facts.bf16_key, ".enabled"),
                       "fp16.enabled and bf16 are both true; enable one precision only");
  }

  ZeroConfig& z = cfg->zero;
  if (!facts.overlap_comm_given) z.overlap_comm = z.stage == 3;  // DeepSpeed's default
  if (z.offload_param.device != OffloadDevice::kNone && z.stage != 3) {
    return diag->error("zero_optimization.offload_param",
                       absl::StrCat("parameter offload needs ZeRO stage 3, but "
                                    "zero_optimization.stage is ",
                                    z.stage, "; set stage 3 or remove offload_param"));
  }
  if (z.offload_optimizer.device != OffloadDevice::kNone && z.stage == 0) {
    return diag->error("zero_optimization.offload_optimizer",
                       "optimizer offload needs ZeRO stage 1, 2 or 3, but zero_optimization.stage "
                       "is 0; set a stage or remove offload_optimizer");
  }
  STRATA_RETURN_IF_ERROR(check_nvme_paths("zero_optimization.offload_optimizer",
                                          z.offload_optimizer.device, cfg->strata, diag,
                                          &z.offload_optimizer.nvme_paths));
  STRATA_RETURN_IF_ERROR(check_nvme_paths("zero_optimization.offload_param", z.offload_param.device,
                                          cfg->strata, diag, &z.offload_param.nvme_paths));
  return absl::OkStatus();
}

}  // namespace internal
}  // namespace strata::config
