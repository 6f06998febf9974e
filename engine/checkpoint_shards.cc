// OffloadOptimizer's checkpoints across data-parallel ranks (save_shards,
// load_shards) and the one reader of their shards (open_checkpoint_shards,
// read_checkpoint_range); the one-rank code is in checkpoint.cc, the
// contract in offload_optimizer.h and checkpoint_format.h.
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

uint64_t CheckpointShards::tensor_file_bytes() const {
  uint64_t bytes = 0;
  for (const Checkpoint& s : shards) bytes += s.tensor_file_bytes;
  return bytes;
}

absl::StatusOr<CheckpointShards> open_checkpoint_shards(const std::string& dir_in) {
  CheckpointShards c;
  c.dir = strip_trailing_slashes(dir_in);
  c.sharded = is_sharded_checkpoint(c.dir);
  if (!c.sharded) {
    STRATA_ASSIGN_OR_RETURN(Checkpoint ck, read_checkpoint(c.dir));
    c.whole = ck;
    c.shards.push_back(std::move(ck));
    return c;
  }
  const std::string path = (fs::path(c.dir) / kShardMetaFile).string();
  STRATA_ASSIGN_OR_RETURN(const std::string text, read_file(path, uint64_t{1} << 20));
  const json zero = json::parse(text, nullptr, /*allow_exceptions=*/false);
  auto bad = [&](const std::string& why) {
    return absl::DataLossError(absl::StrCat(path, ": ", why, "; the checkpoint is damaged"));
  };
  if (!zero.is_object() || !zero.contains("format") || zero["format"] != kShardFormat) {
    return bad(absl::StrCat("not a ", kShardFormat, " file"));
  }
  const json version = zero.value("format_version", json());
  if (!version.is_number_integer()) return bad("format_version must be an integer");
  if (version.get<int64_t>() != kShardFormatVersion) {
    return absl::FailedPreconditionError(absl::StrCat(path, ": format_version ",
                                                      version.get<int64_t>(), " is not the ",
                                                      kShardFormatVersion, " this strata reads"));
  }
  const json rule = zero.value("partition", json());
  if (!rule.is_string() || rule != kPartitionRule) {
    return bad(absl::StrCat("partition rule ", rule.dump(), ", not \"", kPartitionRule, "\""));
  }
  const json ws = zero.value("world_size", json());
  if (!ws.is_number_integer() || ws.get<int64_t>() < 1 || ws.get<int64_t>() > (1 << 20)) {
    return bad("world_size must be an integer from 1 to 2^20");
  }
  const int world = ws.get<int>();
  for (int r = 0; r < world; ++r) {
    STRATA_ASSIGN_OR_RETURN(Checkpoint ck, read_checkpoint(checkpoint_shard_dir(c.dir, r)));
    c.shards.push_back(std::move(ck));
  }
  // Every shard against rank 0's: the same run at the same step.
  const Checkpoint& first = c.shards[0];
  std::vector<uint64_t> whole(first.params.size(), 0);
  for (const Checkpoint& s : c.shards) {
    if (s.steps != first.steps || s.params.size() != first.params.size() ||
        s.compute_dtype != first.compute_dtype || s.optimizer != first.optimizer ||
        s.zero_stage != first.zero_stage ||
        s.loss_scaler.has_value() != first.loss_scaler.has_value()) {
      return absl::DataLossError(absl::StrCat(
          "shard ", s.dir, " holds step ", s.steps, " and ", s.params.size(), " parameters, shard ",
          first.dir, " step ", first.steps, " and ", first.params.size(),
          " (or their dtype, optimizer, ZeRO stage or loss scaler differ); the save did not "
          "finish: use another checkpoint"));
    }
    for (size_t i = 0; i < whole.size(); ++i) whole[i] += s.params[i].numel;
  }
  for (int r = 0; r < world; ++r) {
    const Checkpoint& s = c.shards[r];
    for (size_t i = 0; i < whole.size(); ++i) {
      const CheckpointParam& p = s.params[i];
      const CheckpointParam& p0 = first.params[i];
      const uint64_t want = partition_slice(whole[i], r, world).numel;
      if (p.layer != p0.layer || p.param != p0.param || p.name != p0.name || p.numel != want) {
        return absl::DataLossError(absl::StrCat(
            "shard ", s.dir, ": parameter ", i, " is layer", p.layer, ".", p.name, " with ",
            p.numel, " elements; rank ", r, " of ", world, " should hold ", want, " of layer",
            p0.layer, ".", p0.name, "'s ", whole[i], "; the checkpoint is damaged"));
      }
    }
  }
  c.whole = first;
  c.whole.dir = c.dir;
  for (size_t i = 0; i < whole.size(); ++i) c.whole.params[i].numel = whole[i];
  return c;
}

