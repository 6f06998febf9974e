// The checkpoint format, and its one reader (resume, `strata sample`,
// `strata ckpt info/export` all read checkpoints through it).
//
// A checkpoint is a directory DIR holding meta.json and tensors.bin. meta.json
// says "format": "strata-checkpoint" (the marker: a directory whose meta.json
// says so is one strata wrote, and only such a directory is ever replaced by
// a save), the format version, the compute dtype, the counters a resume
// restores, the optimizer and ZeRO stage of the run, and a table of
// parameters in model order, each with four tensors (fp32 master, exp_avg,
// exp_avg_sq, then the compute-dtype param), each an {offset, bytes, xxh3}
// extent of tensors.bin. A save interrupted between its renames leaves DIR.old
// only; the reader then reads that.
//
// read_checkpoint reads meta.json with the depth-limited strict JSON parser
// and typed reads, and checks every value before anyone uses it: types,
// ranges, byte counts against numel and dtype, every extent against the
// actual size of tensors.bin, the largest tensor against this machine's
// memory. A wrong type, a missing key or a value out of range is DataLoss
// naming the file and the key path; nothing throws. tensors.bin must be a
// regular file (a FIFO is refused, never waited on).
//
// Memory: read_checkpoint holds the table only; verify_checkpoint_tensors
// streams through a buffer of at most `chunk_bytes`; read_checkpoint_tensor
// fills a caller's buffer of one tensor.
//
// Threading: a Checkpoint is immutable; reads use pread and may run on any
// thread.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "core/dtype.h"
#include "nlohmann/json.hpp"

namespace strata::dist {
class Communicator;
}  // namespace strata::dist

namespace strata::engine {

inline constexpr int kCheckpointFormatVersion = 1;
inline constexpr char kCheckpointFormat[] = "strata-checkpoint";
inline constexpr char kCheckpointMetaFile[] = "meta.json";
inline constexpr char kCheckpointTensorFile[] = "tensors.bin";

// The four tensors of a parameter, in tensors.bin order.
inline constexpr int kCheckpointKinds = 4;
inline constexpr int kCheckpointCompute = 3;
inline constexpr std::array<const char*, kCheckpointKinds> kCheckpointKindNames = {
    "master", "exp_avg", "exp_avg_sq", "compute"};

// The largest counter meta.json may hold (2^53: exact in a double, and far
// beyond any real run).
inline constexpr int64_t kMaxCheckpointCounter = int64_t{1} << 53;

struct CheckpointTensor {
  uint64_t offset = 0;
  uint64_t bytes = 0;
  uint64_t xxh3 = 0;
};

struct CheckpointParam {
  int layer = 0;
  int param = 0;
  std::string name;  // the model's name, e.g. "ln_1.w"
  uint64_t numel = 0;
  std::array<CheckpointTensor, kCheckpointKinds> tensors;
  // "layer{l}.{name}.{kind}", as the engine's store names the tensor.
  std::string tensor_name(int kind) const;
};

struct CheckpointLossScaler {
  double scale = 0;
  int hysteresis = 0;
  int64_t iteration = 0;
  int64_t last_overflow_iteration = 0;
  int64_t skipped = 0;
};

class CheckpointFile;  // the open tensors.bin

struct Checkpoint {
  std::string dir;  // DIR, or DIR.old
  std::string meta_path;
  std::string tensor_path;
  uint64_t tensor_file_bytes = 0;
  DType compute_dtype = DType::kFloat32;
  std::string optimizer;          // "" when not recorded (older checkpoints)
  std::optional<int> zero_stage;  // nullopt when not recorded
  int64_t steps = 0;
  int64_t optimizer_steps = 0;
  int64_t micro_batches = 0;
  int64_t lr_schedule_iteration = -1;
  std::optional<CheckpointLossScaler> loss_scaler;
  std::vector<CheckpointParam> params;
  nlohmann::json user;  // "user": null when the run recorded nothing
  std::shared_ptr<const CheckpointFile> file;

