// DsConfig -> ds_config JSON with every key spelled out (canonical names), so
// that what `strata config check` prints parses back to the same DsConfig.
#include "core/config/ds_config.h"

namespace strata::config {

using nlohmann::json;

std::string_view to_string(OffloadDevice d) {
  switch (d) {
    case OffloadDevice::kNone:
      return "none";
    case OffloadDevice::kCpu:
      return "cpu";
    case OffloadDevice::kNvme:
      return "nvme";
  }
  return "none";
}

std::string_view to_string(OptimizerType t) {
  switch (t) {
    case OptimizerType::kNone:
      return "none";
    case OptimizerType::kAdam:
      return "Adam";
    case OptimizerType::kAdamW:
      return "AdamW";
    case OptimizerType::kAdagrad:
      return "Adagrad";
    case OptimizerType::kLion:
      return "Lion";
  }
  return "none";
}

std::string_view to_string(SchedulerType t) {
  switch (t) {
    case SchedulerType::kNone:
      return "none";
    case SchedulerType::kLRRangeTest:
      return "LRRangeTest";
    case SchedulerType::kOneCycle:
      return "OneCycle";
    case SchedulerType::kWarmupLR:
      return "WarmupLR";
    case SchedulerType::kWarmupDecayLR:
      return "WarmupDecayLR";
    case SchedulerType::kWarmupCosineLR:
      return "WarmupCosineLR";
  }
  return "none";
}

std::string_view to_string(OverlapMode m) { return m == OverlapMode::kSync ? "sync" : "overlap"; }

namespace {

json str(std::string_view s) { return json(std::string(s)); }

// An absent nvme_path prints as null (which parses back as "not given").
json paths(const std::vector<std::string>& p) { return p.empty() ? json(nullptr) : json(p); }

json optimizer_json(const OptimizerConfig& o) {
  json params = {{"lr", o.lr}, {"weight_decay", o.weight_decay}};
  switch (o.type) {
    case OptimizerType::kAdam:
    case OptimizerType::kAdamW:
      params["betas"] = o.betas;
      params["eps"] = o.eps;
      params["bias_correction"] = o.bias_correction;
      params["adam_w_mode"] = o.type == OptimizerType::kAdamW;
      break;
    case OptimizerType::kAdagrad:
      params["eps"] = o.eps;
      break;
    case OptimizerType::kLion:
      params["betas"] = o.betas;
      break;
    case OptimizerType::kNone:
      return nullptr;
  }
  return {{"type", str(to_string(o.type))}, {"params", params}};
}

}  // namespace

json to_json(const DsConfig& c) {
  json j;
  j["train_batch_size"] = c.train_batch_size;
  j["train_micro_batch_size_per_gpu"] = c.train_micro_batch_size_per_gpu;
  j["gradient_accumulation_steps"] = c.gradient_accumulation_steps;
  j["fp16"] = {{"enabled", c.fp16.enabled},
               {"auto_cast", c.fp16.auto_cast},
               {"loss_scale", c.fp16.loss_scale},
               {"initial_scale_power", c.fp16.initial_scale_power},
               {"loss_scale_window", c.fp16.loss_scale_window},
               {"hysteresis", c.fp16.hysteresis},
               {"consecutive_hysteresis", c.fp16.consecutive_hysteresis},
               {"min_loss_scale", c.fp16.min_loss_scale}};
  j["bf16"] = {{"enabled", c.bf16.enabled}};
  const ZeroConfig& z = c.zero;
  const OffloadOptimizerConfig& oo = z.offload_optimizer;
  const OffloadParamConfig& op = z.offload_param;
  j["zero_optimization"] = {
      {"stage", z.stage},
      {"offload_optimizer",
       {{"device", str(to_string(oo.device))},
        {"nvme_path", paths(oo.nvme_paths)},
        {"buffer_count", oo.buffer_count},
        {"pin_memory", oo.pin_memory},
        {"fast_init", oo.fast_init},
        {"ratio", oo.ratio}}},
      {"offload_param",
       {{"device", str(to_string(op.device))},
        {"nvme_path", paths(op.nvme_paths)},
        {"buffer_count", op.buffer_count},
        {"buffer_size", op.buffer_size},
        {"max_in_cpu", op.max_in_cpu},
        {"pin_memory", op.pin_memory}}},
      {"contiguous_gradients", z.contiguous_gradients},
      {"overlap_comm", z.overlap_comm},
      {"allgather_partitions", z.allgather_partitions},
      {"reduce_scatter", z.reduce_scatter},
      {"allgather_bucket_size", z.allgather_bucket_size},
      {"stage3_prefetch_bucket_size", z.stage3_prefetch_bucket_size},
      {"stage3_max_live_parameters", z.stage3_max_live_parameters},
      {"stage3_max_reuse_distance", z.stage3_max_reuse_distance},
      {"stage3_param_persistence_threshold", z.stage3_param_persistence_threshold},
      {"sub_group_size", z.sub_group_size}};
  // Unset, strata picks the gradient buckets itself (ds_config.h).
  if (z.reduce_bucket_size_given)
    j["zero_optimization"]["reduce_bucket_size"] = z.reduce_bucket_size;
  // Written only when the user set them: unset keeps strata's NVMe pipeline on.
  for (auto [key, value] : {std::pair{"pipeline_read", oo.pipeline_read},
                            std::pair{"pipeline_write", oo.pipeline_write}}) {
    if (value.has_value()) j["zero_optimization"]["offload_optimizer"][key] = *value;
  }
  j["aio"] = {{"block_size", c.aio.block_size},
              {"queue_depth", c.aio.queue_depth},
              {"intra_op_parallelism", c.aio.intra_op_parallelism},
              {"single_submit", c.aio.single_submit},
              {"overlap_events", c.aio.overlap_events},
              {"use_gds", c.aio.use_gds}};
  j["optimizer"] = optimizer_json(c.optimizer);
  j["scheduler"] =
      c.scheduler.type == SchedulerType::kNone
          ? json(nullptr)
          : json{{"type", str(to_string(c.scheduler.type))}, {"params", c.scheduler.params}};
  j["gradient_clipping"] = c.gradient_clipping;
  j["communication_data_type"] =
      c.communication_data_type.empty() ? json(nullptr) : json(c.communication_data_type);
  j["steps_per_print"] = c.steps_per_print;
  j["wall_clock_breakdown"] = c.wall_clock_breakdown;
  j["strata"] = {{"overlap", str(to_string(c.strata.overlap))},
                 {"nvme_paths", paths(c.strata.nvme_paths)},
                 {"trace_file", c.strata.trace_file},
                 {"log_level", c.strata.log_level},
                 {"delayed_param_update", c.strata.delayed_param_update},
                 {"prefetch_window_bytes", c.strata.prefetch_window_bytes},
                 {"rollback_buffer_bytes", c.strata.rollback_buffer_bytes}};
  return j;
}

}  // namespace strata::config
