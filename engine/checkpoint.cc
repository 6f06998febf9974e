// OffloadOptimizer::save_state / load_state, which TrainingEngine's
// save_checkpoint / load_checkpoint are (contract in training_engine.h; the
// format and its reader in checkpoint_format.h, which paths a save may
// replace in checkpoint_dir.h).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/file_util.h"
#include "core/scratch_lock.h"
#include "core/status.h"
#include "dist/communicator.h"
#include "engine/checkpoint_dir.h"
#include "engine/checkpoint_format.h"
#include "engine/checkpoint_internal.h"
#include "engine/offload_optimizer_impl.h"
#include "nlohmann/json.hpp"

namespace strata::engine {

namespace fs = std::filesystem;
using checkpoint_internal::check_same_run;
using checkpoint_internal::CheckpointWriter;
using checkpoint_internal::fsync_path;
using checkpoint_internal::kVerifyChunkBytes;
using nlohmann::json;
using offload::Access;
using offload::TensorView;
using offload::Tier;

namespace checkpoint_internal {

absl::Status fsync_path(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno_status(errno, absl::StrCat("cannot open ", path, " to fsync it"));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) return errno_status(err, absl::StrCat("cannot fsync ", path));
  return absl::OkStatus();
}

}  // namespace checkpoint_internal

absl::StatusOr<json> OffloadOptimizer::Impl::checkpoint_meta(
    const std::function<absl::StatusOr<json>(const void*, uint64_t)>& sink, const json& user_meta) {
  json tensors = json::array();
  std::vector<uint8_t> buf;
  for (int b = 0; b < static_cast<int>(buckets.size()); ++b) {
    for (int i = 0; i < static_cast<int>(buckets[b].size()); ++i) {
      const ParamRec& p = params[buckets[b][i]];
      const offload::TensorId ids[4] = {p.master, p.exp_avg, p.exp_avg_sq, p.param};
      // The rank's slice of each tensor (the whole param with one rank);
      // at stage 0 every rank holds the whole state and saves its slice.
      const ParamSlice shard = partition_slice(p.desc.numel, rank, world);
      json entry = {{"layer", b}, {"param", i}, {"name", p.desc.name}, {"numel", shard.numel}};
      for (int k = 0; k < 4; ++k) {
        const bool compute = k == 3;
        const uint64_t esize = compute ? dtype_size(dtype) : 4;
        const uint64_t bytes = (compute ? p.param_numel() : p.state_numel()) * esize;
        const Tier tier = compute ? param_tier(p) : opt_tier;
        buf.resize(bytes);
        STRATA_RETURN_IF_ERROR(read_raw(ids[k], tier, buf.data(), bytes), store->spec(ids[k]).name);
        const uint64_t offset = (shard.offset - (compute ? p.param_lo() : p.slice.offset)) * esize;
        STRATA_ASSIGN_OR_RETURN(entry[kCheckpointKindNames[k]],
                                sink(buf.data() + offset, shard.numel * esize));
      }
      tensors.push_back(std::move(entry));
    }
  }
  json meta = {{"format", "strata-checkpoint"},
               {"format_version", kCheckpointFormatVersion},
               {"compute_dtype", std::string(dtype_name(dtype))},
               {"optimizer", std::string(config::to_string(config.optimizer.type))},
               {"zero_stage", config.zero.stage},
               {"steps", steps},
               {"optimizer_steps", adam_step},
               {"micro_batches", micro_batches},
               {"lr_schedule_iteration", schedule->iteration()},
               {"tensor_file", kCheckpointTensorFile},
               {"params", std::move(tensors)}};
  if (scaler != nullptr) {
    const LossScaler::State st = scaler->state();
    meta["loss_scaler"] = {{"scale", st.scale},
                           {"hysteresis", st.hysteresis},
                           {"iteration", st.iteration},
                           {"last_overflow_iteration", st.last_overflow_iteration},
                           {"skipped", st.skipped}};
  }
  if (!user_meta.is_null()) meta["user"] = user_meta;
  if (dp()) meta["zero_shard"] = {{"rank", rank}, {"world_size", world}};
  return meta;
}

absl::Status OffloadOptimizer::Impl::save(const std::string& dir, const json& user_meta) {
  if (dp()) return save_shards(dir, user_meta);
  STRATA_RETURN_IF_ERROR(partly_stepped_status, absl::StrCat("not saving checkpoint ", dir));
  STRATA_RETURN_IF_ERROR(wait_for_save(), "an earlier asynchronous save");
  STRATA_RETURN_IF_ERROR(finish_pending_update());
  // Streams tensor by tensor: no more memory than the largest tensor.
  STRATA_ASSIGN_OR_RETURN(std::unique_ptr<CheckpointWriter> w, CheckpointWriter::create(dir));
  auto meta = checkpoint_meta(
      [&](const void* data, uint64_t bytes) { return w->append(data, bytes); }, user_meta);
  if (!meta.ok()) return w->fail(meta.status());
  return w->finish(*meta);
}

