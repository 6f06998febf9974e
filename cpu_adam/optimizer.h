// Host-side optimizer step for ZeRO-Offload: Adam, AdamW, Adagrad and Lion
// over fp32 master weights and fp32 states, in one fused pass per step.
//
// One pass reads the gradient (fp32, fp16 or bf16), the master param and the
// states, multiplies the gradient by `grad_scale` (1/loss_scale times the
// clipping coefficient, so unscaling and clipping cost no extra pass),
// updates, writes master and states back and, if asked, writes the new param
// as fp16 or bf16 into a separate buffer (bit-equal to core's fp32_to_fp16 /
// fp32_to_bf16 of the new master). The gradient buffer is never written.
//
// Semantics follow torch.optim (Adam, AdamW, Adagrad with lr_decay 0) and
// DeepSpeed's CPU Adam (eps added after sqrt(v)/sqrt(1-beta2^t), optional
// bias correction); Lion follows Chen et al. 2023 with decoupled weight decay:
//   Adam    g += wd*p; m = lerp(m, g, 1-b1); v = b2*v + (1-b2)*g*g;
//           p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
//   AdamW   as Adam, but p *= 1 - lr*wd first and g is not decayed
//   Adagrad g += wd*p; v += g*g; p -= lr * g / (sqrt(v) + eps)   (v: the sum)
//   Lion    p *= 1 - lr*wd; p -= lr*sign(b1*m + (1-b1)*g); m = b2*m + (1-b2)*g
// Hyperparameters are doubles and every per-step coefficient is computed in
// double and rounded to float once, as torch does with Python scalars.
//
// SIMD: the widest ISA the CPU has is picked at run time (AVX-512F, AVX2+FMA
// +F16C, SSE2 on x86-64; NEON on aarch64; scalar otherwise). The library is
// compiled without floating-point contraction, so every ISA gives results
// bit-identical to the scalar reference, and results never depend on the
// thread count or on how the caller splits a buffer into ranges.
//
// Threads: the range is cut into fixed chunks (ExecOptions::chunk elements)
// spread over the arena's threads with a static partition, so the same
// thread touches the same pages on every step; first_touch() places pages
// the same way. Calls on disjoint buffers may run concurrently.
//
// Errors: InvalidArgument naming the bad argument (null buffer, bad dtype,
// beta outside [0,1), step < 1, ...); FailedPrecondition for an ISA the CPU
// lacks. Nothing is written when an error is returned.
//
//   cpu_adam::Hyperparams hp{.kind = cpu_adam::OptimizerKind::kAdamW, .weight_decay = 0.01};
//   cpu_adam::StepArgs args{.lr = 1e-4, .step = t, .grad_scale = 1.0 / (loss_scale * clip)};
//   cpu_adam::Buffers b{.n = n, .param = p, .exp_avg = m, .exp_avg_sq = v,
//                       .grad = g16, .grad_dtype = DType::kFloat16,
//                       .param_out = p16, .out_dtype = DType::kFloat16};
//   STRATA_RETURN_IF_ERROR(cpu_adam::optimizer_step(hp, args, b));
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/dtype.h"
#include "oneapi/tbb/task_arena.h"

