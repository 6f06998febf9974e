#include "swap/io_bench.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "swap/aligned_buffer.h"
#include "swap/io_engine.h"

namespace strata::swap {
namespace {

constexpr const char* kBenchFile = "strata-bench-io.dat";
constexpr size_t kMaxBufferBytes = size_t{256} << 20;

double cpu_now() {
  rusage ru;
  ::getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + ru.ru_stime.tv_sec +
         ru.ru_stime.tv_usec * 1e-6;
}

// Keeps queue_depth requests in flight until `size` bytes have moved. Each
// completion submits the next block from its callback (as fio refills on
// every reaped completion), so no request waits behind a slower older one.
class SequentialPass {
 public:
  SequentialPass(IoEngine& engine, FileId file, IoOp op, uint64_t blocks,
                 std::vector<AlignedBuffer>& buffers)
      : engine_(engine), file_(file), op_(op), blocks_(blocks), buffers_(buffers) {}

  absl::Status run() {
    const auto depth = static_cast<uint64_t>(engine_.options().queue_depth);
    for (uint64_t i = 0; i < std::min(depth, blocks_); ++i) submit_next();
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return inflight_ == 0; });
    return failure_;
  }

 private:
  void submit_next() {
    uint64_t block;
    {
      std::lock_guard lock(mu_);
      if (next_ >= blocks_ || !failure_.ok()) return;
      block = next_++;
      ++inflight_;
    }
    const size_t bs = engine_.options().block_size;
    // More slots than buffers: slots share one (contents are irrelevant).
    AlignedBuffer& buf = buffers_[block % buffers_.size()];
    auto t = engine_.submit(
        {op_, file_, block * bs, buf.data(), bs, [this](const absl::Status& s) { done(s); }});
    if (!t.ok()) done(t.status());
  }

  void done(const absl::Status& s) {
    if (s.ok()) submit_next();
    std::lock_guard lock(mu_);
    if (!s.ok() && failure_.ok()) failure_ = s;
    if (--inflight_ == 0) cv_.notify_all();
  }

  IoEngine& engine_;
  const FileId file_;
  const IoOp op_;
  const uint64_t blocks_;
  std::vector<AlignedBuffer>& buffers_;
  std::mutex mu_;
  std::condition_variable cv_;
  uint64_t next_ = 0;
  uint64_t inflight_ = 0;
  absl::Status failure_;
};

absl::StatusOr<SequentialIoResult> pass(IoEngine& engine, FileId file, IoOp op, uint64_t size,
                                        std::vector<AlignedBuffer>& buffers) {
  const size_t bs = engine.options().block_size;
  const uint64_t blocks = size / bs;
  const double cpu0 = cpu_now();
  const auto t0 = std::chrono::steady_clock::now();
  SequentialPass p(engine, file, op, blocks, buffers);
  STRATA_RETURN_IF_ERROR(p.run());
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  SequentialIoResult r;
  r.bytes = blocks * bs;
  r.seconds = secs;
  r.gb_per_s = r.bytes / secs / 1e9;
  r.iops = blocks / secs;
  r.cpu_seconds = cpu_now() - cpu0;
  r.cpu_s_per_gb = r.cpu_seconds / (r.bytes / 1e9);
  return r;
}

}  // namespace

std::vector<std::string> bench_files(const IoEngineOptions& options) {
  return stripe_paths(options, kBenchFile);
}

void remove_bench_files(const IoEngineOptions& options) {
  for (const std::string& p : bench_files(options)) ::unlink(p.c_str());
}

absl::StatusOr<SequentialIoReport> run_sequential_io(const IoEngineOptions& options, uint64_t size,
                                                     bool do_write, bool do_read) {
  if (options.paths.empty()) return absl::InvalidArgumentError("bench io: no --path given");
  if (size < options.block_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "bench io: --size ", size, " is smaller than the block size ", options.block_size));
  }
  size -= size % options.block_size;
  STRATA_ASSIGN_OR_RETURN(std::unique_ptr<IoEngine> engine, make_io_engine(options));
  SequentialIoReport report;
  report.engine = std::string(engine->name());
  report.reason = engine->selection_reason();
  report.files = bench_files(options);
  STRATA_ASSIGN_OR_RETURN(FileId file, engine->open(report.files, {.create = true}));
  report.direct = engine->is_direct(file);

  const size_t slots = std::max<size_t>(
      1, std::min<size_t>(options.queue_depth, kMaxBufferBytes / options.block_size));
  std::vector<AlignedBuffer> buffers;
  for (size_t i = 0; i < slots; ++i) {
    buffers.emplace_back(options.block_size);
    std::memset(buffers.back().data(), static_cast<int>(0x5a + i), buffers.back().size());
    // Best effort: unregistered buffers just take the ordinary path.
    (void)engine->register_buffer(buffers.back().data(), buffers.back().size());
  }
  // Lay the file out first (untimed), so the write pass overwrites allocated
  // blocks as fio's does on an existing file, and the read pass has data.
  STRATA_ASSIGN_OR_RETURN(uint64_t have, engine->size(file));
  if (have < size) {
    STRATA_RETURN_IF_ERROR(pass(*engine, file, IoOp::kWrite, size, buffers).status(),
                           "bench io: laying out the file");
  }
  if (do_write) {
    STRATA_ASSIGN_OR_RETURN(report.write, pass(*engine, file, IoOp::kWrite, size, buffers),
                            "bench io write pass");
  }
  if (do_read) {
    STRATA_ASSIGN_OR_RETURN(report.read, pass(*engine, file, IoOp::kRead, size, buffers),
                            "bench io read pass");
  }
  for (AlignedBuffer& b : buffers) (void)engine->unregister_buffer(b.data());
  STRATA_RETURN_IF_ERROR(engine->close(file));
  return report;
}

absl::StatusOr<SequentialIoReport> probe_directory(const std::string& dir, uint64_t bytes) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec)
    return absl::InvalidArgumentError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  IoEngineOptions io;
  io.paths = {dir};
  io.queue_depth = 32;
  io.allow_buffered = true;
  auto report = run_sequential_io(io, bytes, true, true);
  remove_bench_files(io);
  if (!report.ok())
    return annotate(report.status(), absl::StrCat("probing NVMe throughput in ", dir));
  return report;
}

}  // namespace strata::swap
