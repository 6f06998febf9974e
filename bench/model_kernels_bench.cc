// Google Benchmark cases for the model/cpu kernels that dominate a GPT-2 step:
// the dense layers (OpenBLAS sgemm) and blocked causal attention, forward and
// backward, at gpt2-tiny shapes (B=4, T=256, C=128, NH=4; attention also at
// T=1024).
//
// GFLOP/s counts model FLOPs: a dense layer is 2*N*C*OC forward and twice that
// backward (dinp and dweight); causal attention is 2*B*T^2*C forward (QK^T and
// PV over the lower triangle) and 4*B*T^2*C backward (dV, dP, dQ, dK; the
// recomputed scores are not counted, as FlashAttention reports). Rates use
// wall time: the work runs on OpenBLAS and oneTBB worker threads.
#include <benchmark/benchmark.h>

#include <random>
#include <string>
#include <vector>

#include "model/cpu/attention.h"
#include "model/cpu/matmul.h"

namespace strata::model::cpu {
namespace {

constexpr int64_t kB = 4, kT = 256, kC = 128, kNH = 4;

std::vector<float> random_floats(size_t n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(gen);
  return v;
}

void set_gflops(benchmark::State& state, double flops_per_iteration) {
  state.counters["GFLOP/s"] =
      benchmark::Counter(flops_per_iteration / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

// Args: {C, OC}; N = B*T rows.
void bm_matmul_forward(benchmark::State& state) {
  const int64_t n = kB * kT, c = state.range(0), oc = state.range(1);
  auto inp = random_floats(n * c, 1), w = random_floats(oc * c, 2), bias = random_floats(oc, 3);
  std::vector<float> out(n * oc);
  for (auto _ : state) {
    matmul_forward(out.data(), inp.data(), w.data(), bias.data(), n, c, oc);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  set_gflops(state, 2.0 * n * c * oc);
}

void bm_matmul_backward(benchmark::State& state) {
  const int64_t n = kB * kT, c = state.range(0), oc = state.range(1);
  auto inp = random_floats(n * c, 1), w = random_floats(oc * c, 2), dout = random_floats(n * oc, 3);
  std::vector<float> dinp(n * c, 0.0f), dw(oc * c, 0.0f), db(oc, 0.0f);
  for (auto _ : state) {
    matmul_backward(dinp.data(), dw.data(), db.data(), dout.data(), inp.data(), w.data(), n, c, oc);
    benchmark::DoNotOptimize(dinp.data());
    benchmark::DoNotOptimize(dw.data());
    benchmark::ClobberMemory();
  }
  set_gflops(state, 4.0 * n * c * oc);
}

// The four dense layers of a block: qkv, attention projection, fc, fc projection.
void matmul_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"C", "OC"});
  b->Args({kC, 3 * kC})->Args({kC, kC})->Args({kC, 4 * kC})->Args({4 * kC, kC});
}
BENCHMARK(bm_matmul_forward)->Apply(matmul_args)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(bm_matmul_backward)->Apply(matmul_args)->Unit(benchmark::kMicrosecond)->UseRealTime();

// Arg: T.
void bm_attention_forward(benchmark::State& state) {
  const int64_t t = state.range(0);
  auto qkv = random_floats(kB * t * 3 * kC, 4);
  std::vector<float> out(kB * t * kC), lse(kB * kNH * t);
  for (auto _ : state) {
    attention_forward(out.data(), lse.data(), qkv.data(), kB, t, kC, kNH);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  set_gflops(state, 2.0 * kB * t * t * kC);
}

void bm_attention_backward(benchmark::State& state) {
  const int64_t t = state.range(0);
  auto qkv = random_floats(kB * t * 3 * kC, 4), dout = random_floats(kB * t * kC, 5);
  std::vector<float> out(kB * t * kC), lse(kB * kNH * t), dqkv(qkv.size(), 0.0f);
  attention_forward(out.data(), lse.data(), qkv.data(), kB, t, kC, kNH);
  for (auto _ : state) {
    attention_backward(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), kB, t, kC,
                       kNH);
    benchmark::DoNotOptimize(dqkv.data());
    benchmark::ClobberMemory();
  }
  set_gflops(state, 4.0 * kB * t * t * kC);
}

BENCHMARK(bm_attention_forward)
    ->ArgName("T")
    ->Arg(kT)
    ->Arg(1024)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(bm_attention_backward)
    ->ArgName("T")
    ->Arg(kT)
    ->Arg(1024)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
}  // namespace strata::model::cpu

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::AddCustomContext("blas_threads", std::to_string(strata::model::cpu::blas_threads()));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
