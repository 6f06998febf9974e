// Google Benchmark cases for cpu_adam: one optimizer step and the gradient
// statistics pass, per compiled ISA, optimizer and gradient dtype, over 4Mi
// parameters (112 MiB for AdamW: DRAM, not cache). bytes_per_second counts
// the bytes the kernel moves (28 B/param for AdamW, fp16 grads and copy).
// `strata bench cpu-adam` is the end-to-end figure against the DRAM stream.
#include <benchmark/benchmark.h>

#include <string>
#include <vector>

#include "core/dtype.h"
#include "cpu_adam/optimizer.h"

namespace strata::cpu_adam {
namespace {

constexpr size_t kParams = size_t{4} << 20;

void bm_step(benchmark::State& state, Isa isa, OptimizerKind kind, DType gdt) {
  const size_t n = kParams;
  std::vector<float> p(n, 1.0f), m(n, 0.0f), v(n, 0.0f);
  std::vector<uint16_t> g16(n, fp32_to_fp16(0.01f)), out(n);
  std::vector<float> g32;
  if (gdt == DType::kFloat32) g32.assign(n, 0.01f);
  if (gdt == DType::kBFloat16) g16.assign(n, fp32_to_bf16(0.01f));
  Hyperparams hp;
  hp.kind = kind;
  hp.weight_decay = 0.01;
  Buffers b{.n = n,
            .param = p.data(),
            .exp_avg = m.data(),
            .exp_avg_sq = v.data(),
            .grad = gdt == DType::kFloat32 ? static_cast<const void*>(g32.data()) : g16.data(),
            .grad_dtype = gdt,
            .param_out = out.data(),
            .out_dtype = DType::kFloat16};
  int64_t step = 1;
  for (auto _ : state) {
    absl::Status s = optimizer_step(hp, {1e-4, step++, 1.0 / 1024}, b, {.isa = isa});
    if (!s.ok()) state.SkipWithError(std::string(s.message()).c_str());
    benchmark::DoNotOptimize(p.data());
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  const size_t bytes = dtype_size(gdt) + 8 + (kind != OptimizerKind::kAdagrad ? 8 : 0) +
                       (kind != OptimizerKind::kLion ? 8 : 0) + 2;
  state.SetItemsProcessed(state.iterations() * static_cast<int64_t>(n));
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(n * bytes));
}

void bm_grad_stats(benchmark::State& state, Isa isa, DType gdt) {
  const size_t n = kParams * 4;
  std::vector<uint16_t> g(n * 2, fp32_to_bf16(0.5f));  // big enough for fp32 too
  for (auto _ : state) {
    auto s = grad_stats(g.data(), gdt, n, {.isa = isa});
    benchmark::DoNotOptimize(s);
  }
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(n * dtype_size(gdt)));
}

void register_all() {
  for (Isa isa : {Isa::kAvx512, Isa::kAvx2, Isa::kSse2, Isa::kNeon, Isa::kScalar}) {
    if (!isa_available(isa)) continue;
    const std::string is(isa_name(isa));
    for (OptimizerKind kind : {OptimizerKind::kAdamW, OptimizerKind::kAdam, OptimizerKind::kAdagrad,
                               OptimizerKind::kLion}) {
      for (DType gdt : {DType::kFloat16, DType::kBFloat16, DType::kFloat32}) {
        // The full matrix on the best ISA; AdamW with fp16 grads elsewhere.
        if (isa != best_isa() && (kind != OptimizerKind::kAdamW || gdt != DType::kFloat16))
          continue;
        benchmark::RegisterBenchmark(("step/" + is + "/" + std::string(optimizer_name(kind)) + "/" +
                                      std::string(dtype_name(gdt)))
                                         .c_str(),
                                     bm_step, isa, kind, gdt)
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime();
      }
    }
    for (DType gdt : {DType::kFloat16, DType::kFloat32}) {
      benchmark::RegisterBenchmark(
          ("grad_stats/" + is + "/" + std::string(dtype_name(gdt))).c_str(), bm_grad_stats, isa,
          gdt)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
    }
  }
}

}  // namespace
}  // namespace strata::cpu_adam

int main(int argc, char** argv) {
  strata::cpu_adam::register_all();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
