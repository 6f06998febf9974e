#include "swap/io_config.h"

#include <limits>

#include "absl/strings/str_cat.h"

namespace strata::swap {
namespace {

// int64 config values land in int fields: clamp first so an absurd value is
// reported by validate() as out of range instead of wrapping into range.
int to_int(int64_t v) {
  constexpr int64_t kMax = std::numeric_limits<int>::max();
  return static_cast<int>(v < 0 ? -1 : (v > kMax ? kMax : v));
}

}  // namespace

absl::StatusOr<IoEngineOptions> io_engine_options(const config::AioConfig& aio,
                                                  const std::vector<std::string>& dirs) {
  if (dirs.empty()) {
    return absl::InvalidArgumentError(
        "no NVMe directory: set zero_optimization.offload_optimizer.nvme_path (a directory or a "
        "list of them, one per drive)");
  }
  IoEngineOptions o;
  o.block_size = aio.block_size < 0 ? 0 : static_cast<size_t>(aio.block_size);
  o.queue_depth = to_int(aio.queue_depth);
  o.threads = to_int(aio.intra_op_parallelism);
  o.single_submit = aio.single_submit;
  o.overlap_events = aio.overlap_events;
  o.paths = dirs;  // one ring per directory (swap/io_engine.h)
  if (absl::Status s = validate(o); !s.ok()) return s;
  return o;
}

NvmePipeline nvme_pipeline(const config::OffloadOptimizerConfig& offload) {
  return {.read_ahead = offload.pipeline_read.value_or(true),
          .write_behind = offload.pipeline_write.value_or(true)};
}

}  // namespace strata::swap
