// Array conversion throughput (GB/s of source + destination bytes).
#include <cstdint>
#include <vector>

#include "benchmark/benchmark.h"
#include "core/dtype.h"

namespace strata {
namespace {

void BM_Fp32ToFp16(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  std::vector<float> src(n, 1.2345f);
  std::vector<uint16_t> dst(n);
  for (auto _ : state) {
    convert_fp32_to_fp16(src.data(), dst.data(), n);
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * n * 6));
  state.SetLabel(std::string(dtype_conversion_isa()));
}
BENCHMARK(BM_Fp32ToFp16)->Arg(1 << 12)->Arg(1 << 22);

void BM_Fp16ToFp32(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  std::vector<uint16_t> src(n, 0x3c00);
  std::vector<float> dst(n);
  for (auto _ : state) {
    convert_fp16_to_fp32(src.data(), dst.data(), n);
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * n * 6));
}
BENCHMARK(BM_Fp16ToFp32)->Arg(1 << 12)->Arg(1 << 22);

void BM_Fp32ToBf16(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  std::vector<float> src(n, 1.2345f);
  std::vector<uint16_t> dst(n);
  for (auto _ : state) {
    convert_fp32_to_bf16(src.data(), dst.data(), n);
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * n * 6));
}
BENCHMARK(BM_Fp32ToBf16)->Arg(1 << 12)->Arg(1 << 22);

}  // namespace
}  // namespace strata
