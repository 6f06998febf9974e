// OffloadOptimizer's checkpoints across data-parallel ranks (save_shards,
// load_shards) and merge_checkpoint_shards; the one-rank code is in
// checkpoint.cc, the contract in offload_optimizer.h and checkpoint_format.h.
#include <algorithm>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/file_util.h"
#include "core/status.h"
#include "dist/communicator.h"
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
using offload::Tier;

// Data-parallel checkpoints. DIR holds zero.json (rank 0 writes it last:
// the format, the world size, the partition rule, the shard directories)
// and one shard per rank, DIR/rank<r>: a checkpoint in checkpoint_format.h's format
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
