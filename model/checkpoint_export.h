// A checkpoint's fp32 master weights as a safetensors file (`strata ckpt
// export`), and the GPT-2 model a checkpoint records (`strata ckpt info`).
//
// open_model_checkpoint reads the checkpoint with the engine's one reader
// (engine/checkpoint_format.h) and, when the run recorded a GPT-2 model under
// "user.model", checks that the parameter table is that model's (the first
// difference is DataLoss naming both). A data-parallel checkpoint
// (DIR/zero.json and one shard DIR/rank<r> per rank) is opened with
// engine::open_checkpoint_shards, which checks the shards against each
// other; the table then describes the whole model, and read_master joins
// the slices. export_checkpoint merges them so: the file is the same as a
// one-rank checkpoint's of those weights.
//
// export_checkpoint writes the master weights one tensor at a time (one
// tensor in memory at once): read from tensors.bin, checked against its
// recorded xxh3 (a mismatch fails naming the tensor, and no file is left
// behind), rearranged to the target layout, converted to the dtype. Names: a
// checkpoint that records a GPT-2 model gets Hugging Face GPT-2 names and
// layouts by default (model/gpt2_weights.h); otherwise, or with kStrata,
// strata's "layer{l}.{param}" (GPT-2 tensors keep their 2-D shapes, other
// models' tensors are flat). __metadata__ carries "format": "pt" and the
// run's description under "strata.*" keys. The output must be a new path or
// a regular file that is none of the checkpoint's files
// (core/file_util.h check_output_path, check_output_is_not_input):
// FailedPrecondition naming it otherwise.
//
// Threading: free functions; one export per output path at a time.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/dtype.h"
#include "engine/checkpoint_format.h"
#include "model/gpt2_config.h"
#include "model/gpt2_weights.h"

namespace strata::model {

struct ModelCheckpoint {
  // The whole model's table (files.whole): for a data-parallel checkpoint,
  // rank 0's shard (counters, user metadata) with every param's whole
  // numel; its tensor extents are then rank 0's only (read through
  // read_master).
  engine::Checkpoint ck;
  std::optional<Gpt2Config> gpt2;      // the model the run recorded, if any
  engine::CheckpointShards files;      // the shards (one for a one-rank checkpoint)
  uint64_t tensor_file_bytes() const;  // all shards' tensors.bin together
};

absl::StatusOr<ModelCheckpoint> open_model_checkpoint(const std::string& dir);

// The whole fp32 master of parameter `index` into `out` (ck.params[index].numel
// floats), joined from the shards' slices; each extent's xxh3 checked.
absl::Status read_master(const ModelCheckpoint& c, size_t index, float* out);

struct CheckpointExport {
  std::string to;  // the .safetensors file
  DType dtype = DType::kFloat32;
  std::optional<Gpt2Names> names;  // nullopt: kHf for GPT-2, kStrata otherwise
};

struct CheckpointExportResult {
  std::string checkpoint;  // DIR or DIR.old
  std::string file;
  int64_t steps = 0;
  Gpt2Names names = Gpt2Names::kStrata;
  size_t tensors = 0;
  uint64_t params = 0;
  uint64_t bytes = 0;  // of the file written
};

absl::StatusOr<CheckpointExportResult> export_checkpoint(const std::string& dir,
                                                         const CheckpointExport& options);

}  // namespace strata::model
