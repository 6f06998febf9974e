// OffloadOptimizer::save_state / load_state, which TrainingEngine's
// save_checkpoint / load_checkpoint are (contract in training_engine.h; the
// format and its reader in checkpoint_format.h, which paths a save may
// replace in checkpoint_dir.h).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

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
#include "engine/offload_optimizer_impl.h"
#include "nlohmann/json.hpp"

namespace strata::engine {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using offload::Access;
using offload::TensorView;
using offload::Tier;

// The verify pass reads tensors.bin through a buffer of at most this.
constexpr uint64_t kVerifyChunkBytes = uint64_t{4} << 20;

absl::Status fsync_path(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno_status(errno, absl::StrCat("cannot open ", path, " to fsync it"));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) return errno_status(err, absl::StrCat("cannot fsync ", path));
  return absl::OkStatus();
}

}  // namespace

namespace {

// Writes one checkpoint directory: DIR.tmp-PID first (tensors.bin appended
// tensor by tensor, then meta.json), fsynced, then swapped in for DIR so that
// DIR or DIR.old holds a complete checkpoint at every point. Owns no engine
// state, so it can run on another thread.
class CheckpointWriter {
 public:
  static absl::StatusOr<std::unique_ptr<CheckpointWriter>> create(const std::string& dir_in) {
    const std::string dir = strip_trailing_slashes(dir_in);
    if (dir.empty()) return absl::InvalidArgumentError("save_checkpoint: empty directory name");
    STRATA_RETURN_IF_ERROR(check_checkpoint_destination(dir));
    STRATA_RETURN_IF_ERROR(remove_dead_checkpoint_temps(dir).status(),
                           absl::StrCat("saving checkpoint ", dir));
    std::unique_ptr<CheckpointWriter> w(new CheckpointWriter(dir));
    // (That removed our own DIR.tmp-<pid> too, when an earlier save of this
    // process failed; one still there belongs to a live save.)
    std::error_code ec;
    fs::create_directories(parent_dir(dir), ec);
    if (!fs::create_directory(w->tmp_, ec) || ec) {
      return absl::FailedPreconditionError(absl::StrCat(
          "cannot create checkpoint directory ", w->tmp_, " (", ec ? ec.message() : "it exists",
          "); check that ", parent_dir(dir), " is writable"));
    }
    w->created_ = true;
    // Held until the writer goes: a later run tells a live save from a dead one.
    auto lock = ScratchLock::lock(w->tmp_);
    if (!lock.ok()) return w->fail(lock.status());
    w->lock_ = std::move(*lock);
    auto fd = create_new_file(w->bin_path_);
    if (!fd.ok()) return w->fail(fd.status());
    w->fd_ = *fd;
    return w;
  }

  ~CheckpointWriter() {
    if (fd_ >= 0) ::close(fd_);
    if (!done_ && created_) {
      std::error_code ignored;
      fs::remove_all(tmp_, ignored);
    }
  }

  // Appends one tensor's bytes; returns its entry (offset, bytes, xxh3).
  absl::StatusOr<json> append(const void* data, uint64_t bytes) {
    absl::Status s = pwrite_all(fd_, data, bytes, offset_, bin_path_);
    if (!s.ok()) return fail(s);
    json entry = {
        {"offset", offset_}, {"bytes", bytes}, {"xxh3", xxh3_hex(XXH3_64bits(data, bytes))}};
    offset_ += bytes;
    return entry;
  }

