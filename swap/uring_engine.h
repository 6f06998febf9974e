// UringEngine: IoEngine on io_uring (liburing). See swap/io_engine.h for the
// API contract; this header documents how it runs.
//
// Rings. One io_uring per path in IoEngineOptions::paths (one when empty), of
// queue_depth entries; member i of a striped file is served by ring
// i % rings, so several drives add up. Files are registered (fixed files,
// IOSQE_FIXED_FILE) in a sparse table; buffers passed to register_buffer()
// are registered in every ring (io_uring_register_buffers_update_tag) and
// pieces that fall inside one use READ_FIXED / WRITE_FIXED. Either
// registration failing just falls back to the plain opcodes.
//
// Threading. Submitting threads take the ring's submission mutex, queue their
// pieces and fill SQEs while fewer than queue_depth are in the kernel, then
// call io_uring_submit once per batch (once per piece with single_submit).
// One reaper thread per ring waits for CQEs, resubmits short transfers and
// -EAGAIN / -EINTR, refills the ring from the queue, and reports finished
// pieces (callbacks run on it). The submission side and the completion side
// of a ring are used by different threads, which liburing allows.
// With use_sqpoll the kernel polls the SQ (IORING_SETUP_SQPOLL).
//
// Shutdown: queued pieces fail with Cancelled, pieces in the kernel complete,
// then a NOP with a stop tag ends each reaper and the rings are freed.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "swap/io_engine.h"

namespace strata::swap {

// Builds the io_uring engine; the error keeps the errno of
// io_uring_queue_init (ENOSYS, EPERM, ...) in its message and code.
absl::StatusOr<std::unique_ptr<IoEngine>> make_uring_engine(const IoEngineOptions& options);

}  // namespace strata::swap
