// Sequential throughput of an IoEngine, the way fio measures it: one file
// (striped over several directories when given), block_size requests,
// queue_depth of them kept in flight, O_DIRECT. Used by `strata bench io`
// and `strata report`.
//
// The file is DIR/strata-bench-io.dat in each directory; it is left in
// place (the caller removes it with remove_bench_files) so fio can run the
// same job on it. A file shorter than `size` is first laid out with an
// untimed write, so timed writes overwrite allocated blocks (as fio's do). CPU time is
// getrusage(RUSAGE_SELF) over the timed pass (includes io_uring kernel workers, which are threads
// of this process). Not thread-safe across calls on the same directories.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "swap/io_options.h"

namespace strata::swap {

struct SequentialIoResult {
  uint64_t bytes = 0;
  double seconds = 0;
  double gb_per_s = 0;  // 1e9 bytes per second
  double iops = 0;
  double cpu_seconds = 0;
  double cpu_s_per_gb = 0;
};

struct SequentialIoReport {
  std::string engine;  // "io_uring" / "threads"
  std::string reason;  // why that engine
  std::vector<std::string> files;
  bool direct = false;
  std::optional<SequentialIoResult> write;
  std::optional<SequentialIoResult> read;
};

// options.paths: the directories; options.block_size / queue_depth / kind /
// use_sqpoll apply. size is rounded down to a multiple of block_size.
absl::StatusOr<SequentialIoReport> run_sequential_io(const IoEngineOptions& options, uint64_t size,
                                                     bool do_write, bool do_read);

std::vector<std::string> bench_files(const IoEngineOptions& options);
void remove_bench_files(const IoEngineOptions& options);

// The write and read rates of `dir` (created if missing) for the schedule
// benchmarks: `bytes` written then read sequentially at queue depth 32
// (buffered I/O where O_DIRECT is refused), the files removed afterwards.
absl::StatusOr<SequentialIoReport> probe_directory(const std::string& dir, uint64_t bytes);

}  // namespace strata::swap
