#include "cpu_adam/optimizer.h"

#include <cmath>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cpu_adam/kernel.h"
#include "oneapi/tbb/blocked_range.h"
#include "oneapi/tbb/parallel_for.h"
#include "oneapi/tbb/partitioner.h"

namespace strata::cpu_adam {
namespace {

using detail::Coeffs;
using detail::ScalarArch;

// Calls f(arch_tag) for `isa`, kAuto meaning best_isa(). Not xsimd::dispatch:
// xsimd 8.1 picks from CPUID alone, without checking that the OS saves the
// AVX/AVX-512 registers (XCR0) or that F16C is there, so it could pick an
// arch that faults; __builtin_cpu_supports checks both.
template <class F>
auto with_isa(Isa isa, F&& f) {
  if (isa == Isa::kAuto) isa = best_isa();
  switch (isa) {
#if defined(__x86_64__)
    case Isa::kAvx512:
      return f(xsimd::avx512f{});
    case Isa::kAvx2:
      return f(xsimd::fma3<xsimd::avx2>{});
    case Isa::kSse2:
      return f(xsimd::sse2{});
#elif defined(__aarch64__)
    case Isa::kNeon:
      return f(xsimd::neon64{});
#endif
    default:
      return f(ScalarArch{});
  }
}

absl::Status check_isa(Isa isa) {
  if (isa_available(isa)) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      "cpu_adam: ISA ", std::string(isa_name(isa)), " is not available on this CPU or build; ",
      "use auto (best here: ", std::string(isa_name(best_isa())), ")"));
}

bool in_unit(double x) { return x >= 0.0 && x < 1.0; }

absl::Status check_step(const Hyperparams& hp, const StepArgs& a, const Buffers& b) {
  auto bad = [](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat("cpu_adam ", parts...));
  };
  const std::string name(optimizer_name(hp.kind));
  if (b.n == 0) return absl::OkStatus();
  if (b.param == nullptr || b.grad == nullptr)
    return bad(name, ": param and grad buffers are required");
  if (hp.kind != OptimizerKind::kAdagrad && b.exp_avg == nullptr) {
    return bad(name, ": the exp_avg (m) buffer is required");
  }
  if (hp.kind != OptimizerKind::kLion && b.exp_avg_sq == nullptr) {
    return bad(name, ": the exp_avg_sq (v) buffer is required");
  }
  if (b.save_param != nullptr &&
      ((hp.kind != OptimizerKind::kAdagrad && b.save_exp_avg == nullptr) ||
       (hp.kind != OptimizerKind::kLion && b.save_exp_avg_sq == nullptr))) {
    return bad(name, ": save_param needs the save buffers of the states the optimizer updates");
  }
  if (b.param_out != nullptr && b.out_dtype == DType::kFloat32) {
    return bad(name, ": param_out must be fp16 or bf16 (fp32 master is already updated in place)");
  }
  if (!in_unit(hp.beta1) || !in_unit(hp.beta2)) {
    return bad(name, ": betas must be in [0, 1), got ", hp.beta1, " and ", hp.beta2);
  }
  if (!(hp.eps >= 0.0) || !(hp.weight_decay >= 0.0) || !std::isfinite(hp.weight_decay)) {
    return bad(name, ": eps and weight_decay must be finite and >= 0, got ", hp.eps, " and ",
               hp.weight_decay);
  }
  if (!std::isfinite(a.lr) || a.lr < 0.0)
    return bad(name, ": lr must be finite and >= 0, got ", a.lr);
  if (!std::isfinite(a.grad_scale))
    return bad(name, ": grad_scale must be finite, got ", a.grad_scale);
  if (a.step < 1) return bad(name, ": step counts from 1, got ", a.step);
  return absl::OkStatus();
}

