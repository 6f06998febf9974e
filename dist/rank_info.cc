#include <cstdlib>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/parse.h"
#include "core/status.h"
#include "dist/communicator.h"

namespace strata::dist {
namespace {

const char* env(const char* name) {
  const char* v = std::getenv(name);
  return (v != nullptr && *v != '\0') ? v : nullptr;
}

absl::StatusOr<int> int_var(const char* name, int min, int max) {
  STRATA_ASSIGN_OR_RETURN(
      int64_t v, parse_int(env(name), absl::StrCat("environment variable ", name), min, max));
  return static_cast<int>(v);
}

}  // namespace

absl::StatusOr<RankInfo> rank_info_from_env() {
  RankInfo info;
  const bool has_rank = env("RANK") != nullptr;
  const bool has_world = env("WORLD_SIZE") != nullptr;
  if (has_rank != has_world) {
    return absl::InvalidArgumentError(
        absl::StrCat("environment variable ", has_rank ? "WORLD_SIZE" : "RANK", " is not set but ",
                     has_rank ? "RANK" : "WORLD_SIZE",
                     " is; a launcher (torchrun, strata train --nproc) sets both"));
  }
  if (has_world) {
    STRATA_ASSIGN_OR_RETURN(info.world_size, int_var("WORLD_SIZE", 1, 1 << 20));
    STRATA_ASSIGN_OR_RETURN(info.rank, int_var("RANK", 0, 1 << 20));
    if (info.rank >= info.world_size) {
      return absl::InvalidArgumentError(absl::StrCat("environment variable RANK=", info.rank,
                                                     " is not below WORLD_SIZE=", info.world_size));
    }
  }
  // Without LOCAL_* the job is taken to be on one node.
  info.local_rank = info.rank;
  info.local_world_size = info.world_size;
  if (env("LOCAL_WORLD_SIZE") != nullptr) {
    STRATA_ASSIGN_OR_RETURN(info.local_world_size, int_var("LOCAL_WORLD_SIZE", 1, info.world_size));
  }
  if (env("LOCAL_RANK") != nullptr) {
    STRATA_ASSIGN_OR_RETURN(info.local_rank, int_var("LOCAL_RANK", 0, 1 << 20));
  } else if (env("LOCAL_WORLD_SIZE") != nullptr) {
    info.local_rank = info.rank % info.local_world_size;
  }
  if (info.local_rank >= info.local_world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("environment variable LOCAL_RANK=", info.local_rank, " is not below ",
                     env("LOCAL_WORLD_SIZE") != nullptr ? "LOCAL_WORLD_SIZE=" : "the world size ",
                     info.local_world_size));
  }
  if (const char* addr = env("MASTER_ADDR")) info.master_addr = addr;
  if (env("MASTER_PORT") != nullptr) {
    STRATA_ASSIGN_OR_RETURN(info.master_port, int_var("MASTER_PORT", 1, 65535));
  }
  return info;
}

}  // namespace strata::dist