absl::Status OffloadOptimizer::Impl::save_async(const std::string& dir, const json& user_meta) {
  // Across ranks the save is collective (its shards agree on one step):
  // synchronous.
  if (dp()) return save_shards(dir, user_meta);
  STRATA_RETURN_IF_ERROR(partly_stepped_status, absl::StrCat("not saving checkpoint ", dir));
  STRATA_RETURN_IF_ERROR(wait_for_save(), "an earlier asynchronous save");
  STRATA_RETURN_IF_ERROR(finish_pending_update());
  // Refused now, not in the background after the snapshot is taken.
  STRATA_RETURN_IF_ERROR(check_checkpoint_destination(dir),
                         absl::StrCat("saving checkpoint ", dir));
  // The snapshot: every tensor copied out now, between steps; the files are
  // written from it while training goes on.
  auto snapshot = std::make_shared<std::vector<uint8_t>>();
  uint64_t total = 0;
  for (const ParamRec& p : params) total += p.desc.numel * (12 + dtype_size(dtype));
  snapshot->reserve(total);
  STRATA_ASSIGN_OR_RETURN(
      json meta,
      checkpoint_meta(
          [&](const void* data, uint64_t bytes) {
            const uint64_t offset = snapshot->size();
            const auto* p = static_cast<const uint8_t*>(data);
            snapshot->insert(snapshot->end(), p, p + bytes);
            return absl::StatusOr<json>(json{{"offset", offset}, {"bytes", bytes}});
          },
          user_meta),
      absl::StrCat("saving checkpoint ", dir));
  pending_save = std::async(std::launch::async, [dir, snapshot, meta = std::move(meta)]() mutable {
    STRATA_ASSIGN_OR_RETURN(std::unique_ptr<CheckpointWriter> w, CheckpointWriter::create(dir));
    // The same file as a streamed save: entries get their checksums here.
    for (json& entry : meta["params"]) {
      for (const char* kind : kCheckpointKindNames) {
        json& e = entry[kind];
        const uint64_t offset = e["offset"].get<uint64_t>(), bytes = e["bytes"].get<uint64_t>();
        STRATA_ASSIGN_OR_RETURN(e, w->append(snapshot->data() + offset, bytes));
      }
    }
    snapshot.reset();
    return w->finish(meta);
  });
  return absl::OkStatus();
}

absl::Status OffloadOptimizer::Impl::wait_for_save() {
  if (!pending_save.valid()) return absl::OkStatus();
  return pending_save.get();
}

namespace checkpoint_internal {

// What a resume needs to match, saved vs now; each mismatch names both.
absl::Status check_same_run(const Checkpoint& ck, const config::DsConfig& config, DType dtype,
                            bool has_scaler, bool weights_only) {
  if (ck.compute_dtype != dtype) {
    return absl::FailedPreconditionError(
        absl::StrCat("saved with compute dtype ", std::string(dtype_name(ck.compute_dtype)),
                     " but this engine runs ", std::string(dtype_name(dtype)),
                     "; set fp16 / bf16 in ds_config as the saved run had them"));
  }
  if (weights_only) return absl::OkStatus();
  if (ck.loss_scaler.has_value() != has_scaler) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the checkpoint ", has_scaler ? "has no" : "has a", " loss-scaler state but this engine ",
        has_scaler ? "has" : "has no", " loss scaler; use the saved run's fp16 settings"));
  }
  const std::string optimizer(config::to_string(config.optimizer.type));
  if (!ck.optimizer.empty() && ck.optimizer != optimizer) {
    return absl::FailedPreconditionError(
        absl::StrCat("saved with optimizer ", ck.optimizer, ", this run uses ", optimizer,
                     "; its optimizer states mean something else: resume with optimizer.type ",
                     ck.optimizer, " or start a new run"));
  }
  if (ck.zero_stage.has_value() && *ck.zero_stage != config.zero.stage) {
    return absl::FailedPreconditionError(
        absl::StrCat("saved with ZeRO stage ", *ck.zero_stage, ", this run uses stage ",
                     config.zero.stage, "; resume with zero_optimization.stage ", *ck.zero_stage));
  }
  return absl::OkStatus();
}

}  // namespace checkpoint_internal