namespace strata::cpu_adam {

enum class OptimizerKind : uint8_t { kAdam, kAdamW, kAdagrad, kLion };

std::string_view optimizer_name(OptimizerKind kind);  // "adam", "adamw", "adagrad", "lion"
absl::StatusOr<OptimizerKind> parse_optimizer(std::string_view name);

// Per parameter group; the defaults are torch's AdamW defaults.
struct Hyperparams {
  OptimizerKind kind = OptimizerKind::kAdamW;
  double beta1 = 0.9;  // Lion: 0.9 and beta2 0.99 are the paper's
  double beta2 = 0.999;
  double eps = 1e-8;  // Adam/AdamW/Adagrad
  double weight_decay = 0.0;
  bool bias_correction = true;  // Adam/AdamW only
};

struct StepArgs {
  double lr = 1e-3;         // this step's learning rate (schedules live in the engine)
  int64_t step = 1;         // 1-based index of this step in the group (bias correction)
  double grad_scale = 1.0;  // every gradient is multiplied by this first
};

// Element i of every buffer belongs to parameter i; none may overlap another.
struct Buffers {
  size_t n = 0;
  float* param = nullptr;       // fp32 master, updated in place
  float* exp_avg = nullptr;     // m: Adam, AdamW, Lion (unused by Adagrad)
  float* exp_avg_sq = nullptr;  // v: Adam, AdamW; the squared-gradient sum for Adagrad
  const void* grad = nullptr;
  DType grad_dtype = DType::kFloat32;
  // Optional fp32 accumulator (earlier micro-batches): the gradient of
  // element i is then grad_accum[i] + grad[i] in fp32, the add
  // accumulate_grad makes, so stepping on (accumulator, last micro-batch)
  // gives the bits of accumulating first and stepping on the sum. Never
  // written.
  const float* grad_accum = nullptr;
  // Optional rollback copy taken in the same pass: the values param and the
  // states the kind uses (exp_avg: not Adagrad; exp_avg_sq: not Lion) had
  // before the step, n floats each; all null or those the kind uses set.
  float* save_param = nullptr;
  float* save_exp_avg = nullptr;
  float* save_exp_avg_sq = nullptr;
  void* param_out = nullptr;  // optional copy of the new param, fp16 or bf16
  DType out_dtype = DType::kFloat16;
};

enum class Isa : uint8_t { kAuto, kScalar, kSse2, kAvx2, kAvx512, kNeon };

std::string_view isa_name(Isa isa);  // "auto", "scalar", "sse2", "avx2", "avx512", "neon"
bool isa_available(Isa isa);         // compiled in and supported by this CPU
Isa best_isa();                      // what kAuto runs

struct ExecOptions {
  Isa isa = Isa::kAuto;              // force one ISA (tests, benchmarks)
  tbb::task_arena* arena = nullptr;  // null: the calling thread's arena
  size_t chunk = size_t{64} << 10;   // elements per task; results never depend on it
  // Write param_out with non-temporal stores (AVX2/AVX-512, aligned vectors):
  // saves the read-for-ownership of a buffer that is only read later (by
  // the copy to the GPU) but leaves it out of cache; turn off for buckets
  // reused while cache-hot. Measured on the 2-core dev box, alternating
  // A/B runs: +5% all cores, +10% one thread (--no-stream-copy-out to compare).
  bool stream_copy_out = true;
};

[[nodiscard]] absl::Status optimizer_step(const Hyperparams& hp, const StepArgs& args,
                                          const Buffers& buffers, const ExecOptions& exec = {});

// The bytes one optimizer_step over `buffers` moves through memory: the
// gradient (and accumulator) read, master and states read and written, the
// 16-bit copy written. The figure the engine's GB/s divide.
uint64_t step_bytes(OptimizerKind kind, const Buffers& buffers);

// What the engine needs before clipping and loss scaling. Squares are summed
// in fp32 over blocks of 1024 elements and the block sums in double (a block
// whose fp32 sum overflows is redone in double); the result is identical for
// any thread count and within 1e-6 relative of an exact sum.
struct GradStats {
  double sum_squares = 0;  // of the finite elements
  bool nonfinite = false;  // some element is inf or NaN
};

// grad_accum (optional, n floats): the statistics of grad_accum[i] + grad[i]
// (the gradient Buffers::grad_accum describes), without writing the sum.
absl::StatusOr<GradStats> grad_stats(const void* grad, DType dtype, size_t n,
                                     const ExecOptions& exec = {},
                                     const float* grad_accum = nullptr);

// optimizer_step and grad_stats of the gradient it reads (grad_accum + grad,
// before grad_scale) in one pass over memory: the master, states and copy
// get the bits optimizer_step writes, the statistics are grad_stats' bit for
// bit. The statistics come from the same pass, so they describe a gradient
// the step has already applied: a caller that finds it non-finite or too
// large must undo the step (the engine's speculative step does). Errors as
// optimizer_step.
absl::StatusOr<GradStats> optimizer_step_with_stats(const Hyperparams& hp, const StepArgs& args,
                                                    const Buffers& buffers,
                                                    const ExecOptions& exec = {});

// Gradient accumulation: accum[i] = grad[i] (first) or accum[i] + grad[i],
// in fp32 (a 16-bit grad converts exactly). The grad's dtype is any of
// fp32, fp16, bf16; the buffers must not overlap.
absl::Status accumulate_grad(float* accum, const void* grad, DType dtype, size_t n, bool first,
                             const ExecOptions& exec = {});

// Runs body(begin, end) over [0, n) with the partition optimizer_step uses for
// the same n and exec, so buffers initialised through it are first touched
// by the threads (and NUMA nodes) that will update them.
void first_touch(size_t n, const ExecOptions& exec,
                 const std::function<void(size_t begin, size_t end)>& body);

}  // namespace strata::cpu_adam
