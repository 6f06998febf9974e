#include "engine/checkpoint_dir.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/file_util.h"
#include "core/log.h"
#include "core/status.h"
#include "engine/checkpoint_format.h"

namespace strata::engine {
namespace {

namespace fs = std::filesystem;

enum class Found { kMissing, kEmptyDir, kCheckpoint, kOther };

// What a save that replaces `path` would find there; *what describes kOther.
Found classify(const std::string& path, std::string* what) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return Found::kMissing;
    *what = absl::StrCat("not inspectable (", std::strerror(errno), ")");
    return Found::kOther;
  }
  if (S_ISLNK(st.st_mode)) {
    *what = "a symbolic link";
    return Found::kOther;
  }
  if (!S_ISDIR(st.st_mode)) {
    *what = S_ISREG(st.st_mode) ? "a regular file" : "not a directory (a FIFO, socket or device)";
    return Found::kOther;
  }
  auto names = list_directory(path);
  if (!names.ok()) {
    *what = absl::StrCat("a directory strata cannot list (", names.status().message(), ")");
    return Found::kOther;
  }
  // A data-parallel checkpoint (its shards each replaced by their own save).
  if (is_sharded_checkpoint(path)) return Found::kCheckpoint;
  const size_t entries = names->size();
  for (const std::string& name : *names) {
    struct stat est;
    const bool regular =
        ::lstat((fs::path(path) / name).c_str(), &est) == 0 && S_ISREG(est.st_mode);
    if (!regular || (name != kCheckpointMetaFile && name != kCheckpointTensorFile)) {
      *what = absl::StrCat("a directory holding ", name, ", which strata did not write there");
      return Found::kOther;
    }
  }
  if (entries == 0) return Found::kEmptyDir;
  if (!has_checkpoint_marker(path)) {
    *what =
        absl::StrCat("a directory whose ", kCheckpointMetaFile,
                     " is not a strata checkpoint's (no \"format\": \"", kCheckpointFormat, "\")");
    return Found::kOther;
  }
  return Found::kCheckpoint;
}

absl::Status refuse(const std::string& path, const std::string& dir, const std::string& what) {
  return absl::FailedPreconditionError(absl::StrCat(
      "checkpoint directory ", dir, ": ", path, " is ", what,
      "; a save replaces only a checkpoint strata wrote, so it would be lost: choose a new path "
      "for the checkpoint or move ",
      path, " away"));
}

absl::Status check_writable_dir(const std::string& path, const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(path, ec)) {
    return absl::FailedPreconditionError(absl::StrCat("checkpoint directory ", dir, ": ", path,
                                                      " is not a directory; choose another path"));
  }
  if (::access(path.c_str(), W_OK | X_OK) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("checkpoint directory ", dir, ": cannot create files in ", path, " (",
                     std::strerror(errno), "); choose a writable place or fix its permissions"));
  }
  return absl::OkStatus();
}

// DIR.tmp-<digits> beside `dir`.
bool is_temp_name(const std::string& path, const std::string& dir) {
  const std::string name = fs::path(path).filename().string();
  const std::string prefix = fs::path(dir).filename().string() + ".tmp-";
  if (!absl::StartsWith(name, prefix) || name.size() == prefix.size()) return false;
  for (size_t i = prefix.size(); i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return false;
  }
  return true;
}

}  // namespace

bool is_checkpoint_temp_dir(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) return false;
  auto names = list_directory(path);
  if (!names.ok()) return false;
  for (const std::string& name : *names) {
    struct stat est;
    if (::lstat((fs::path(path) / name).c_str(), &est) != 0 || !S_ISREG(est.st_mode)) return false;
    // meta.json.tmp: what earlier strata versions named the temporary.
    if (name != kCheckpointMetaFile && name != kCheckpointTensorFile &&
        !absl::StartsWith(name, absl::StrCat(kCheckpointMetaFile, ".tmp"))) {
      return false;
    }
  }
  return true;
}

absl::Status check_checkpoint_destination(const std::string& dir_in) {
  const std::string dir = strip_trailing_slashes(dir_in);
  if (dir.empty()) return absl::InvalidArgumentError("the checkpoint directory name is empty");
  for (const std::string& path : {dir, dir + ".old"}) {
    std::string what;
    switch (classify(path, &what)) {
      case Found::kOther:
        return refuse(path, dir, what);
      case Found::kMissing:
      case Found::kEmptyDir:
      case Found::kCheckpoint:
        break;
    }
  }
  // The save creates DIR.tmp-<pid> and renames in DIR's parent; a missing
  // parent is created, so the nearest existing ancestor must take files.
  fs::path ancestor = fs::path(parent_dir(dir));
  std::error_code ec;
  while (!fs::exists(ancestor, ec) && ancestor.has_parent_path() &&
         ancestor.parent_path() != ancestor) {
    ancestor = ancestor.parent_path();
  }
  STRATA_RETURN_IF_ERROR(check_writable_dir(ancestor.empty() ? "." : ancestor.string(), dir));

  const std::string own_temp = absl::StrCat(dir, ".tmp-", ::getpid());
  if (fs::exists(fs::symlink_status(own_temp, ec)) && !is_checkpoint_temp_dir(own_temp)) {
    return refuse(own_temp, dir, "not a save's temporary directory");
  }
  // A live save to the same DIR (another run): its temporary is locked.
  auto names = list_directory(parent_dir(dir));
  for (const std::string& name : names.ok() ? *names : std::vector<std::string>()) {
    const std::string path = (fs::path(parent_dir(dir)) / name).string();
    if (name == fs::path(own_temp).filename().string() || !is_temp_name(path, dir) ||
        !is_checkpoint_temp_dir(path))
      continue;
    if (!ScratchLock::lock(path).ok()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "checkpoint directory ", dir, ": another strata run is saving to it now (", path,
          " is locked); two runs must not share a checkpoint directory: choose another one"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<RemovedScratch>> remove_dead_checkpoint_temps(
    const std::string& dir_in) {
  const std::string dir = strip_trailing_slashes(dir_in);
  STRATA_ASSIGN_OR_RETURN(std::vector<RemovedScratch> removed,
                          remove_unowned_scratch(parent_dir(dir), [&](const std::string& path) {
                            return is_temp_name(path, dir) && is_checkpoint_temp_dir(path);
                          }));
  for (const RemovedScratch& r : removed) {
    log::get("engine")->warn("removed {} ({} bytes), left by an interrupted checkpoint save",
                             r.path, r.bytes);
  }
  return removed;
}

}  // namespace strata::engine