Coeffs make_coeffs(const Hyperparams& hp, const StepArgs& a) {
  Coeffs c;
  c.grad_scale = static_cast<float>(a.grad_scale);
  c.beta1 = static_cast<float>(hp.beta1);
  c.one_minus_beta1 = static_cast<float>(1.0 - hp.beta1);
  c.beta2 = static_cast<float>(hp.beta2);
  c.one_minus_beta2 = static_cast<float>(1.0 - hp.beta2);
  c.eps = static_cast<float>(hp.eps);
  const double t = static_cast<double>(a.step);
  switch (hp.kind) {
    case OptimizerKind::kAdam:
    case OptimizerKind::kAdamW: {
      const bool bc = hp.bias_correction;
      const double bc1 = bc ? 1.0 - std::pow(hp.beta1, t) : 1.0;
      const double bc2 = bc ? 1.0 - std::pow(hp.beta2, t) : 1.0;
      c.neg_step_size = static_cast<float>(-(a.lr / bc1));
      c.bias_correction2_sqrt = static_cast<float>(std::sqrt(bc2));
      if (hp.kind == OptimizerKind::kAdam) {
        c.l2 = static_cast<float>(hp.weight_decay);
      } else {
        c.decay = static_cast<float>(1.0 - a.lr * hp.weight_decay);
      }
      break;
    }
    case OptimizerKind::kAdagrad:
      c.neg_step_size = static_cast<float>(-a.lr);
      c.l2 = static_cast<float>(hp.weight_decay);
      break;
    case OptimizerKind::kLion:
      c.neg_step_size = static_cast<float>(-a.lr);
      c.decay = static_cast<float>(1.0 - a.lr * hp.weight_decay);
      break;
  }
  return c;
}

// Runs body(chunk_index) for every chunk; the static partitioner gives each
// thread the same contiguous run of chunks on every call with the same n.
template <class Body>
void for_chunks(size_t n_chunks, const ExecOptions& exec, const Body& body) {
  if (n_chunks == 1) return body(size_t{0});
  auto run = [&] {
    tbb::parallel_for(
        tbb::blocked_range<size_t>(0, n_chunks, 1),
        [&](const tbb::blocked_range<size_t>& r) {
          for (size_t k = r.begin(); k < r.end(); ++k) body(k);
        },
        tbb::static_partitioner());
  };
  if (exec.arena != nullptr) {
    exec.arena->execute(run);
  } else {
    run();
  }
}

size_t chunk_of(const ExecOptions& exec) { return exec.chunk == 0 ? size_t{64} << 10 : exec.chunk; }

}  // namespace

std::string_view optimizer_name(OptimizerKind kind) {
  switch (kind) {
    case OptimizerKind::kAdam:
      return "adam";
    case OptimizerKind::kAdamW:
      return "adamw";
    case OptimizerKind::kAdagrad:
      return "adagrad";
    case OptimizerKind::kLion:
      return "lion";
  }
  return "?";
}

absl::StatusOr<OptimizerKind> parse_optimizer(std::string_view name) {
  for (OptimizerKind k : {OptimizerKind::kAdam, OptimizerKind::kAdamW, OptimizerKind::kAdagrad,
                          OptimizerKind::kLion}) {
    if (name == optimizer_name(k)) return k;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown optimizer '", std::string(name),
                                                 "'; expected adam, adamw, adagrad or lion"));
}

std::string_view isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAuto:
      return "auto";
    case Isa::kScalar:
      return "scalar";
    case Isa::kSse2:
      return "sse2";
    case Isa::kAvx2:
      return "avx2";
    case Isa::kAvx512:
      return "avx512";
    case Isa::kNeon:
      return "neon";
  }
  return "?";
}

bool isa_available(Isa isa) {
  switch (isa) {
    case Isa::kAuto:
    case Isa::kScalar:
      return true;
#if defined(__x86_64__)
    // __builtin_cpu_supports also checks that the OS saves the wide registers.
    case Isa::kSse2:
      return __builtin_cpu_supports("sse2");
    case Isa::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("f16c");
    case Isa::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("f16c");
#elif defined(__aarch64__)
    case Isa::kNeon:
      return true;
#endif
    default:
      return false;
  }
}

Isa best_isa() {
  static const Isa best = [] {
    for (Isa isa : {Isa::kAvx512, Isa::kAvx2, Isa::kSse2, Isa::kNeon}) {
      if (isa_available(isa)) return isa;
    }
    return Isa::kScalar;
  }();
  return best;
}

