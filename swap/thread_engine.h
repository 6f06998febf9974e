// ThreadPoolEngine: IoEngine on pread/pwrite, for hosts without io_uring
// (old kernels, seccomp sandboxes, io_uring_disabled). Same contract as
// swap/io_engine.h.
//
// Threading: a pool of max(threads, min(queue_depth, 16)) workers takes
// pieces from one FIFO; each worker loops on pread/pwrite until its piece is
// done (short transfers continue, EINTR / EAGAIN retry) and reports it, so
// callbacks run on workers. shutdown() fails queued pieces with Cancelled,
// lets running ones finish and joins the workers.
#pragma once

#include <memory>

#include "swap/io_engine.h"

namespace strata::swap {

std::unique_ptr<IoEngine> make_thread_engine(const IoEngineOptions& options);

}  // namespace strata::swap
