// io_engine_options: the swap engine's options for a training run, built
// from the ds_config "aio" section and the NVMe directories of the run.
//
// What: block_size, queue_depth, intra_op_parallelism (thread_count),
// single_submit and overlap_events are copied from aio; `dirs` (the
// nvme_path list, one entry per drive or directory) become
// IoEngineOptions::paths, so the io_uring engine runs one ring of
// queue_depth requests per directory and a file striped over them keeps
// every drive busy at once. The result is validated (swap/io_options.h).
//
// Errors: InvalidArgument naming the aio key out of range, or "no NVMe
// directory" when dirs is empty. Pure function, thread-safe.
//
//   STRATA_ASSIGN_OR_RETURN(swap::IoEngineOptions io,
//                           swap::io_engine_options(config.aio, dirs));
//   STRATA_ASSIGN_OR_RETURN(auto engine, swap::make_io_engine(io));
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/config/ds_config.h"
#include "swap/io_options.h"

namespace strata::swap {

absl::StatusOr<IoEngineOptions> io_engine_options(const config::AioConfig& aio,
                                                  const std::vector<std::string>& dirs);

// The tiered store's NVMe pipeline from offload_optimizer.pipeline_read /
// pipeline_write: each half is on unless the config turns it off (false);
// DeepSpeed's default (unset) leaves strata's pipeline on.
struct NvmePipeline {
  bool read_ahead = true;    // offload::TieredStore::Options::read_ahead
  bool write_behind = true;  // offload::TieredStore::Options::write_behind
};
NvmePipeline nvme_pipeline(const config::OffloadOptimizerConfig& offload);

}  // namespace strata::swap
