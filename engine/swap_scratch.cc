#include "engine/swap_scratch.h"

#include <unistd.h>

#include <filesystem>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/log.h"
#include "core/status.h"

namespace strata::engine {
namespace {

constexpr char kPrefix[] = "strata_optimizer_";
constexpr char kSuffix[] = ".swp";

bool is_swap_file_name(const std::string& name) {
  if (!absl::StartsWith(name, kPrefix) || !absl::EndsWith(name, kSuffix)) return false;
  const size_t begin = sizeof(kPrefix) - 1, end = name.size() - (sizeof(kSuffix) - 1);
  if (end <= begin) return false;
  // <pid> or <pid>-<n>
  bool dash = false;
  for (size_t i = begin; i < end; ++i) {
    if (name[i] == '-' && !dash && i > begin && i + 1 < end) {
      dash = true;
    } else if (name[i] < '0' || name[i] > '9') {
      return false;
    }
  }
  return true;
}

}  // namespace

absl::StatusOr<ScratchLock> create_swap_file(const std::string& dir, std::string* path) {
  for (int n = 0;; ++n) {
    const std::string id = n == 0 ? absl::StrCat(::getpid()) : absl::StrCat(::getpid(), "-", n);
    *path = (std::filesystem::path(dir) / absl::StrCat(kPrefix, id, kSuffix)).string();
    auto lock = ScratchLock::create_file(*path);
    if (!absl::IsAlreadyExists(lock.status()) || n >= 1000) return lock;
  }
}

absl::StatusOr<std::vector<RemovedScratch>> remove_dead_swap_files(const std::string& dir) {
  STRATA_ASSIGN_OR_RETURN(
      std::vector<RemovedScratch> removed, remove_unowned_scratch(dir, [](const std::string& path) {
        std::error_code ec;
        return std::filesystem::is_regular_file(std::filesystem::symlink_status(path, ec)) &&
               is_swap_file_name(std::filesystem::path(path).filename().string());
      }));
  for (const RemovedScratch& r : removed) {
    log::get("engine")->warn("removed {} ({} bytes), the swap file of a strata run that is gone",
                             r.path, r.bytes);
  }
  return removed;
}

}  // namespace strata::engine
