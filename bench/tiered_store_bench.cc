// Bookkeeping cost of TieredStore acquire/release when the copy is resident
// (the common case once prefetch works); target: under 2 microseconds.
#include <memory>

#include "benchmark/benchmark.h"
#include "gpu/sim_device.h"
#include "offload/tiered_store.h"

namespace strata::offload {
namespace {

void BM_AcquireReleaseResident(benchmark::State& state) {
  const int tensors = static_cast<int>(state.range(0));
  gpu::SimDevice dev;
  auto store = TieredStore::create({.device = &dev,
                                    .device_budget_bytes = uint64_t(tensors) * 4096,
                                    .host_budget_bytes = uint64_t(tensors) * 4096});
  std::vector<TensorId> ids;
  for (int i = 0; i < tensors; ++i) {
    ids.push_back(*(*store)->register_tensor({"t" + std::to_string(i), 1024}));
  }
  (void)(*store)->finalize();
  for (TensorId id : ids) {  // make every device copy resident
    (void)(*store)->acquire(id, Tier::kDevice, Access::kRead);
    (void)(*store)->release(id, Tier::kDevice, false);
  }
  size_t i = 0;
  for (auto _ : state) {
    TensorId id = ids[i++ % ids.size()];
    auto v = (*store)->acquire(id, Tier::kDevice, Access::kRead);
    benchmark::DoNotOptimize(v);
    (void)(*store)->release(id, Tier::kDevice, false);
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
}
BENCHMARK(BM_AcquireReleaseResident)->Arg(64)->Arg(4096);

}  // namespace
}  // namespace strata::offload