absl::Status read_checkpoint_range(const CheckpointShards& c, size_t index, int kind, uint64_t lo,
                                   uint64_t hi, void* dst, std::vector<uint8_t>* scratch) {
  if (index >= c.whole.params.size() || kind < 0 || kind >= kCheckpointKinds || lo > hi ||
      hi > c.whole.params[index].numel) {
    return absl::InvalidArgumentError(absl::StrCat("read_checkpoint_range: parameter ", index,
                                                   " kind ", kind, " elements [", lo, ", ", hi,
                                                   ") are outside ", c.dir, "'s table"));
  }
  const uint64_t numel = c.whole.params[index].numel;
  const uint64_t esize = kind == kCheckpointCompute ? dtype_size(c.whole.compute_dtype) : 4;
  std::vector<uint8_t> own;
  std::vector<uint8_t>& buf = scratch != nullptr ? *scratch : own;
  auto* out = static_cast<uint8_t*>(dst);
  // Rank order is element order (zero_partition.h).
  for (int q = 0; q < c.world_size(); ++q) {
    const ParamSlice old = partition_slice(numel, q, c.world_size());
    const uint64_t from = std::max(lo, old.offset);
    const uint64_t to = std::min(hi, old.offset + old.numel);
    if (from >= to) continue;
    const Checkpoint& ck = c.shards[q];
    const CheckpointParam& e = ck.params[index];
    if (from == old.offset && to == old.offset + old.numel) {
      STRATA_RETURN_IF_ERROR(read_checkpoint_tensor(ck, e.tensors[kind], e.tensor_name(kind),
                                                    out + (from - lo) * esize));
      continue;
    }
    buf.resize(e.tensors[kind].bytes);
    STRATA_RETURN_IF_ERROR(
        read_checkpoint_tensor(ck, e.tensors[kind], e.tensor_name(kind), buf.data()));
    std::memcpy(out + (from - lo) * esize, buf.data() + (from - old.offset) * esize,
                (to - from) * esize);
  }
  return absl::OkStatus();
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

absl::Status save_checkpoint_shards(
    dist::Communicator* comm, const std::string& dir_in, int64_t steps, absl::Status ready,
    const std::function<absl::Status(const std::string& shard_dir)>& write_shard) {
  const std::string dir = strip_trailing_slashes(dir_in);
  const int rank = comm->rank(), world = comm->world_size();
  const std::string ctx =
      absl::StrCat("saving checkpoint ", dir, " (rank ", rank, " of ", world, ")");
  if (ready.ok()) ready = check_shard_destination(dir);
  STRATA_RETURN_IF_ERROR(agree_across_ranks(comm, ready, ctx));
  // zero.json goes first and comes back last.
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
  STRATA_RETURN_IF_ERROR(
      agree_across_ranks(comm, write_shard(checkpoint_shard_dir(dir, rank)), ctx));
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

absl::Status OffloadOptimizer::Impl::save_shards(const std::string& dir, const json& user_meta) {
  absl::Status ready = partly_stepped_status;
  if (ready.ok()) ready = wait_for_save();
  if (ready.ok()) ready = finish_pending_update();
  return save_checkpoint_shards(comm, dir, steps, ready, [&](const std::string& shard_dir) {
    STRATA_ASSIGN_OR_RETURN(std::unique_ptr<CheckpointWriter> w,
                            CheckpointWriter::create(shard_dir));
    auto meta = checkpoint_meta(
        [&](const void* data, uint64_t bytes) { return w->append(data, bytes); }, user_meta);
    if (!meta.ok()) return w->fail(meta.status());
    return w->finish(*meta);
  });
}

absl::Status OffloadOptimizer::Impl::load_shards(const std::string& dir_in, bool weights_only) {
  STRATA_RETURN_IF_ERROR(wait_for_save(), "an earlier asynchronous save");
  STRATA_RETURN_IF_ERROR(finish_pending_update());
  const std::string dir = strip_trailing_slashes(dir_in);
  const std::string ctx = absl::StrCat("loading checkpoint ", dir);
  STRATA_ASSIGN_OR_RETURN(const CheckpointShards cs, open_checkpoint_shards(dir), ctx);
  const Checkpoint& whole = cs.whole;
  STRATA_RETURN_IF_ERROR(check_same_run(whole, config, dtype, scaler != nullptr, weights_only),
                         absl::StrCat(ctx, " (", whole.dir, ")"));
  // The whole table against this model (the reader checked each shard's
  // slices against it).
  size_t idx = 0;
  for (int l = 0; l < static_cast<int>(buckets.size()); ++l) {
    for (int i = 0; i < static_cast<int>(buckets[l].size()); ++i, ++idx) {
      const ParamRec& p = params[buckets[l][i]];
      if (idx >= whole.params.size() || whole.params[idx].layer != l ||
          whole.params[idx].param != i || whole.params[idx].name != p.desc.name ||
          whole.params[idx].numel != p.desc.numel) {
        return absl::FailedPreconditionError(
            absl::StrCat(ctx, ": ", whole.dir, " does not hold layer ", l, " param ", i, " (",
                         p.desc.name, ", ", p.desc.numel, " elements) at entry ", idx,
                         "; load it into the model it was saved from"));
      }
    }
  }
  if (whole.params.size() != idx) {
    return absl::FailedPreconditionError(
        absl::StrCat(ctx, ": ", whole.dir, " has ", whole.params.size(), " parameters, this model ",
                     idx, "; load it into the model it was saved from"));
  }
  last_load = CheckpointLoadStats{};
  for (const Checkpoint& ck : cs.shards) {
    uint64_t peak = 0;
    STRATA_RETURN_IF_ERROR(verify_checkpoint_tensors(ck, kVerifyChunkBytes, &peak), ctx);
    last_load.peak_buffer_bytes = std::max(last_load.peak_buffer_bytes, peak);
    last_load.largest_tensor_bytes =
        std::max(last_load.largest_tensor_bytes, ck.largest_tensor_bytes());
    last_load.tensor_file_bytes += ck.tensor_file_bytes;
  }

  // Per param: this rank's slice of each state from the saved slices it
  // overlaps, the whole compute param from every shard.
  std::vector<uint8_t> buf, mine;
  idx = 0;
  for (const auto& bucket : buckets) {
    for (ParamHandle h : bucket) {
      const ParamRec& p = params[h];
      const offload::TensorId ids[4] = {p.master, p.exp_avg, p.exp_avg_sq, p.param};
      for (int k = 0; k < kCheckpointKinds; ++k) {
        const bool compute = k == kCheckpointCompute;
        const uint64_t esize = compute ? dtype_size(dtype) : 4;
        const bool whole = compute && !p.param_sliced;
        const uint64_t lo = whole ? 0 : p.slice.offset;
        const uint64_t hi = whole ? p.desc.numel : p.slice.offset + p.slice.numel;
        mine.assign((whole     ? p.desc.numel
                     : compute ? p.param_numel()
                               : p.state_numel()) *
                        esize,
                    0);
        STRATA_RETURN_IF_ERROR(
            read_checkpoint_range(cs, idx, k, lo, hi, mine.data(), &buf),
            absl::StrCat(ctx, " (the engine is now partly loaded; do not train on it)"));
        last_load.peak_buffer_bytes =
            std::max<uint64_t>(last_load.peak_buffer_bytes, buf.capacity() + mine.capacity());
        const Tier tier = compute ? param_tier(p) : opt_tier;
        STRATA_RETURN_IF_ERROR(write_raw(ids[k], tier, mine.data(), mine.size()),
                               absl::StrCat(ctx, ", tensor ", store->spec(ids[k]).name));
      }
      ++idx;
    }
  }
  return restore_counters_and_bindings(whole, weights_only, ctx);
}

}  // namespace strata::engine