  uint64_t total_numel() const;
  uint64_t largest_tensor_bytes() const;
};

// Reads and checks DIR (or DIR.old when DIR is missing): NotFound naming the
// directory; FailedPrecondition for another format version; DataLoss for a
// damaged or foreign meta.json (naming the key) or a tensors.bin too short
// for the table; InvalidArgument when tensors.bin is not a regular file.
absl::StatusOr<Checkpoint> read_checkpoint(const std::string& dir);

// Reads one tensor's bytes into `dst` (t.bytes of room) and checks its xxh3:
// DataLoss "checksum mismatch for tensor NAME in PATH ...".
absl::Status read_checkpoint_tensor(const Checkpoint& ck, const CheckpointTensor& t,
                                    const std::string& name, void* dst);

// Checks every tensor's xxh3 in one pass over tensors.bin through one buffer
// of at most `chunk_bytes`; the first mismatch is DataLoss naming the tensor.
// *peak_buffer_bytes (optional) gets the buffer's size.
absl::Status verify_checkpoint_tensors(const Checkpoint& ck, uint64_t chunk_bytes,
                                       uint64_t* peak_buffer_bytes = nullptr);

// Whether meta.json in `dir` carries the strata checkpoint marker (a regular
// file, parsed by the strict reader; anything unreadable is "no").
bool has_checkpoint_marker(const std::string& dir);

// Whether `dir` holds a data-parallel checkpoint (OffloadOptimizer's
// save_state across ranks): DIR/zero.json, a regular file whose "format" is
// "strata-zero-checkpoint", beside one shard directory per rank, DIR/rank<r>,
// each a checkpoint in the format above holding that rank's slices.
bool is_sharded_checkpoint(const std::string& dir);
// The shard directory of `rank` in such a checkpoint.
std::string checkpoint_shard_dir(const std::string& dir, int rank);

// A checkpoint as the shards it is stored in: the one reader of
// data-parallel checkpoints (a load at any world size, `strata ckpt
// info/export` and `strata sample` read them through it).
struct CheckpointShards {
  std::string dir;       // DIR as given (trailing slashes removed)
  bool sharded = false;  // DIR/zero.json; false: a one-rank checkpoint
  // Rank order; a one-rank checkpoint is the one shard of world size 1.
  std::vector<Checkpoint> shards;
  // The whole model's table: rank 0's shard (counters, loss scaler, user
  // metadata) with each param's whole numel, dir DIR (or DIR.old for a
  // one-rank checkpoint). Its extents are rank 0's: read tensors through
  // read_checkpoint_range.
  Checkpoint whole;

  int world_size() const { return static_cast<int>(shards.size()); }
  uint64_t tensor_file_bytes() const;  // all shards' tensors.bin together
};

// Opens DIR: a data-parallel checkpoint (zero.json read strictly: format,
// format_version, the partition rule, world_size from 1 to 2^20; then every
// shard DIR/rank<r> with read_checkpoint) or a one-rank checkpoint. Every
// shard must hold its rank's slice (zero_partition.h) of the same params at
// the same step, with the same dtype, optimizer, ZeRO stage and loss-scaler
// presence as rank 0's: DataLoss naming the shard and what differs ("the
// save did not finish" / "damaged") otherwise; a missing shard is NotFound
// naming it; FailedPrecondition for another zero.json format_version.
// Reads meta.json files only (no tensor bytes).
absl::StatusOr<CheckpointShards> open_checkpoint_shards(const std::string& dir);

// Elements [lo, hi) of param `index`'s tensor `kind` (element numbers of
// the whole param) into `dst`: (hi - lo) floats, or compute-dtype elements
// for kCheckpointCompute. Reads each slice that overlaps the range whole
// and checks its xxh3 (DataLoss naming the tensor); a slice the range
// covers exactly goes straight to dst, others through `scratch` (one slice;
// optional, reused across calls so a caller can bound its memory).
// InvalidArgument for an index, kind or range outside the table.
absl::Status read_checkpoint_range(const CheckpointShards& c, size_t index, int kind, uint64_t lo,
                                   uint64_t hi, void* dst, std::vector<uint8_t>* scratch = nullptr);

// Writes a data-parallel checkpoint into DIR across the ranks of `comm`:
// every rank's `write_shard(DIR/rank<r>)` writes its shard (a checkpoint in
// the format above of its slices), and rank 0 publishes DIR/zero.json last
// (removed first, so a save that fails half way leaves no checkpoint that
// mixes two steps; shards of an earlier save with more ranks go). `ready`
// is this rank's verdict before anything is written. The ranks agree after
// each phase: all go on or all return an error (a rank that failed its
// own, the others Aborted saying another rank failed). Collective.
absl::Status save_checkpoint_shards(
    dist::Communicator* comm, const std::string& dir, int64_t steps, absl::Status ready,
    const std::function<absl::Status(const std::string& shard_dir)>& write_shard);

std::string xxh3_hex(uint64_t v);

}  // namespace strata::engine
