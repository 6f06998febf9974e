// Private to engine/: what the one-rank checkpoint code (checkpoint.cc) and
// the data-parallel one (checkpoint_shards.cc) share: the writer of one
// checkpoint directory, the checks a resume makes against the run, fsync.
// The contract is in checkpoint_format.h, checkpoint_dir.h and
// offload_optimizer.h.
#pragma once

#include <fcntl.h>
#include <unistd.h>
#include <xxhash.h>

#include <filesystem>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "core/config/ds_config.h"
#include "core/file_util.h"
#include "core/scratch_lock.h"
#include "core/status.h"
#include "engine/checkpoint_dir.h"
#include "engine/checkpoint_format.h"
#include "nlohmann/json.hpp"

namespace strata::engine::checkpoint_internal {

namespace fs = std::filesystem;
using nlohmann::json;

// The verify pass reads tensors.bin through a buffer of at most this.
inline constexpr uint64_t kVerifyChunkBytes = uint64_t{4} << 20;

absl::Status fsync_path(const std::string& path);

// What a resume needs to match, saved vs now; each mismatch names both.
absl::Status check_same_run(const Checkpoint& ck, const config::DsConfig& config, DType dtype,
                            bool has_scaler, bool weights_only);

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

}  // namespace strata::engine::checkpoint_internal
