// DevicePool against the device allocator it replaces: an alloc/free cycle
// of mixed tensor sizes at a steady occupancy, as the store's evictions and
// loads do. The pool is bookkeeping only (target: well under 1 us per
// cycle); SimDevice's allocate/free with its default costs charges what
// cudaMalloc/cudaFree would (a device-wide drain plus ~50 us each), which
// is what every eviction and load paid before the pool.
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <vector>

#include "benchmark/benchmark.h"
#include "gpu/sim_device.h"
#include "offload/device_pool.h"

namespace strata::offload {
namespace {

// Sizes of one GPT-2 block's fp16 params at width 1600 / 4: biases and
// LayerNorms (hundreds of bytes) beside matrices (hundreds of KiB).
std::vector<uint64_t> tensor_sizes() {
  const uint64_t c = 400;
  return {2 * c, 2 * c, 2 * 3 * c * c, 2 * 3 * c, 2 * c * c,     2 * c,
          2 * c, 2 * c, 2 * 4 * c * c, 2 * 4 * c, 2 * 4 * c * c, 2 * c};
}

// Keeps `live` blocks allocated and replaces a random one per iteration.
template <typename Alloc, typename Free>
void churn(benchmark::State& state, int live, Alloc alloc, Free free) {
  const std::vector<uint64_t> sizes = tensor_sizes();
  std::mt19937 rng(1);
  std::vector<void*> blocks;
  for (int i = 0; i < live; ++i) blocks.push_back(alloc(sizes[i % sizes.size()]));
  for (auto _ : state) {
    const size_t k = rng() % blocks.size();
    free(blocks[k]);
    // (No benchmark::DoNotOptimize here: free and alloc have effects, and
    // this libbenchmark's non-const overload was seen to corrupt the slot.)
    blocks[k] = alloc(sizes[rng() % sizes.size()]);
  }
  for (void* p : blocks) free(p);
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
}

void BM_DevicePoolChurn(benchmark::State& state) {
  gpu::SimDevice dev({.costs = {.enabled = false}});
  // Room for twice the live set, so fragmentation never fails a request.
  auto pool = DevicePool::create(&dev, uint64_t(state.range(0)) * 2 * 2 * 4 * 400 * 400);
  if (!pool.ok()) {
    state.SkipWithError(std::string(pool.status().message()).c_str());
    return;
  }
  churn(
      state, static_cast<int>(state.range(0)),
      [&](uint64_t n) {
        auto p = (*pool)->allocate(n);
        if (!p.ok()) {
          std::fprintf(stderr, "%s\n", std::string(p.status().message()).c_str());
          std::abort();
        }
        return *p;
      },
      [&](void* p) { (*pool)->free(p); });
  state.counters["free_ranges"] = static_cast<double>((*pool)->stats().free_ranges);
}
BENCHMARK(BM_DevicePoolChurn)->Arg(12)->Arg(96)->Arg(1024);

// The allocator it replaces, with the cost model on (its defaults) and off
// (the bookkeeping alone). One idle stream: the drain is cheap here; in a
// step it waits for every transfer and kernel in flight.
void BM_SimDeviceAllocateChurn(benchmark::State& state) {
  gpu::SimDevice dev({.costs = {.enabled = state.range(1) != 0}});
  (void)dev.create_stream();
  churn(
      state, static_cast<int>(state.range(0)), [&](uint64_t n) { return *dev.allocate(n); },
      [&](void* p) { dev.free(p); });
}
BENCHMARK(BM_SimDeviceAllocateChurn)
    ->ArgNames({"live", "costs"})
    ->Args({96, 0})
    ->Args({96, 1})
    ->UseRealTime();

}  // namespace
}  // namespace strata::offload