namespace {

// Chunks for a pass that sums statistics: whole stats blocks, partial sums
// added in chunk order, so the result does not depend on which thread ran
// which chunk (and a fused step's statistics equal grad_stats').
size_t stats_chunk(const ExecOptions& exec) {
  return (chunk_of(exec) + detail::kStatsBlock - 1) / detail::kStatsBlock * detail::kStatsBlock;
}

template <class PerChunk>
GradStats sum_chunks(size_t n, size_t chunk, const ExecOptions& exec, const PerChunk& per_chunk) {
  const size_t n_chunks = (n + chunk - 1) / chunk;
  std::vector<GradStats> partial(n_chunks);
  with_isa(exec.isa, [&](auto arch) {
    for_chunks(n_chunks, exec, [&](size_t k) {
      partial[k] = per_chunk(arch, k * chunk, std::min(n, (k + 1) * chunk));
    });
  });
  GradStats total;
  for (const GradStats& p : partial) {
    total.sum_squares += p.sum_squares;
    total.nonfinite = total.nonfinite || p.nonfinite;
  }
  return total;
}

absl::StatusOr<GradStats> run_step(const Hyperparams& hp, const StepArgs& args,
                                   const Buffers& buffers, const ExecOptions& exec, bool stats) {
  if (absl::Status s = check_isa(exec.isa); !s.ok()) return s;
  if (absl::Status s = check_step(hp, args, buffers); !s.ok()) return s;
  if (buffers.n == 0) return GradStats{};
  const detail::StepKernelArgs kargs{hp.kind, make_coeffs(hp, args), buffers, exec.stream_copy_out,
                                     stats};
  const size_t chunk = stats ? stats_chunk(exec) : chunk_of(exec);
  return sum_chunks(buffers.n, chunk, exec, [&](auto arch, size_t begin, size_t end) {
    return detail::StepKernel{}(arch, kargs, begin, end);
  });
}

}  // namespace

absl::Status optimizer_step(const Hyperparams& hp, const StepArgs& args, const Buffers& buffers,
                            const ExecOptions& exec) {
  return run_step(hp, args, buffers, exec, false).status();
}

absl::StatusOr<GradStats> optimizer_step_with_stats(const Hyperparams& hp, const StepArgs& args,
                                                    const Buffers& buffers,
                                                    const ExecOptions& exec) {
  return run_step(hp, args, buffers, exec, true);
}

uint64_t step_bytes(OptimizerKind kind, const Buffers& b) {
  uint64_t per = dtype_size(b.grad_dtype) + 4 * 2;  // grad in, master read + write
  if (b.grad_accum != nullptr) per += 4;
  if (kind != OptimizerKind::kAdagrad) per += 4 * 2;  // m
  if (kind != OptimizerKind::kLion) per += 4 * 2;     // v
  if (b.param_out != nullptr) per += dtype_size(b.out_dtype);
  if (b.save_param != nullptr) {  // the old values written (their reads are the step's)
    per += 4 + (kind != OptimizerKind::kAdagrad ? 4 : 0) + (kind != OptimizerKind::kLion ? 4 : 0);
  }
  return per * b.n;
}

absl::StatusOr<GradStats> grad_stats(const void* grad, DType dtype, size_t n,
                                     const ExecOptions& exec, const float* grad_accum) {
  if (absl::Status s = check_isa(exec.isa); !s.ok()) return s;
  if (n == 0) return GradStats{};
  if (grad == nullptr) return absl::InvalidArgumentError("cpu_adam grad_stats: grad is null");
  const Buffers b{.n = n, .grad = grad, .grad_dtype = dtype, .grad_accum = grad_accum};
  return sum_chunks(n, stats_chunk(exec), exec, [&](auto arch, size_t begin, size_t end) {
    return detail::StatsKernel{}(arch, b, begin, end);
  });
}

absl::Status accumulate_grad(float* accum, const void* grad, DType dtype, size_t n, bool first,
                             const ExecOptions& exec) {
  if (absl::Status s = check_isa(exec.isa); !s.ok()) return s;
  if (n == 0) return absl::OkStatus();
  if (accum == nullptr || grad == nullptr) {
    return absl::InvalidArgumentError("cpu_adam accumulate_grad: accum and grad are required");
  }
  const size_t chunk = chunk_of(exec);
  with_isa(exec.isa, [&](auto arch) {
    for_chunks((n + chunk - 1) / chunk, exec, [&](size_t k) {
      detail::AccumulateKernel{}(arch, accum, grad, dtype, first, k * chunk,
                                 std::min(n, (k + 1) * chunk));
    });
  });
  return absl::OkStatus();
}

void first_touch(size_t n, const ExecOptions& exec,
                 const std::function<void(size_t begin, size_t end)>& body) {
  if (n == 0) return;
  const size_t chunk = chunk_of(exec);
  for_chunks((n + chunk - 1) / chunk, exec,
             [&](size_t k) { body(k * chunk, std::min(n, (k + 1) * chunk)); });
}

}  // namespace strata::cpu_adam
