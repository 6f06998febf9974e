// ds_config JSON -> DsConfig, one section at a time. Types and ranges are
// checked here; rules across keys live in ds_config_validate.cc.
#include <limits>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "core/config/ds_config.h"
#include "core/config/ds_config_internal.h"
#include "core/config/json_reader.h"
#include "core/file_util.h"
#include "core/status.h"

namespace strata::config {
namespace {

constexpr int64_t kI64Max = std::numeric_limits<int64_t>::max();
constexpr double kInf = std::numeric_limits<double>::infinity();

constexpr std::string_view kNotUsedMultiGpu =
    "a data-parallel tuning strata does not implement (it averages fp32 sums after the "
    "reduction; communication_data_type picks the wire type)";
constexpr std::string_view kNotUsed = "a DeepSpeed feature strata does not implement";

// Sizes a config may ask for. Beyond these no machine has the memory, and a
// value past them (a micro batch of 2^40) would reach an allocation as
// bad_alloc instead of an error naming the key.
constexpr int64_t kMaxMicroBatch = 65536;  // sequences per micro-batch
constexpr int64_t kMaxAccumulation = int64_t{1} << 31;
constexpr int64_t kMaxHostBytes = int64_t{1} << 50;  // 1 PiB: strata's own byte keys

// A DeepSpeed key that strata reads (so a wrong type is still an error and
// the resolved config shows it) but does not act on. When the user sets it
// to anything other than DeepSpeed's default, the warning says what strata
// does in its place.
template <typename T>
void warn_not_honoured(ObjectReader& r, std::string_view key, const T& value,
                       const T& deepspeed_default, std::string_view instead, Diagnostics* diag) {
  if (value == deepspeed_default) return;
  diag->warn(r.key_path(key),
             absl::StrCat("set, but strata does not use it: ", std::string(instead)));
}

constexpr std::string_view kPrefetchInstead =
    "the store prefetches ahead of use by a byte window, strata.prefetch_window_bytes "
    "(default 1 GiB), with aio.queue_depth NVMe requests in flight, instead of a fixed set of "
    "buffers";
constexpr std::string_view kEvictionInstead =
    "the store records the order of the first step's accesses and evicts the tensor whose next "
    "use is furthest away (exact, as steps repeat), within the tier budgets from the placement "
    "plan (strata plan shows them)";

OffloadDevice device_from(const std::string& s) {
  if (s == "cpu") return OffloadDevice::kCpu;
  if (s == "nvme") return OffloadDevice::kNvme;
  return OffloadDevice::kNone;
}

// DeepSpeed accepts both the stage3_-prefixed name and the short alias.
absl::Status read_int_alias(ObjectReader& r, std::string_view name, std::string_view alias,
                            int64_t* out, Diagnostics* diag) {
  if (r.has(name) && r.has(alias)) {
    return diag->error(r.key_path(alias), absl::StrCat("same setting as \"", std::string(name),
                                                       "\", which is also given; keep one"));
  }
  STRATA_RETURN_IF_ERROR(r.read_int(name, out, 0, kI64Max));
  return r.read_int(alias, out, 0, kI64Max);
}

absl::Status parse_offload_optimizer(ObjectReader& r, Diagnostics* diag,
                                     OffloadOptimizerConfig* o) {
  std::string device(to_string(o->device));
  STRATA_RETURN_IF_ERROR(r.read_enum("device", &device, {"none", "cpu", "nvme"}));
  o->device = device_from(device);
  STRATA_RETURN_IF_ERROR(r.read_string_list("nvme_path", &o->nvme_paths));
  STRATA_RETURN_IF_ERROR(r.read_int("buffer_count", &o->buffer_count, 1, kI64Max));
  STRATA_RETURN_IF_ERROR(r.read_bool("pin_memory", &o->pin_memory));
  for (auto [key, field] : {std::pair{"pipeline_read", &o->pipeline_read},
                            std::pair{"pipeline_write", &o->pipeline_write}}) {
    if (!r.has(key)) continue;
    bool value = false;
    STRATA_RETURN_IF_ERROR(r.read_bool(key, &value));
    *field = value;
  }
  STRATA_RETURN_IF_ERROR(r.read_bool("fast_init", &o->fast_init));
  STRATA_RETURN_IF_ERROR(r.read_double("ratio", &o->ratio, 0.0, 1.0));
  r.ignore("pipeline", "derived from pipeline_read / pipeline_write");
  const OffloadOptimizerConfig ds;
  warn_not_honoured(r, "buffer_count", o->buffer_count, ds.buffer_count, kPrefetchInstead, diag);
  r.finish();
  return absl::OkStatus();
}

absl::Status parse_offload_param(ObjectReader& r, Diagnostics* diag, OffloadParamConfig* o) {
  std::string device(to_string(o->device));
  STRATA_RETURN_IF_ERROR(r.read_enum("device", &device, {"none", "cpu", "nvme"}));
  o->device = device_from(device);
  STRATA_RETURN_IF_ERROR(r.read_string_list("nvme_path", &o->nvme_paths));
  STRATA_RETURN_IF_ERROR(r.read_int("buffer_count", &o->buffer_count, 1, kI64Max));
  STRATA_RETURN_IF_ERROR(r.read_int("buffer_size", &o->buffer_size, 1, kI64Max));
  STRATA_RETURN_IF_ERROR(r.read_int("max_in_cpu", &o->max_in_cpu, 0, kI64Max));
  STRATA_RETURN_IF_ERROR(r.read_bool("pin_memory", &o->pin_memory));
  const OffloadParamConfig ds;
  warn_not_honoured(r, "buffer_count", o->buffer_count, ds.buffer_count, kPrefetchInstead, diag);
  warn_not_honoured(r, "buffer_size", o->buffer_size, ds.buffer_size, kPrefetchInstead, diag);
  warn_not_honoured(r, "max_in_cpu", o->max_in_cpu, ds.max_in_cpu, kEvictionInstead, diag);
  r.finish();
  return absl::OkStatus();
}

absl::Status parse_zero(ObjectReader& r, Diagnostics* diag, internal::ParseFacts* facts,
                        ZeroConfig* z) {
  STRATA_RETURN_IF_ERROR(r.read_int("stage", &z->stage, 0, 3));

  std::optional<bool> pin_from_deprecated;
  if (r.has("cpu_offload_use_pin_memory")) {
    bool pin = false;
    STRATA_RETURN_IF_ERROR(r.read_bool("cpu_offload_use_pin_memory", &pin));
    pin_from_deprecated = pin;
    diag->warn(r.key_path("cpu_offload_use_pin_memory"),
               "deprecated; use offload_optimizer.pin_memory and offload_param.pin_memory");
  }
  // Deprecated boolean switches that DeepSpeed maps onto the offload blocks.
  struct Deprecated {
    std::string_view old_key, new_key;
  };
  for (const Deprecated& d : {Deprecated{"cpu_offload", "offload_optimizer"},
                              Deprecated{"cpu_offload_param", "offload_param"}}) {
    if (!r.has(d.old_key)) continue;
    if (r.has(d.new_key)) {
      return diag->error(r.key_path(d.old_key),
                         absl::StrCat("deprecated, and ", r.key_path(d.new_key),
                                      " is also given; keep only ", std::string(d.new_key)));
    }
    bool on = false;
    STRATA_RETURN_IF_ERROR(r.read_bool(d.old_key, &on));
    diag->warn(r.key_path(d.old_key),
               absl::StrCat("deprecated; use \"", std::string(d.new_key),
                            "\": {\"device\": \"cpu\"} instead (mapped onto it)"));
    if (!on) continue;
    if (d.new_key == "offload_optimizer") {
      z->offload_optimizer.device = OffloadDevice::kCpu;
    } else {
      z->offload_param.device = OffloadDevice::kCpu;
    }
  }
  if (pin_from_deprecated) {
    z->offload_optimizer.pin_memory = *pin_from_deprecated;
    z->offload_param.pin_memory = *pin_from_deprecated;
  }

  STRATA_ASSIGN_OR_RETURN(auto oo, r.child("offload_optimizer"));
  if (oo) STRATA_RETURN_IF_ERROR(parse_offload_optimizer(*oo, diag, &z->offload_optimizer));
  STRATA_ASSIGN_OR_RETURN(auto op, r.child("offload_param"));
  if (op) STRATA_RETURN_IF_ERROR(parse_offload_param(*op, diag, &z->offload_param));

  STRATA_RETURN_IF_ERROR(r.read_bool("contiguous_gradients", &z->contiguous_gradients));
  facts->overlap_comm_given = r.has("overlap_comm");
  STRATA_RETURN_IF_ERROR(r.read_bool("overlap_comm", &z->overlap_comm));
  STRATA_RETURN_IF_ERROR(r.read_bool("allgather_partitions", &z->allgather_partitions));
  STRATA_RETURN_IF_ERROR(r.read_bool("reduce_scatter", &z->reduce_scatter));
  z->reduce_bucket_size_given = r.has("reduce_bucket_size");
  STRATA_RETURN_IF_ERROR(r.read_int("reduce_bucket_size", &z->reduce_bucket_size, 1, kI64Max));
  STRATA_RETURN_IF_ERROR(
      r.read_int("allgather_bucket_size", &z->allgather_bucket_size, 1, kI64Max));
  STRATA_RETURN_IF_ERROR(read_int_alias(r, "stage3_prefetch_bucket_size", "prefetch_bucket_size",
                                        &z->stage3_prefetch_bucket_size, diag));
  STRATA_RETURN_IF_ERROR(read_int_alias(r, "stage3_max_live_parameters", "max_live_parameters",
                                        &z->stage3_max_live_parameters, diag));
  STRATA_RETURN_IF_ERROR(read_int_alias(r, "stage3_max_reuse_distance", "max_reuse_distance",
                                        &z->stage3_max_reuse_distance, diag));
  STRATA_RETURN_IF_ERROR(read_int_alias(r, "stage3_param_persistence_threshold",
                                        "param_persistence_threshold",
                                        &z->stage3_param_persistence_threshold, diag));
  STRATA_RETURN_IF_ERROR(r.read_int("sub_group_size", &z->sub_group_size, 1, kI64Max));
  const ZeroConfig ds;
  // The alias, when that is what the user wrote.
  auto written = [&](std::string_view name, std::string_view alias) {
    return r.has(alias) ? alias : name;
  };
  warn_not_honoured(r, written("stage3_prefetch_bucket_size", "prefetch_bucket_size"),
                    z->stage3_prefetch_bucket_size, ds.stage3_prefetch_bucket_size,
                    "strata.prefetch_window_bytes plays this role (bytes, not elements; default "
                    "1 GiB): the store fetches what the recorded step order needs next, that far "
                    "ahead",
                    diag);
  warn_not_honoured(r, written("stage3_max_reuse_distance", "max_reuse_distance"),
                    z->stage3_max_reuse_distance, ds.stage3_max_reuse_distance, kEvictionInstead,
                    diag);
  warn_not_honoured(r, written("stage3_param_persistence_threshold", "param_persistence_threshold"),
                    z->stage3_param_persistence_threshold, ds.stage3_param_persistence_threshold,
                    "no parameter stays on the device because it is small; the device keeps "
                    "what its budget holds and evicts by furthest next use",
                    diag);
  warn_not_honoured(r, "sub_group_size", z->sub_group_size, ds.sub_group_size,
                    "the CPU optimizer steps one layer's tensors at a time (a layer is the "
                    "sub-group)",
                    diag);

  for (std::string_view key :
       {"load_from_fp32_weights", "elastic_checkpoint", "round_robin_gradients",
        "ignore_unused_parameters", "legacy_stage1", "stage3_gather_16bit_weights_on_model_save",
        "stage3_gather_fp16_weights_on_model_save", "gather_16bit_weights_on_model_save",
        "stage3_model_persistence_threshold", "model_persistence_threshold",
        "zero_hpz_partition_size", "zero_quantized_weights", "zero_quantized_nontrainable_weights",
        "zero_quantized_gradients", "mics_shard_size", "mics_hierarchical_params_gather",
        "memory_efficient_linear", "use_multi_rank_bucket_allreduce"}) {
    r.ignore(key, kNotUsed);
  }
  r.finish();
  return absl::OkStatus();
}

absl::Status parse_fp16(ObjectReader& r, Fp16Config* f) {
  STRATA_RETURN_IF_ERROR(r.read_bool("enabled", &f->enabled));
  STRATA_RETURN_IF_ERROR(r.read_bool("auto_cast", &f->auto_cast));
  STRATA_RETURN_IF_ERROR(r.read_double("loss_scale", &f->loss_scale, 0.0, kInf));
  // 2^64 is already far beyond any useful scale; more would overflow fp32 soon.
  STRATA_RETURN_IF_ERROR(r.read_int("initial_scale_power", &f->initial_scale_power, 0, 64));
  STRATA_RETURN_IF_ERROR(r.read_int("loss_scale_window", &f->loss_scale_window, 1, kI64Max));
  STRATA_RETURN_IF_ERROR(r.read_int("hysteresis", &f->hysteresis, 1, 1 << 30));
  STRATA_RETURN_IF_ERROR(r.read_bool("consecutive_hysteresis", &f->consecutive_hysteresis));
  STRATA_RETURN_IF_ERROR(r.read_double("min_loss_scale", &f->min_loss_scale,
                                       std::numeric_limits<double>::min(), kInf));
  r.ignore("fp16_master_weights_and_grads", "strata always keeps fp32 master weights");
  r.finish();
  return absl::OkStatus();
}

absl::Status parse_aio(ObjectReader& r, Diagnostics* diag, AioConfig* a) {
  // The I/O engine's limits (swap/io_options.h validate), checked where read.
  STRATA_RETURN_IF_ERROR(r.read_int("block_size", &a->block_size, 4096, int64_t{256} << 20));
  if (a->block_size % 4096 != 0) {
    return diag->error(r.key_path("block_size"),
                       absl::StrCat(a->block_size,
                                    " is not a multiple of 4096 (O_DIRECT needs 4 KiB alignment); "
                                    "use e.g. 1048576"));
  }
  STRATA_RETURN_IF_ERROR(r.read_int("queue_depth", &a->queue_depth, 1, 4096));
  if (r.has("intra_op_parallelism") && r.has("thread_count")) {
    return diag->error(r.key_path("thread_count"),
                       "older name of intra_op_parallelism, which is also given; keep one");
  }
  STRATA_RETURN_IF_ERROR(r.read_int("intra_op_parallelism", &a->intra_op_parallelism, 1, 256));
  STRATA_RETURN_IF_ERROR(r.read_int("thread_count", &a->intra_op_parallelism, 1, 256));
  STRATA_RETURN_IF_ERROR(r.read_bool("single_submit", &a->single_submit));
  STRATA_RETURN_IF_ERROR(r.read_bool("overlap_events", &a->overlap_events));
  STRATA_RETURN_IF_ERROR(r.read_bool("use_gds", &a->use_gds));
  r.finish();
  return absl::OkStatus();
}

absl::Status parse_optimizer(ObjectReader& r, Diagnostics* diag, OptimizerConfig* o) {
  if (!r.has("type"))
    return diag->error(r.key_path("type"), "missing; use Adam, AdamW, Adagrad or Lion");
  std::string type;
  STRATA_RETURN_IF_ERROR(r.read_string("type", &type));
  // DeepSpeed compares optimizer names case-insensitively.
  const std::string lower = absl::AsciiStrToLower(type);
  if (lower == "adam") {
    o->type = OptimizerType::kAdam;
  } else if (lower == "adamw") {
    o->type = OptimizerType::kAdamW;
  } else if (lower == "adagrad") {
    o->type = OptimizerType::kAdagrad;
    o->lr = 1e-2;
    o->eps = 1e-10;
  } else if (lower == "lion") {
    o->type = OptimizerType::kLion;
    o->betas = {0.9, 0.99};
  } else {
    return diag->error(r.key_path("type"),
                       absl::StrCat("\"", type,
                                    "\" is not supported by strata's CPU optimizer; use Adam, "
                                    "AdamW, Adagrad or Lion"));
  }
  STRATA_ASSIGN_OR_RETURN(auto params, r.child("params"));
  if (!params) {
    if (o->type == OptimizerType::kAdam) o->type = OptimizerType::kAdamW;
    r.finish();
    return absl::OkStatus();
  }
  ObjectReader& p = *params;
  STRATA_RETURN_IF_ERROR(p.read_double("lr", &o->lr, 0.0, kInf));
  STRATA_RETURN_IF_ERROR(p.read_double("weight_decay", &o->weight_decay, 0.0, kInf));
  if (o->type != OptimizerType::kLion) {
    STRATA_RETURN_IF_ERROR(p.read_double("eps", &o->eps, 0.0, kInf));
    // Adam divides by sqrt(v) + eps and Adagrad by sqrt(sum) + eps: with eps 0
    // a weight whose gradients are all 0 divides 0 by 0 and turns to NaN.
    if (o->eps <= 0.0) {
      return diag->error(p.key_path("eps"),
                         absl::StrCat("must be > 0, got ", o->eps,
                                      ": the update divides by sqrt(v) + eps, so 0 turns a weight "
                                      "whose gradient is 0 into NaN; use e.g. 1e-8"));
    }
  }
  if (o->type != OptimizerType::kAdagrad) {
    if (const nlohmann::json* betas = p.get("betas")) {
      if (!betas->is_array() || betas->size() != 2 || !(*betas)[0].is_number() ||
          !(*betas)[1].is_number()) {
        return diag->error(
            p.key_path("betas"),
            absl::StrCat("expected two numbers [beta1, beta2], got ", describe(*betas)));
      }
      for (int i = 0; i < 2; ++i) {
        double b = (*betas)[i].get<double>();
        if (!(b >= 0.0 && b < 1.0)) {
          return diag->error(p.key_path("betas"),
                             absl::StrCat("each beta must be in [0, 1), got ", describe(*betas)));
        }
        o->betas[i] = b;
      }
    }
  }
  if (o->type == OptimizerType::kAdam || o->type == OptimizerType::kAdamW) {
    STRATA_RETURN_IF_ERROR(p.read_bool("bias_correction", &o->bias_correction));
    bool adam_w_mode = true;
    STRATA_RETURN_IF_ERROR(p.read_bool("adam_w_mode", &adam_w_mode));
    if (o->type == OptimizerType::kAdamW && !adam_w_mode) {
      diag->warn(p.key_path("adam_w_mode"), "ignored: type AdamW always decouples weight decay");
    }
    // DeepSpeed: "Adam" is AdamW unless adam_w_mode is false.
    if (o->type == OptimizerType::kAdam && adam_w_mode) o->type = OptimizerType::kAdamW;
    bool amsgrad = false;
    STRATA_RETURN_IF_ERROR(p.read_bool("amsgrad", &amsgrad));
    if (amsgrad) {
      return diag->error(
          p.key_path("amsgrad"),
          "true is not supported (neither is it by DeepSpeed's CPU Adam); set false");
    }
    p.ignore("torch_adam", "strata always runs its own CPU Adam");
  }
  p.finish();
  r.finish();
  return absl::OkStatus();
}

absl::Status parse_scheduler(ObjectReader& r, Diagnostics* diag, SchedulerConfig* s) {
  std::string type;
  if (!r.has("type")) {
    return diag->error(
        r.key_path("type"),
        "missing; use LRRangeTest, OneCycle, WarmupLR, WarmupDecayLR or WarmupCosineLR");
  }
  STRATA_RETURN_IF_ERROR(r.read_enum(
      "type", &type, {"LRRangeTest", "OneCycle", "WarmupLR", "WarmupDecayLR", "WarmupCosineLR"}));
  for (SchedulerType t :
       {SchedulerType::kLRRangeTest, SchedulerType::kOneCycle, SchedulerType::kWarmupLR,
        SchedulerType::kWarmupDecayLR, SchedulerType::kWarmupCosineLR}) {
    if (to_string(t) == type) s->type = t;
  }
  STRATA_ASSIGN_OR_RETURN(auto params, r.child("params"));
  if (params) s->params = *r.get("params");
  r.finish();
  return absl::OkStatus();
}

bool valid_log_level(std::string_view level) {
  for (std::string_view l :
       {"trace", "debug", "info", "warn", "warning", "error", "critical", "off"}) {
    if (level == l) return true;
  }
  return false;
}

absl::Status parse_strata(ObjectReader& r, Diagnostics* diag, StrataConfig* s) {
  std::string overlap(to_string(s->overlap));
  STRATA_RETURN_IF_ERROR(r.read_enum("overlap", &overlap, {"sync", "overlap"}));
  s->overlap = overlap == "sync" ? OverlapMode::kSync : OverlapMode::kOverlap;
  STRATA_RETURN_IF_ERROR(r.read_string_list("nvme_paths", &s->nvme_paths));
  STRATA_RETURN_IF_ERROR(r.read_string("trace_file", &s->trace_file));
  STRATA_RETURN_IF_ERROR(r.read_string("log_level", &s->log_level));
  // Same syntax as STRATA_LOG: "LEVEL" or "LEVEL,subsystem=LEVEL,...".
  size_t start = 0;
  while (!s->log_level.empty() && start <= s->log_level.size()) {
    size_t comma = s->log_level.find(',', start);
    std::string part =
        s->log_level.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    size_t eq = part.find('=');
    if (!valid_log_level(eq == std::string::npos ? part : part.substr(eq + 1))) {
      return diag->error(r.key_path("log_level"),
                         absl::StrCat("\"", s->log_level,
                                      "\" is not a log level; use trace, debug, info, warn, error "
                                      "or off, optionally with subsystem=LEVEL parts"));
    }
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  STRATA_RETURN_IF_ERROR(r.read_bool("delayed_param_update", &s->delayed_param_update));
  STRATA_RETURN_IF_ERROR(
      r.read_int("prefetch_window_bytes", &s->prefetch_window_bytes, 0, kMaxHostBytes));
  STRATA_RETURN_IF_ERROR(
      r.read_int("rollback_buffer_bytes", &s->rollback_buffer_bytes, 0, kMaxHostBytes));
  r.finish();
  return absl::OkStatus();
}

absl::Status parse_top(ObjectReader& r, Diagnostics* diag, internal::ParseFacts* facts,
                       DsConfig* cfg) {
  STRATA_ASSIGN_OR_RETURN(facts->train_batch_size,
                          r.read_optional_int("train_batch_size", 1, kI64Max));
  STRATA_ASSIGN_OR_RETURN(facts->micro_batch_per_gpu,
                          r.read_optional_int("train_micro_batch_size_per_gpu", 1, kMaxMicroBatch));
  STRATA_ASSIGN_OR_RETURN(facts->gradient_accumulation_steps,
                          r.read_optional_int("gradient_accumulation_steps", 1, kMaxAccumulation));

  STRATA_ASSIGN_OR_RETURN(auto fp16, r.child("fp16"));
  if (fp16) STRATA_RETURN_IF_ERROR(parse_fp16(*fp16, &cfg->fp16));

  if (r.has("bf16") && r.has("bfloat16")) {
    return diag->error("bfloat16", "older name of \"bf16\", which is also given; keep only bf16");
  }
  for (std::string_view key : {"bf16", "bfloat16"}) {
    STRATA_ASSIGN_OR_RETURN(auto bf16, r.child(key));
    if (!bf16) continue;
    facts->bf16_key = std::string(key);
    STRATA_RETURN_IF_ERROR(bf16->read_bool("enabled", &cfg->bf16.enabled));
    bf16->ignore("immediate_grad_update", "strata applies gradients in fp32");
    bf16->finish();
  }

  STRATA_ASSIGN_OR_RETURN(auto zero, r.child("zero_optimization"));
  if (zero) STRATA_RETURN_IF_ERROR(parse_zero(*zero, diag, facts, &cfg->zero));
  STRATA_ASSIGN_OR_RETURN(auto aio, r.child("aio"));
  if (aio) STRATA_RETURN_IF_ERROR(parse_aio(*aio, diag, &cfg->aio));
  STRATA_ASSIGN_OR_RETURN(auto optimizer, r.child("optimizer"));
  if (optimizer) STRATA_RETURN_IF_ERROR(parse_optimizer(*optimizer, diag, &cfg->optimizer));
  STRATA_ASSIGN_OR_RETURN(auto scheduler, r.child("scheduler"));
  if (scheduler) STRATA_RETURN_IF_ERROR(parse_scheduler(*scheduler, diag, &cfg->scheduler));

  STRATA_RETURN_IF_ERROR(r.read_double("gradient_clipping", &cfg->gradient_clipping, 0.0, kInf));
  STRATA_RETURN_IF_ERROR(r.read_enum("communication_data_type", &cfg->communication_data_type,
                                     {"fp16", "bf16", "fp32"}));
  STRATA_RETURN_IF_ERROR(r.read_int("steps_per_print", &cfg->steps_per_print, 1, kI64Max));
  STRATA_RETURN_IF_ERROR(r.read_bool("wall_clock_breakdown", &cfg->wall_clock_breakdown));

  STRATA_ASSIGN_OR_RETURN(auto strata, r.child("strata"));
  if (strata) STRATA_RETURN_IF_ERROR(parse_strata(*strata, diag, &cfg->strata));

  for (std::string_view key :
       {"prescale_gradients", "gradient_predivide_factor", "sparse_gradients", "fp32_allreduce",
        "disable_allgather", "seq_parallel_communication_data_type"}) {
    r.ignore(key, kNotUsedMultiGpu);
  }
  r.ignore("activation_checkpointing",
           "strata does not read this section; `strata train --checkpoint-activations` keeps "
           "each layer's input only and recomputes the rest during backward (partitioning and "
           "CPU checkpointing of activations have no counterpart)");
  for (std::string_view key : {"zero_allow_untested_optimizer", "zero_force_ds_cpu_optimizer"}) {
    r.ignore(key, "strata always runs its own CPU optimizer");
  }
  for (std::string_view key : {"memory_breakdown",
                               "dump_state",
                               "tensorboard",
                               "wandb",
                               "csv_monitor",
                               "comet",
                               "comms_logger",
                               "flops_profiler",
                               "amp",
                               "checkpoint",
                               "elasticity",
                               "autotuning",
                               "data_efficiency",
                               "compression_training",
                               "pipeline",
                               "sparse_attention",
                               "data_types",
                               "timers",
                               "eigenvalue",
                               "progressive_layer_drop",
                               "curriculum_learning",
                               "quantize_training",
                               "nebula",
                               "weight_quantization",
                               "hybrid_engine",
                               "use_data_before_expert_parallel_",
                               "graph_harvesting"}) {
    r.ignore(key, kNotUsed);
  }
  r.finish();
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<DsConfig> parse_ds_config(std::string_view json_text, std::string_view source_name,
                                         std::vector<std::string>* warnings, int world_size) {
  Diagnostics diag{std::string(source_name), warnings};
  if (world_size < 1) {
    return diag.error("", absl::StrCat("world size must be >= 1, got ", world_size));
  }
  STRATA_ASSIGN_OR_RETURN(nlohmann::json root, parse_json_strict(json_text, source_name));
  if (!root.is_object()) {
    return diag.error(
        "", absl::StrCat("the top level must be a JSON object {...}, got ", describe(root)));
  }
  DsConfig cfg;
  internal::ParseFacts facts;
  ObjectReader top(root, "", &diag);
  STRATA_RETURN_IF_ERROR(parse_top(top, &diag, &facts, &cfg));
  STRATA_RETURN_IF_ERROR(internal::validate_ds_config(facts, world_size, &diag, &cfg));
  return cfg;
}

absl::StatusOr<DsConfig> load_ds_config(const std::string& path, std::vector<std::string>* warnings,
                                        int world_size) {
  STRATA_ASSIGN_OR_RETURN(std::string text, read_file(path));
  return parse_ds_config(text, path, warnings, world_size);
}

}  // namespace strata::config
