// IoEngine micro-benchmarks: sequential O_DIRECT throughput per engine,
// block size and queue depth; swap-file tensor round trips with checksums on
// and off; raw xxh3 speed. Files go to $STRATA_BENCH_IO_DIR (default /tmp).
#include <benchmark/benchmark.h>
#include <xxhash.h>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>

#include "swap/aligned_buffer.h"
#include "swap/io_engine.h"
#include "swap/swap_file.h"

namespace strata::swap {
namespace {

std::string bench_dir() {
  const char* d = std::getenv("STRATA_BENCH_IO_DIR");
  return d != nullptr ? d : "/tmp";
}

constexpr uint64_t kFileBytes = 64 << 20;

// Args: engine (0 uring, 1 threads), block size KiB, queue depth, write?
void BM_Sequential(benchmark::State& state) {
  IoEngineOptions o;
  o.kind = state.range(0) == 0 ? IoEngineKind::kUring : IoEngineKind::kThreads;
  o.block_size = static_cast<size_t>(state.range(1)) << 10;
  o.queue_depth = static_cast<int>(state.range(2));
  const IoOp op = state.range(3) != 0 ? IoOp::kWrite : IoOp::kRead;
  auto engine = make_io_engine(o);
  if (!engine.ok()) {
    state.SkipWithError(std::string(engine.status().message()).c_str());
    return;
  }
  const std::string path = bench_dir() + "/strata-io-bench.dat";
  auto file = (*engine)->open(path, {.create = true});
  if (!file.ok()) {
    state.SkipWithError(std::string(file.status().message()).c_str());
    return;
  }
  AlignedBuffer buf(kFileBytes);
  (void)(*engine)->register_buffer(buf.data(), buf.size());
  if (!(*engine)->write(*file, 0, buf.data(), buf.size()).ok()) {
    state.SkipWithError("laying out the file failed");
    return;
  }
  for (auto _ : state) {
    // One request of the whole file: the engine splits it into block_size
    // pieces and keeps queue_depth of them in flight.
    absl::Status s = op == IoOp::kWrite ? (*engine)->write(*file, 0, buf.data(), buf.size())
                                        : (*engine)->read(*file, 0, buf.data(), buf.size());
    if (!s.ok()) {
      state.SkipWithError(std::string(s.message()).c_str());
      break;
    }
    benchmark::DoNotOptimize(buf.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * kFileBytes));
  (void)(*engine)->unregister_buffer(buf.data());
  (void)(*engine)->close(*file);
  std::filesystem::remove(path);
}
BENCHMARK(BM_Sequential)
    ->ArgNames({"threads_engine", "bs_kib", "qd", "write"})
    ->ArgsProduct({{0, 1}, {128, 1024}, {8, 32}, {0, 1}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// Tensor round trip through the swap file; arg: checksums on (1) / off (0).
void BM_SwapFileRoundTrip(benchmark::State& state) {
  auto engine = make_io_engine({});
  if (!engine.ok()) {
    state.SkipWithError("no engine");
    return;
  }
  const std::string path = bench_dir() + "/strata-swap-bench.swp";
  const uint64_t numel = 8 << 20;  // 32 MiB fp32
  SwapFileOptions opts{.checksums = state.range(0) != 0};
  auto f = SwapFile::create(**engine, {path}, {{"t", DType::kFloat32, numel}}, opts);
  if (!f.ok()) {
    state.SkipWithError(std::string(f.status().message()).c_str());
    return;
  }
  AlignedBuffer buf(numel * 4);
  for (auto _ : state) {
    if (!(*f)->write_tensor("t", buf.data(), buf.size()).ok() ||
        !(*f)->read_tensor("t", buf.data(), buf.size()).ok()) {
      state.SkipWithError("swap file I/O failed");
      break;
    }
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * numel * 4 * 2));
  f->reset();
  std::filesystem::remove(path);
}
BENCHMARK(BM_SwapFileRoundTrip)
    ->ArgName("checksums")
    ->Arg(0)
    ->Arg(1)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

void BM_Xxh3(benchmark::State& state) {
  AlignedBuffer buf(static_cast<size_t>(state.range(0)));
  for (auto _ : state) benchmark::DoNotOptimize(XXH3_64bits(buf.data(), buf.size()));
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * buf.size()));
}
BENCHMARK(BM_Xxh3)->Arg(1 << 20)->Arg(32 << 20);

}  // namespace
}  // namespace strata::swap