  absl::Status finish(const json& meta) {
    if (::fsync(fd_) != 0) {
      return fail(errno_status(errno, absl::StrCat("cannot fsync ", bin_path_)));
    }
    ::close(fd_);
    fd_ = -1;
    // Bytes that are not UTF-8 (a path in the user metadata) are replaced:
    // a strict dump would throw and lose the whole save.
    const std::string text =
        meta.dump(2, ' ', /*ensure_ascii=*/false, json::error_handler_t::replace) + "\n";
    absl::Status s = write_file_atomic((fs::path(tmp_) / kCheckpointMetaFile).string(), text);
    if (!s.ok()) return fail(s);
    s = fsync_path(tmp_);
    if (!s.ok()) return fail(s);

    // Swap in: DIR -> DIR.old, DIR.tmp -> DIR, drop DIR.old. A DIR.old
    // without a DIR is the only complete copy (a save killed between the
    // renames): it stays until the new DIR is in place. Checked again: the
    // save may have taken minutes, and only strata's own checkpoints go.
    s = check_checkpoint_destination(dir_);
    if (!s.ok()) return fail(s);
    std::error_code ec;
    const bool had_previous = fs::exists(dir_, ec);
    if (had_previous) fs::remove_all(old_, ec);
    if (had_previous && ::rename(dir_.c_str(), old_.c_str()) != 0) {
      return fail(errno_status(
          errno, absl::StrCat("cannot move the previous checkpoint ", dir_, " to ", old_)));
    }
    if (::rename(tmp_.c_str(), dir_.c_str()) != 0) {
      const absl::Status err =
          errno_status(errno, absl::StrCat("cannot rename ", tmp_, " to ", dir_));
      if (had_previous) ::rename(old_.c_str(), dir_.c_str());
      return fail(err);
    }
    done_ = true;
    STRATA_RETURN_IF_ERROR(fsync_path(parent_dir(dir_)), absl::StrCat("saving checkpoint ", dir_));
    fs::remove_all(old_, ec);
    return absl::OkStatus();
  }

  absl::Status fail(const absl::Status& s) const {
    return annotate(s, absl::StrCat("saving checkpoint ", dir_));
  }

 private:
  explicit CheckpointWriter(std::string dir)
      : dir_(std::move(dir)),
        tmp_(absl::StrCat(dir_, ".tmp-", ::getpid())),
        old_(dir_ + ".old"),
        bin_path_((fs::path(tmp_) / kCheckpointTensorFile).string()) {}

  std::string dir_, tmp_, old_, bin_path_;
  ScratchLock lock_;  // on tmp_
  int fd_ = -1;
  uint64_t offset_ = 0;
  bool created_ = false;  // tmp_ is ours to remove
  bool done_ = false;
};

}  // namespace