absl::Status OffloadOptimizer::Impl::load(const std::string& dir_in, bool weights_only) {
  if (dp() || is_sharded_checkpoint(dir_in)) return load_shards(dir_in, weights_only);
  STRATA_RETURN_IF_ERROR(wait_for_save(), "an earlier asynchronous save");
  STRATA_RETURN_IF_ERROR(finish_pending_update());  // a load replaces it anyway
  STRATA_ASSIGN_OR_RETURN(const Checkpoint ck, read_checkpoint(dir_in),
                          absl::StrCat("loading checkpoint ", dir_in));
  const std::string ctx = absl::StrCat("loading checkpoint ", ck.dir);
  STRATA_RETURN_IF_ERROR(check_same_run(ck, config, dtype, scaler != nullptr, weights_only), ctx);

  // The parameter table against this model: count, then each entry.
  const size_t total = params.size();
  size_t idx = 0;
  for (int l = 0; l < static_cast<int>(buckets.size()); ++l) {
    for (int i = 0; i < static_cast<int>(buckets[l].size()); ++i, ++idx) {
      const ParamRec& p = params[buckets[l][i]];
      const std::string here = absl::StrCat("layer ", l, " param ", i, " (", p.desc.name, ", ",
                                            p.desc.numel, " elements)");
      if (idx >= ck.params.size()) {
        return absl::FailedPreconditionError(absl::StrCat(
            ctx, ": the checkpoint has ", ck.params.size(), " parameters, this model ", total,
            "; first missing: ", here, "; load it into the model it was saved from"));
      }
      const CheckpointParam& e = ck.params[idx];
      if (e.layer != l || e.param != i || e.name != p.desc.name || e.numel != p.desc.numel) {
        return absl::FailedPreconditionError(absl::StrCat(
            ctx, ": parameter table mismatch at entry ", idx, ": the checkpoint has layer ",
            e.layer, " param ", e.param, " (", e.name, ", ", e.numel, " elements), this model has ",
            here, "; load it into the model it was saved from"));
      }
    }
  }
  if (ck.params.size() != total) {
    return absl::FailedPreconditionError(
        absl::StrCat(ctx, ": the checkpoint has ", ck.params.size(), " parameters, this model ",
                     total, "; load it into the model it was saved from"));
  }

  // Every checksum, streamed, before anything is written into the engine.
  last_load = CheckpointLoadStats{.largest_tensor_bytes = ck.largest_tensor_bytes(),
                                  .tensor_file_bytes = ck.tensor_file_bytes};
  STRATA_RETURN_IF_ERROR(
      verify_checkpoint_tensors(ck, kVerifyChunkBytes, &last_load.peak_buffer_bytes), ctx);

  // Then the tensors, one at a time through one buffer. Each is checked
  // again as it is read: a file changed since the verify pass is caught, but
  // the engine then holds part of the checkpoint.
  std::vector<uint8_t> buf;
  size_t n = 0;
  for (const auto& bucket : buckets) {
    for (ParamHandle h : bucket) {
      const ParamRec& p = params[h];
      const CheckpointParam& e = ck.params[n++];
      const offload::TensorId ids[4] = {p.master, p.exp_avg, p.exp_avg_sq, p.param};
      for (int k = 0; k < kCheckpointKinds; ++k) {
        const CheckpointTensor& t = e.tensors[k];
        buf.resize(t.bytes);
        last_load.peak_buffer_bytes =
            std::max<uint64_t>(last_load.peak_buffer_bytes, buf.capacity());
        if (absl::Status s = read_checkpoint_tensor(ck, t, e.tensor_name(k), buf.data()); !s.ok()) {
          return annotate(s, absl::StrCat(ctx,
                                          " (the file changed while it was read: the "
                                          "engine is now partly loaded; do not train on it)"));
        }
        // The compute param on its home (its device copy is then stale and
        // dropped); the fp32 tensors on the optimizer's tier, reaching NVMe
        // by write-back as at initialization.
        const Tier tier = k == kCheckpointCompute ? param_tier(p) : opt_tier;
        STRATA_RETURN_IF_ERROR(write_raw(ids[k], tier, buf.data(), t.bytes),
                               absl::StrCat(ctx, ", tensor ", store->spec(ids[k]).name));
      }
    }
  }
  return restore_counters_and_bindings(ck, weights_only, ctx);
}

// The tail both loads share (one rank, and shards): the step counters and the
// scaler from the checkpoint, then the framework's own copies of kHost /
// kDevice params from the store's.
absl::Status OffloadOptimizer::Impl::restore_counters_and_bindings(const Checkpoint& ck,
                                                                   bool weights_only,
                                                                   std::string_view ctx) {
  steps = ck.steps;
  adam_step = ck.optimizer_steps;
  micro_batches = ck.micro_batches;
  schedule->set_iteration(ck.lr_schedule_iteration);
  if (scaler != nullptr && ck.loss_scaler.has_value()) {
    const CheckpointLossScaler& ls = *ck.loss_scaler;
    scaler->restore(LossScaler::State{.scale = ls.scale,
                                      .hysteresis = ls.hysteresis,
                                      .iteration = ls.iteration,
                                      .last_overflow_iteration = ls.last_overflow_iteration,
                                      .skipped = ls.skipped});
  }
  // Every master, state and param now comes from the checkpoint.
  if (!weights_only) partly_stepped_status = absl::OkStatus();
  std::vector<uint8_t> buf;
  for (const ParamRec& p : params) {
    if (p.desc.binding == ParamBinding::kStore) continue;
    buf.resize(p.desc.numel * dtype_size(dtype));
    STRATA_RETURN_IF_ERROR(read_raw(p.param, param_tier(p), buf.data(), buf.size()), ctx);
    STRATA_RETURN_IF_ERROR(write_binding(p, buf.data()), ctx);
  }
  return absl::OkStatus();
}

}  // namespace strata::engine
