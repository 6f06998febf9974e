#include "swap/io_options.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace strata::swap {

std::string_view io_engine_kind_name(IoEngineKind kind) {
  switch (kind) {
    case IoEngineKind::kAuto:
      return "auto";
    case IoEngineKind::kUring:
      return "uring";
    case IoEngineKind::kThreads:
      return "threads";
  }
  return "?";
}

absl::StatusOr<IoEngineKind> parse_io_engine_kind(std::string_view name) {
  if (name == "auto") return IoEngineKind::kAuto;
  if (name == "uring" || name == "io_uring") return IoEngineKind::kUring;
  if (name == "threads" || name == "thread") return IoEngineKind::kThreads;
  return absl::InvalidArgumentError(absl::StrCat("unknown I/O engine '", std::string(name),
                                                 "' (expected auto, uring or threads)"));
}

absl::Status validate(const IoEngineOptions& o) {
  if (o.block_size < 4096 || o.block_size > (size_t{256} << 20) || o.block_size % 4096 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("aio.block_size ", o.block_size,
                     " is invalid: use a multiple of 4096 between 4 KiB and 256 MiB"));
  }
  if (o.queue_depth < 1 || o.queue_depth > 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("aio.queue_depth ", o.queue_depth, " is invalid: use 1..4096"));
  }
  if (o.threads < 1 || o.threads > 256) {
    return absl::InvalidArgumentError(
        absl::StrCat("aio.intra_op_parallelism ", o.threads, " is invalid: use 1..256"));
  }
  if (o.watchdog_timeout.count() <= 0) {
    return absl::InvalidArgumentError("watchdog timeout must be positive");
  }
  return absl::OkStatus();
}

std::vector<std::string> split_paths(std::string_view comma_separated) {
  std::vector<std::string> out;
  for (absl::string_view p :
       absl::StrSplit(absl::string_view(comma_separated.data(), comma_separated.size()), ',',
                      absl::SkipWhitespace())) {
    out.emplace_back(p);
  }
  return out;
}

}  // namespace strata::swap