absl::StatusOr<json> OffloadOptimizer::Impl::checkpoint_meta(
    const std::function<absl::StatusOr<json>(const void*, uint64_t)>& sink, const json& user_meta) {
  json tensors = json::array();
  std::vector<uint8_t> buf;
  for (int b = 0; b < static_cast<int>(buckets.size()); ++b) {
    for (int i = 0; i < static_cast<int>(buckets[b].size()); ++i) {
      const ParamRec& p = params[buckets[b][i]];
      const offload::TensorId ids[4] = {p.master, p.exp_avg, p.exp_avg_sq, p.param};
      // The rank's slice of each tensor (the whole param with one rank).
      json entry = {{"layer", b}, {"param", i}, {"name", p.desc.name}, {"numel", p.slice.numel}};
      for (int k = 0; k < 4; ++k) {
        const bool compute = k == 3;
        const uint64_t esize = compute ? dtype_size(dtype) : 4;
        const uint64_t bytes = (compute ? p.desc.numel : p.state_numel()) * esize;
        const Tier tier = compute ? param_tier(p) : opt_tier;
        buf.resize(bytes);
        STRATA_RETURN_IF_ERROR(read_raw(ids[k], tier, buf.data(), bytes), store->spec(ids[k]).name);
        const uint64_t offset = compute ? p.slice.offset * esize : 0;
        STRATA_ASSIGN_OR_RETURN(entry[kCheckpointKindNames[k]],
                                sink(buf.data() + offset, p.slice.numel * esize));
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

namespace {

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

}  // namespace

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
  // The framework's own copies of kHost / kDevice params follow.
  for (const ParamRec& p : params) {
    if (p.desc.binding == ParamBinding::kStore) continue;
    buf.resize(p.desc.numel * dtype_size(dtype));
    STRATA_RETURN_IF_ERROR(read_raw(p.param, param_tier(p), buf.data(), buf.size()), ctx);
    STRATA_RETURN_IF_ERROR(write_binding(p, buf.data()), ctx);
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Data-parallel checkpoints. DIR holds zero.json (rank 0 writes it last:
// the format, the world size, the partition rule, the shard directories)
// and one shard per rank, DIR/rank<r>: a checkpoint in the format above
// whose tables hold that rank's slice of every tensor (entry "numel" is the
// slice's; the compute param's slice too) plus "zero_shard": {rank,
// world_size}. A load at any world size reads, per param, the parts of the
// saved slices its own slice covers, and the whole compute param from all.

namespace {

constexpr char kShardMetaFile[] = "zero.json";
constexpr char kShardFormat[] = "strata-zero-checkpoint";
constexpr int kShardFormatVersion = 1;
// engine/zero_partition.h's rule, by name: a reader refuses another.
constexpr char kPartitionRule[] = "per-param-even-split";

// A save may write into DIR when it is missing, an empty directory or a
// data-parallel checkpoint; anything else is the user's.
absl::Status check_shard_destination(const std::string& dir) {
  std::error_code ec;
  if (!fs::exists(dir, ec)) return absl::OkStatus();
  if (fs::is_symlink(dir, ec) || !fs::is_directory(dir, ec)) {
    return absl::FailedPreconditionError(
        absl::StrCat(dir, " exists and is not a directory; choose another checkpoint path"));
  }
  if (is_sharded_checkpoint(dir) || fs::is_empty(dir, ec)) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat(dir, " is not empty and holds no data-parallel checkpoint (", kShardMetaFile,
                   "); a save across ranks writes only there: choose another checkpoint path"));
}

}  // namespace

bool is_sharded_checkpoint(const std::string& dir) {
  const std::string path = (fs::path(dir) / kShardMetaFile).string();
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return false;
  auto text = read_file(path, uint64_t{1} << 20);
  if (!text.ok()) return false;
  const json zero = json::parse(*text, nullptr, /*allow_exceptions=*/false);
  return zero.is_object() && zero.value("format", "") == kShardFormat;
}

std::string checkpoint_shard_dir(const std::string& dir, int rank) {
  return (fs::path(dir) / absl::StrCat("rank", rank)).string();
}

// Every rank's outcome of one phase, so that all go on or all stop: a rank
// that failed returns its error, the others an error saying one failed.
static absl::Status agree_across_ranks(dist::Communicator* comm, const absl::Status& mine,
                                       const std::string& what) {
  double failed[1] = {mine.ok() ? 0.0 : 1.0};
  STRATA_RETURN_IF_ERROR(comm->all_reduce_host(failed, dist::ReduceOp::kMax), what);
  STRATA_RETURN_IF_ERROR(mine, what);
  if (failed[0] != 0) {
    return absl::AbortedError(absl::StrCat(what, ": another rank failed (its log says why)"));
  }
  return absl::OkStatus();
}

absl::Status OffloadOptimizer::Impl::save_shards(const std::string& dir_in, const json& user_meta) {
  const std::string dir = strip_trailing_slashes(dir_in);
  const std::string ctx =
      absl::StrCat("saving checkpoint ", dir, " (rank ", rank, " of ", world, ")");
  absl::Status ready = partly_stepped_status;
  if (ready.ok()) ready = wait_for_save();
  if (ready.ok()) ready = finish_pending_update();
  if (ready.ok()) ready = check_shard_destination(dir);
  STRATA_RETURN_IF_ERROR(agree_across_ranks(comm, ready, ctx));
  // zero.json goes first and comes back last: a save that fails half way
  // leaves no checkpoint that mixes two steps.
  absl::Status cleared;
  if (rank == 0) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    fs::remove(fs::path(dir) / kShardMetaFile, ec);
    if (ec)
      cleared =
          absl::FailedPreconditionError(absl::StrCat("cannot write in ", dir, ": ", ec.message()));
  }
  STRATA_RETURN_IF_ERROR(agree_across_ranks(comm, cleared, ctx));
  absl::Status written = [&]() -> absl::Status {
    STRATA_ASSIGN_OR_RETURN(std::unique_ptr<CheckpointWriter> w,
                            CheckpointWriter::create(checkpoint_shard_dir(dir, rank)));
    auto meta = checkpoint_meta(
        [&](const void* data, uint64_t bytes) { return w->append(data, bytes); }, user_meta);
    if (!meta.ok()) return w->fail(meta.status());
    return w->finish(*meta);
  }();
  STRATA_RETURN_IF_ERROR(agree_across_ranks(comm, written, ctx));
  absl::Status published;
  if (rank == 0) {
    json shards = json::array();
    for (int r = 0; r < world; ++r) shards.push_back(absl::StrCat("rank", r));
    const json zero = {{"format", kShardFormat}, {"format_version", kShardFormatVersion},
                       {"world_size", world},    {"partition", kPartitionRule},
                       {"steps", steps},         {"shards", std::move(shards)}};
    // Shards of an earlier save with more ranks go.
    std::error_code ec;
    for (int r = world; fs::exists(checkpoint_shard_dir(dir, r), ec); ++r) {
      fs::remove_all(checkpoint_shard_dir(dir, r), ec);
      fs::remove_all(checkpoint_shard_dir(dir, r) + ".old", ec);
    }
    published = write_file_atomic((fs::path(dir) / kShardMetaFile).string(), zero.dump(2) + "\n");
    if (published.ok()) published = fsync_path(dir);
  }
  return agree_across_ranks(comm, published, ctx);
}

absl::Status OffloadOptimizer::Impl::load_shards(const std::string& dir_in, bool weights_only) {
  STRATA_RETURN_IF_ERROR(wait_for_save(), "an earlier asynchronous save");
  STRATA_RETURN_IF_ERROR(finish_pending_update());
  const std::string dir = strip_trailing_slashes(dir_in);
  const std::string ctx = absl::StrCat("loading checkpoint ", dir);
  // The shards: a data-parallel checkpoint's, or a one-rank checkpoint as
  // the one shard of world size 1.
  std::vector<std::string> shard_dirs;
  if (is_sharded_checkpoint(dir)) {
    const std::string path = (fs::path(dir) / kShardMetaFile).string();
    STRATA_ASSIGN_OR_RETURN(const std::string text, read_file(path), ctx);
    const json zero = json::parse(text, nullptr, /*allow_exceptions=*/false);
    auto bad = [&](const std::string& why) {
      return absl::DataLossError(absl::StrCat(ctx, ": ", path, ": ", why));
    };
    if (!zero.is_object() || zero.value("format", "") != kShardFormat) {
      return bad(absl::StrCat("not a ", kShardFormat, " file"));
    }
    if (zero.value("format_version", 0) != kShardFormatVersion) {
      return absl::FailedPreconditionError(
          absl::StrCat(ctx, ": format_version ", zero.value("format_version", 0), " of ", path,
                       " is not the ", kShardFormatVersion, " this strata reads"));
    }
    if (zero.value("partition", "") != kPartitionRule) {
      return bad(absl::StrCat("partition rule \"", zero.value("partition", ""), "\", not \"",
                              kPartitionRule, "\""));
    }
    const json ws = zero.value("world_size", json());
    if (!ws.is_number_integer() || ws.get<int64_t>() < 1 || ws.get<int64_t>() > (1 << 20)) {
      return bad("world_size must be an integer from 1 to 2^20");
    }
    for (int r = 0; r < ws.get<int>(); ++r) shard_dirs.push_back(checkpoint_shard_dir(dir, r));
  } else {
    shard_dirs.push_back(dir);
  }
  const int saved_world = static_cast<int>(shard_dirs.size());
  std::vector<Checkpoint> cks;
  for (const std::string& d : shard_dirs) {
    STRATA_ASSIGN_OR_RETURN(Checkpoint ck, read_checkpoint(d), ctx);
    STRATA_RETURN_IF_ERROR(check_same_run(ck, config, dtype, scaler != nullptr, weights_only),
                           absl::StrCat(ctx, ", shard ", ck.dir));
    if (ck.steps != (cks.empty() ? ck.steps : cks[0].steps)) {
      return absl::DataLossError(absl::StrCat(ctx, ": shard ", ck.dir, " is of step ", ck.steps,
                                              ", shard ", cks[0].dir, " of step ", cks[0].steps,
                                              "; the save did not finish: use another checkpoint"));
    }
    cks.push_back(std::move(ck));
  }
  // Each shard's table against this model and the rule.
  size_t idx = 0;
  for (int l = 0; l < static_cast<int>(buckets.size()); ++l) {
    for (int i = 0; i < static_cast<int>(buckets[l].size()); ++i, ++idx) {
      const ParamRec& p = params[buckets[l][i]];
      for (int q = 0; q < saved_world; ++q) {
        const Checkpoint& ck = cks[q];
        const uint64_t want = partition_slice(p.desc.numel, q, saved_world).numel;
        if (idx >= ck.params.size() || ck.params[idx].layer != l || ck.params[idx].param != i ||
            ck.params[idx].name != p.desc.name || ck.params[idx].numel != want) {
          return absl::FailedPreconditionError(absl::StrCat(
              ctx, ": shard ", ck.dir, " does not hold layer ", l, " param ", i, " (", p.desc.name,
              ", ", want, " of its ", p.desc.numel, " elements on rank ", q, " of ", saved_world,
              ") at entry ", idx, "; load it into the model it was saved from"));
        }
      }
    }
  }
  for (const Checkpoint& ck : cks) {
    if (ck.params.size() != idx) {
      return absl::FailedPreconditionError(absl::StrCat(
          ctx, ": shard ", ck.dir, " has ", ck.params.size(), " parameters, this model ", idx,
          "; load it into the model it was "
          "saved from"));
    }
  }
  last_load = CheckpointLoadStats{};
  for (const Checkpoint& ck : cks) {
    uint64_t peak = 0;
    STRATA_RETURN_IF_ERROR(verify_checkpoint_tensors(ck, kVerifyChunkBytes, &peak), ctx);
    last_load.peak_buffer_bytes = std::max(last_load.peak_buffer_bytes, peak);
    last_load.largest_tensor_bytes =
        std::max(last_load.largest_tensor_bytes, ck.largest_tensor_bytes());
    last_load.tensor_file_bytes += ck.tensor_file_bytes;
  }

  // Per param: this rank's slice of each state from the saved slices it
  // overlaps, the whole compute param from every shard.
  std::vector<uint8_t> buf, mine, whole;
  idx = 0;
  for (const auto& bucket : buckets) {
    for (ParamHandle h : bucket) {
      const ParamRec& p = params[h];
      const offload::TensorId ids[4] = {p.master, p.exp_avg, p.exp_avg_sq, p.param};
      for (int k = 0; k < kCheckpointKinds; ++k) {
        const bool compute = k == kCheckpointCompute;
        const uint64_t esize = compute ? dtype_size(dtype) : 4;
        const uint64_t lo = compute ? 0 : p.slice.offset;
        const uint64_t hi = compute ? p.desc.numel : p.slice.offset + p.slice.numel;
        mine.assign((compute ? p.desc.numel : p.state_numel()) * esize, 0);
        for (int q = 0; q < saved_world; ++q) {
          const ParamSlice old = partition_slice(p.desc.numel, q, saved_world);
          const uint64_t from = std::max(lo, old.offset);
          const uint64_t to = std::min(hi, old.offset + old.numel);
          if (from >= to) continue;
          const CheckpointParam& e = cks[q].params[idx];
          buf.resize(e.tensors[k].bytes);
          STRATA_RETURN_IF_ERROR(
              read_checkpoint_tensor(cks[q], e.tensors[k], e.tensor_name(k), buf.data()),
              absl::StrCat(ctx, " (the engine is now partly loaded; do not train on it)"));
          std::memcpy(mine.data() + (from - lo) * esize, buf.data() + (from - old.offset) * esize,
                      (to - from) * esize);
        }
        last_load.peak_buffer_bytes =
            std::max<uint64_t>(last_load.peak_buffer_bytes, buf.capacity() + mine.capacity());
        const Tier tier = compute ? param_tier(p) : opt_tier;
        STRATA_RETURN_IF_ERROR(write_raw(ids[k], tier, mine.data(), mine.size()),
                               absl::StrCat(ctx, ", tensor ", store->spec(ids[k]).name));
      }
      ++idx;
    }
  }
  const Checkpoint& ck = cks[0];
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
  if (!weights_only) partly_stepped_status = absl::OkStatus();
  for (const ParamRec& p : params) {
    if (p.desc.binding == ParamBinding::kStore) continue;
    whole.resize(p.desc.numel * dtype_size(dtype));
    STRATA_RETURN_IF_ERROR(read_raw(p.param, param_tier(p), whole.data(), whole.size()), ctx);
    STRATA_RETURN_IF_ERROR(write_binding(p, whole.data()), ctx);
  }
  return absl::OkStatus();
}

absl::Status merge_checkpoint_shards(const std::string& dir_in, const std::string& out) {
  const std::string dir = strip_trailing_slashes(dir_in);
  const std::string ctx = absl::StrCat("merging checkpoint ", dir, " into ", out);
  if (!is_sharded_checkpoint(dir)) {
    return absl::InvalidArgumentError(
        absl::StrCat(ctx, ": ", dir, " is not a data-parallel checkpoint (no ", kShardMetaFile,
                     " with \"format\": \"", kShardFormat, "\")"));
  }
  STRATA_ASSIGN_OR_RETURN(const std::string zero_text,
                          read_file((fs::path(dir) / kShardMetaFile).string()), ctx);
  const json zero = json::parse(zero_text, nullptr, /*allow_exceptions=*/false);
  const json ws = zero.value("world_size", json());
  if (!ws.is_number_integer() || ws.get<int64_t>() < 1 || ws.get<int64_t>() > (1 << 20) ||
      zero.value("partition", "") != kPartitionRule) {
    return absl::DataLossError(absl::StrCat(ctx, ": ", kShardMetaFile,
                                            " needs an integer world_size from 1 to 2^20 and "
                                            "partition \"",
                                            kPartitionRule, "\""));
  }
  const int world = ws.get<int>();
  std::vector<Checkpoint> cks;
  for (int r = 0; r < world; ++r) {
    STRATA_ASSIGN_OR_RETURN(Checkpoint ck, read_checkpoint(checkpoint_shard_dir(dir, r)), ctx);
    if (!cks.empty() && (ck.params.size() != cks[0].params.size() || ck.steps != cks[0].steps ||
                         ck.compute_dtype != cks[0].compute_dtype)) {
      return absl::DataLossError(absl::StrCat(ctx, ": shard ", ck.dir,
                                              " does not match rank 0's (parameter count, step "
                                              "or dtype); the save did not finish"));
    }
    cks.push_back(std::move(ck));
  }
  STRATA_ASSIGN_OR_RETURN(const std::string meta_text, read_file(cks[0].meta_path), ctx);
  json meta = json::parse(meta_text, nullptr, /*allow_exceptions=*/false);
  if (!meta.is_object()) return absl::DataLossError(absl::StrCat(ctx, ": ", cks[0].meta_path));
  meta.erase("zero_shard");
  STRATA_ASSIGN_OR_RETURN(std::unique_ptr<CheckpointWriter> w, CheckpointWriter::create(out));
  json tensors = json::array();
  std::vector<uint8_t> whole, part;
  for (size_t i = 0; i < cks[0].params.size(); ++i) {
    const CheckpointParam& p0 = cks[0].params[i];
    uint64_t numel = 0;
    for (const Checkpoint& ck : cks) numel += ck.params[i].numel;
    for (int r = 0; r < world; ++r) {
      const CheckpointParam& e = cks[r].params[i];
      if (e.layer != p0.layer || e.param != p0.param || e.name != p0.name ||
          e.numel != partition_slice(numel, r, world).numel) {
        return w->fail(absl::DataLossError(
            absl::StrCat(ctx, ": entry ", i, " of shard ", cks[r].dir, " (", e.name, ", ", e.numel,
                         " elements) is not rank ", r, "'s slice of ", p0.name)));
      }
    }
    json entry = {{"layer", p0.layer}, {"param", p0.param}, {"name", p0.name}, {"numel", numel}};
    for (int k = 0; k < kCheckpointKinds; ++k) {
      whole.clear();
      for (const Checkpoint& ck : cks) {
        const CheckpointParam& e = ck.params[i];
        part.resize(e.tensors[k].bytes);
        absl::Status s = read_checkpoint_tensor(ck, e.tensors[k], e.tensor_name(k), part.data());
        if (!s.ok()) return w->fail(annotate(s, ctx));
        whole.insert(whole.end(), part.begin(), part.end());
      }
      auto appended = w->append(whole.data(), whole.size());
      if (!appended.ok()) return appended.status();
      entry[kCheckpointKindNames[k]] = std::move(*appended);
    }
    tensors.push_back(std::move(entry));
  }
  meta["params"] = std::move(tensors);
  return w->finish(meta);
}

}  // namespace strata::engine
