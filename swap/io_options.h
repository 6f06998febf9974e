// Tunables of the swap I/O engine, one plain struct (no config-parser
// dependency: core/config maps the ds_config "aio" section and nvme_path onto
// it). Defaults match DeepSpeed's aio defaults.
//
//   IoEngineOptions opts;
//   opts.paths = {"/nvme0/swap", "/nvme1/swap"};  // RAID-0 over two drives
//   opts.queue_depth = 32;
//   auto engine = make_io_engine(opts);
//
// Plain data; copy freely. validate() names the offending field.
#pragma once

#include <chrono>
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace strata::swap {

enum class IoEngineKind {
  kAuto,     // io_uring unless the kernel refuses it
  kUring,    // io_uring or an error
  kThreads,  // pread/pwrite on a thread pool
};

std::string_view io_engine_kind_name(IoEngineKind kind);  // "auto", "uring", "threads"
absl::StatusOr<IoEngineKind> parse_io_engine_kind(std::string_view name);

struct IoEngineOptions {
  // Transfers are split into requests of at most block_size bytes; also the
  // stripe unit when paths holds several directories. aio.block_size.
  size_t block_size = size_t{1} << 20;
  // Requests in flight per ring (per path). aio.queue_depth.
  int queue_depth = 8;
  // aio.intra_op_parallelism (aio.thread_count): worker threads of the
  // fallback engine at least; the io_uring engine uses one reaper per ring.
  int threads = 1;
  // aio.single_submit: one io_uring_submit per request instead of batches.
  bool single_submit = false;
  // aio.overlap_events: keep reaping while submitting (always true for
  // io_uring; recorded for config round trips).
  bool overlap_events = true;
  // Kernel-side submission polling thread (IORING_SETUP_SQPOLL).
  bool use_sqpoll = false;
  // Directories to stripe over (RAID-0, one file and one ring per path).
  // Empty: callers pass whole file paths.
  std::vector<std::string> paths = {};
  // When a filesystem rejects O_DIRECT (tmpfs, some overlays) use buffered
  // I/O with a warning instead of failing.
  bool allow_buffered = false;
  IoEngineKind kind = IoEngineKind::kAuto;
  // Every wait gives up after this long with an error naming the stuck
  // request (file, offset, length).
  std::chrono::milliseconds watchdog_timeout{std::chrono::seconds(120)};
};

// Checks ranges: block_size a multiple of 4096 in [4 KiB, 256 MiB],
// queue_depth in [1, 4096], threads in [1, 256].
absl::Status validate(const IoEngineOptions& options);

// "a,b,c" -> {"a", "b", "c"} (empty items dropped).
std::vector<std::string> split_paths(std::string_view comma_separated);

}  // namespace strata::swap
