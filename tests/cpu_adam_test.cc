// cpu_adam: torch golden vectors, every compiled ISA against the scalar
// reference (bit-exact: the library is built without FMA contraction), the
// fused step (accumulator + statistics) against the three passes it replaces,
// thread-count and range-split independence, copy-out against core's
// conversions, zero/denormal/inf/NaN gradients, and argument errors.
#include "cpu_adam/optimizer.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "oneapi/tbb/task_arena.h"

namespace strata::cpu_adam {
namespace {

constexpr OptimizerKind kAllKinds[] = {OptimizerKind::kAdam, OptimizerKind::kAdamW,
                                       OptimizerKind::kAdagrad, OptimizerKind::kLion};
constexpr DType kAllDTypes[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16};

// absl::string_view is not std::string_view on Debian 12.
std::string str(std::string_view v) { return std::string(v); }

std::vector<Isa> vector_isas() {
  std::vector<Isa> out;
  for (Isa isa : {Isa::kSse2, Isa::kAvx2, Isa::kAvx512, Isa::kNeon}) {
    if (isa_available(isa)) out.push_back(isa);
  }
  return out;
}

std::vector<Isa> all_isas() {
  std::vector<Isa> out = {Isa::kScalar};
  for (Isa isa : vector_isas()) out.push_back(isa);
  return out;
}

// Raw gradient storage in any dtype, filled from floats.
struct Grad {
  DType dtype;
  std::vector<float> f32;
  std::vector<uint16_t> u16;
  const void* data() const {
    return dtype == DType::kFloat32 ? static_cast<const void*>(f32.data()) : u16.data();
  }
};

Grad make_grad(DType dtype, const std::vector<float>& values) {
  Grad g{dtype, {}, {}};
  if (dtype == DType::kFloat32) {
    g.f32 = values;
  } else {
    g.u16.resize(values.size());
    for (size_t i = 0; i < values.size(); ++i) {
      g.u16[i] = dtype == DType::kFloat16 ? fp32_to_fp16(values[i]) : fp32_to_bf16(values[i]);
    }
  }
  return g;
}

std::vector<float> random_vector(size_t n, float scale, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// Optimizer state for n parameters, stepped through optimizer_step.
struct State {
  std::vector<float> p, m, v;
  std::vector<uint16_t> out;
  explicit State(size_t n, uint32_t seed)
      : p(random_vector(n, 1.0f, seed)),
        m(random_vector(n, 0.01f, seed + 1)),
        v(n),
        out(n, 0xdead) {
    std::vector<float> r = random_vector(n, 1e-2f, seed + 2);
    for (size_t i = 0; i < n; ++i) v[i] = r[i] * r[i];
  }
  Buffers buffers(const Grad& g, bool with_out, DType out_dtype) {
    Buffers b;
    b.n = p.size();
    b.param = p.data();
    b.exp_avg = m.data();
    b.exp_avg_sq = v.data();
    b.grad = g.data();
    b.grad_dtype = g.dtype;
    b.param_out = with_out ? out.data() : nullptr;
    b.out_dtype = out_dtype;
    return b;
  }
};

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
}

void expect_same_state(const State& got, const State& want, const std::string& what) {
  EXPECT_TRUE(same_bits(got.p, want.p)) << what << ": param differs";
  EXPECT_TRUE(same_bits(got.m, want.m)) << what << ": exp_avg differs";
  EXPECT_TRUE(same_bits(got.v, want.v)) << what << ": exp_avg_sq differs";
  EXPECT_EQ(got.out, want.out) << what << ": param_out differs";
}

Hyperparams hyperparams(OptimizerKind kind) {
  Hyperparams hp;
  hp.kind = kind;
  hp.weight_decay = 0.05;
  if (kind == OptimizerKind::kLion) hp.beta2 = 0.99;
  return hp;
}

// ---- golden vectors from torch (tests/golden/make_cpu_adam_golden.py) ----

std::vector<char> read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<char>(std::istreambuf_iterator<char>(f), {});
}

TEST(CpuAdamGolden, MatchesTorchOnEveryIsa) {
  const std::string dir = STRATA_GOLDEN_DIR "/cpu_adam";
  std::ifstream mf(dir + "/cases.json");
  ASSERT_TRUE(mf) << "missing " << dir << "/cases.json; run tests/golden/make_cpu_adam_golden.py";
  const nlohmann::json manifest = nlohmann::json::parse(mf);
  const size_t n = manifest["n"];
  const int steps = manifest["steps"];
  const std::vector<double> lrs = manifest["lrs"];
  ASSERT_GE(manifest["cases"].size(), 8u);
  for (const auto& c : manifest["cases"]) {
    const std::string name = c["name"];
    SCOPED_TRACE(name);
    auto kind = parse_optimizer(std::string(c["optimizer"]));
    auto gdt = parse_dtype(std::string(c["grad_dtype"]));
    ASSERT_TRUE(kind.ok() && gdt.ok());
    const std::vector<char> blob = read_all(dir + "/" + name + ".bin");
    const size_t gsize = dtype_size(*gdt);
    const size_t expect_bytes =
        n * 4 + steps * n * gsize + n * 4 + (c["has_m"] ? n * 4 : 0) + (c["has_v"] ? n * 4 : 0);
    ASSERT_EQ(blob.size(), expect_bytes);
    auto f32_at = [&](size_t off) {
      std::vector<float> v(n);
      std::memcpy(v.data(), blob.data() + off, n * 4);
      return v;
    };
    size_t off = 0;
    const std::vector<float> p0 = f32_at(off);
    off += n * 4;
    const char* grads = blob.data() + off;
    off += steps * n * gsize;
    const std::vector<float> want_p = f32_at(off);
    off += n * 4;
    std::vector<float> want_m, want_v;
    if (c["has_m"]) want_m = f32_at(off), off += n * 4;
    if (c["has_v"]) want_v = f32_at(off);

    Hyperparams hp;
    hp.kind = *kind;
    hp.beta1 = c["beta1"];
    hp.beta2 = c["beta2"];
    hp.eps = c["eps"];
    hp.weight_decay = c["weight_decay"];
    hp.bias_correction = c["bias_correction"];
    std::vector<float> ref_p;
    for (Isa isa : all_isas()) {
      SCOPED_TRACE(std::string(isa_name(isa)));
      std::vector<float> p = p0, m(n, 0.0f), v(n, 0.0f);
      for (int t = 0; t < steps; ++t) {
        Buffers b;
        b.n = n;
        b.param = p.data();
        b.exp_avg = m.data();
        b.exp_avg_sq = v.data();
        b.grad = grads + t * n * gsize;
        b.grad_dtype = *gdt;
        StepArgs args{lrs[t], t + 1, c["grad_scale"].get<double>()};
        ASSERT_TRUE(optimizer_step(hp, args, b, {.isa = isa}).ok());
      }
      // Relative error against torch, judged against a tenth of the array's
      // largest magnitude where an element cancelled toward zero: torch's
      // vectorised lerp (m) uses FMA, ours does not, so m differs by an ulp
      // of (1-b1)*(g-m), which is large relative to a near-zero m.
      auto check = [](const std::vector<float>& got, const std::vector<float>& want,
                      const char* what) {
        double largest = 0;
        for (float w : want) largest = std::max(largest, std::fabs(double{w}));
        double worst = 0;
        for (size_t i = 0; i < want.size(); ++i) {
          const double err = std::fabs(double{got[i]} - want[i]) /
                             std::max(std::fabs(double{want[i]}), 1e-1 * largest);
          worst = std::max(worst, err);
        }
        EXPECT_LE(worst, 1e-6) << what;
      };
      check(p, want_p, "param");
      if (!want_m.empty()) check(m, want_m, "exp_avg");
      if (!want_v.empty()) check(v, want_v, "exp_avg_sq");
      if (ref_p.empty()) {
        ref_p = p;
      } else {
        EXPECT_TRUE(same_bits(p, ref_p)) << "not bit-identical to the scalar reference";
      }
    }
  }
}

// ---- every ISA against the scalar reference ----

TEST(CpuAdam, EveryIsaBitIdenticalToScalarOnOddSizes) {
  if (vector_isas().empty()) GTEST_SKIP() << "no SIMD ISA compiled in for this CPU";
  for (size_t n : {size_t{1}, size_t{7}, size_t{15}, size_t{17}, size_t{33}, size_t{1000 + 13}}) {
    for (OptimizerKind kind : kAllKinds) {
      for (DType gdt : kAllDTypes) {
        for (int out = 0; out < 3; ++out) {
          const bool with_out = out > 0;
          const DType out_dt = out == 2 ? DType::kBFloat16 : DType::kFloat16;
          const Grad g = make_grad(gdt, random_vector(n, 0.3f, 7 + n));
          const Hyperparams hp = hyperparams(kind);
          const StepArgs args{2e-3, 3, 0.75};
          State want(n, 11);
          ASSERT_TRUE(
              optimizer_step(hp, args, want.buffers(g, with_out, out_dt), {.isa = Isa::kScalar})
                  .ok());
          for (Isa isa : vector_isas()) {
            State got(n, 11);
            ASSERT_TRUE(
                optimizer_step(hp, args, got.buffers(g, with_out, out_dt), {.isa = isa}).ok());
            expect_same_state(got, want,
                              absl::StrCat(str(isa_name(isa)), " ", str(optimizer_name(kind)),
                                           " grad ", str(dtype_name(gdt)), " out ", out, " n ", n));
          }
        }
      }
    }
  }
}

TEST(CpuAdam, CopyOutEqualsCoreConversionOfNewMaster) {
  const size_t n = 517;
  const Grad g = make_grad(DType::kFloat16, random_vector(n, 1.0f, 3));
  for (Isa isa : all_isas()) {
    for (DType out_dt : {DType::kFloat16, DType::kBFloat16}) {
      for (bool stream : {false, true}) {
        State s(n, 5);
        // Some masters beyond fp16 range, some tiny: exercise inf and subnormal rounding.
        for (size_t i = 0; i < n; i += 10) s.p[i] = (i % 20 == 0) ? 1e6f : 3e-6f;
        // Non-temporal stores take aligned vectors; start one element in so
        // both the aligned and the unaligned path run.
        Buffers b = s.buffers(g, true, out_dt);
        b.param_out = s.out.data() + 1;
        b.param += 1, b.exp_avg += 1, b.exp_avg_sq += 1, b.n -= 1;
        b.grad = static_cast<const uint16_t*>(b.grad) + 1;
        ASSERT_TRUE(optimizer_step(hyperparams(OptimizerKind::kAdamW), {1e-3, 1, 1.0}, b,
                                   {.isa = isa, .stream_copy_out = stream})
                        .ok());
        for (size_t i = 1; i < n; ++i) {
          const uint16_t want =
              out_dt == DType::kFloat16 ? fp32_to_fp16(s.p[i]) : fp32_to_bf16(s.p[i]);
          ASSERT_EQ(s.out[i], want) << isa_name(isa) << " " << dtype_name(out_dt) << " at " << i
                                    << (stream ? " (non-temporal)" : "");
        }
      }
    }
  }
}

TEST(CpuAdam, ResultIndependentOfThreadsChunksAndRangeSplits) {
  const size_t n = 100003;
  const Grad g = make_grad(DType::kBFloat16, random_vector(n, 0.2f, 9));
  const Hyperparams hp = hyperparams(OptimizerKind::kAdam);
  const StepArgs args{1e-3, 4, 0.5};
  State want(n, 21);
  tbb::task_arena one(1);
  ASSERT_TRUE(optimizer_step(hp, args, want.buffers(g, true, DType::kFloat16),
                             {.arena = &one, .chunk = size_t{1} << 20})
                  .ok());
  tbb::task_arena two(2);
  for (tbb::task_arena* arena : {&one, &two}) {
    for (size_t chunk : {size_t{1000}, size_t{4093}, size_t{65536}}) {
      State got(n, 21);
      ASSERT_TRUE(optimizer_step(hp, args, got.buffers(g, true, DType::kFloat16),
                                 {.arena = arena, .chunk = chunk})
                      .ok());
      expect_same_state(got, want, absl::StrCat("chunk ", chunk));
    }
  }
  // The engine steps a buffer bucket by bucket; any split gives the same bits.
  State split(n, 21);
  Buffers whole = split.buffers(g, true, DType::kFloat16);
  for (size_t begin : {size_t{0}, size_t{5}, size_t{70001}}) {
    const size_t end = begin == 0 ? 5 : (begin == 5 ? 70001 : n);
    Buffers b = whole;
    b.n = end - begin;
    b.param += begin;
    b.exp_avg += begin;
    b.exp_avg_sq += begin;
    b.grad = static_cast<const uint16_t*>(whole.grad) + begin;
    b.param_out = static_cast<uint16_t*>(whole.param_out) + begin;
    ASSERT_TRUE(optimizer_step(hp, args, b).ok());
  }
  expect_same_state(split, want, "split in three ranges");
}

// ---- the fused pass: accumulator + gradient statistics + step ----

// The three-pass reference the engine ran before: accumulate into fp32,
// grad_stats over the sum, step on the fp32 sum. The statistics' summation
// order follows the vector width, so they are compared on the same ISA.
struct Reference {
  State state;
  GradStats stats;
};
Reference three_passes(const Hyperparams& hp, const StepArgs& args, const Grad& g,
                       const std::vector<float>* accum, DType out_dt, uint32_t seed, Isa isa) {
  const size_t n = g.dtype == DType::kFloat32 ? g.f32.size() : g.u16.size();
  std::vector<float> sum = accum != nullptr ? *accum : std::vector<float>(n);
  EXPECT_TRUE(
      accumulate_grad(sum.data(), g.data(), g.dtype, n, accum == nullptr, {.isa = Isa::kScalar})
          .ok());
  Reference r{State(n, seed), {}};
  auto st = grad_stats(sum.data(), DType::kFloat32, n, {.isa = isa});
  EXPECT_TRUE(st.ok());
  r.stats = *st;
  const Grad g32{DType::kFloat32, sum, {}};
  EXPECT_TRUE(
      optimizer_step(hp, args, r.state.buffers(g32, true, out_dt), {.isa = Isa::kScalar}).ok());
  return r;
}

void expect_same_stats(const GradStats& got, const GradStats& want, const std::string& what) {
  EXPECT_EQ(std::memcmp(&got.sum_squares, &want.sum_squares, sizeof(double)), 0)
      << what << ": sum_squares " << got.sum_squares << " vs " << want.sum_squares;
  EXPECT_EQ(got.nonfinite, want.nonfinite) << what;
}

TEST(CpuAdamFused, StepWithStatsEqualsAccumulateStatsStepBitForBit) {
  for (size_t n : {size_t{1}, size_t{33}, size_t{3000 + 17}, size_t{70000 + 5}}) {
    for (OptimizerKind kind : kAllKinds) {
      for (DType gdt : kAllDTypes) {
        for (bool with_accum : {false, true}) {
          const Grad g = make_grad(gdt, random_vector(n, 0.3f, 7 + n));
          const std::vector<float> accum = random_vector(n, 0.2f, 3 + n);
          const Hyperparams hp = hyperparams(kind);
          const StepArgs args{2e-3, 3, 0.75};
          const DType out_dt = gdt == DType::kBFloat16 ? DType::kBFloat16 : DType::kFloat16;
          for (Isa isa : all_isas()) {
            const Reference want =
                three_passes(hp, args, g, with_accum ? &accum : nullptr, out_dt, 11, isa);
            const std::string what =
                absl::StrCat(str(isa_name(isa)), " ", str(optimizer_name(kind)), " grad ",
                             str(dtype_name(gdt)), with_accum ? " +accum" : "", " n ", n);
            State fused(n, 11);
            Buffers b = fused.buffers(g, true, out_dt);
            b.grad_accum = with_accum ? accum.data() : nullptr;
            auto stats = optimizer_step_with_stats(hp, args, b, {.isa = isa, .chunk = 5000});
            ASSERT_TRUE(stats.ok()) << stats.status();
            expect_same_state(fused, want.state, what);
            expect_same_stats(*stats, want.stats, what);
            // The plain step with an accumulator, and the statistics alone.
            State plain(n, 11);
            Buffers pb = plain.buffers(g, true, out_dt);
            pb.grad_accum = b.grad_accum;
            ASSERT_TRUE(optimizer_step(hp, args, pb, {.isa = isa}).ok());
            expect_same_state(plain, want.state, what + " (no stats)");
            auto alone = grad_stats(g.data(), gdt, n, {.isa = isa}, b.grad_accum);
            ASSERT_TRUE(alone.ok());
            expect_same_stats(*alone, want.stats, what + " (grad_stats)");
          }
        }
      }
    }
  }
}

TEST(CpuAdamFused, RollbackCopyHoldsTheStateBeforeTheStep) {
  const size_t n = 1000 + 13;
  const Grad g = make_grad(DType::kFloat16, random_vector(n, 0.3f, 4));
  for (OptimizerKind kind : kAllKinds) {
    State want(n, 8);
    const State before = want;
    ASSERT_TRUE(optimizer_step(hyperparams(kind), {1e-3, 2, 0.5},
                               want.buffers(g, true, DType::kFloat16), {.isa = Isa::kScalar})
                    .ok());
    for (Isa isa : all_isas()) {
      const std::string what = absl::StrCat(str(isa_name(isa)), " ", str(optimizer_name(kind)));
      State got(n, 8);
      std::vector<float> sp(n, -1.0f), sm(n, -1.0f), sv(n, -1.0f);
      Buffers b = got.buffers(g, true, DType::kFloat16);
      b.save_param = sp.data();
      b.save_exp_avg = sm.data();
      b.save_exp_avg_sq = sv.data();
      ASSERT_TRUE(optimizer_step(hyperparams(kind), {1e-3, 2, 0.5}, b, {.isa = isa}).ok());
      expect_same_state(got, want, what);
      EXPECT_TRUE(same_bits(sp, before.p)) << what;
      // Only the states the kind updates are copied.
      if (kind != OptimizerKind::kAdagrad) EXPECT_TRUE(same_bits(sm, before.m)) << what;
      if (kind != OptimizerKind::kLion) EXPECT_TRUE(same_bits(sv, before.v)) << what;
    }
    // A kind's state without its save buffer is refused, writing nothing.
    State refused(n, 8);
    Buffers b = refused.buffers(g, true, DType::kFloat16);
    std::vector<float> sp(n);
    b.save_param = sp.data();
    EXPECT_EQ(optimizer_step(hyperparams(kind), {1e-3, 2, 0.5}, b).code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(same_bits(refused.p, before.p));
  }
}

TEST(CpuAdamFused, NonFiniteAndHugeGradientsGiveGradStatsResult) {
  const size_t n = 4100;
  for (DType gdt : kAllDTypes) {
    for (int which = 0; which < 3; ++which) {
      std::vector<float> values = random_vector(n, 0.3f, 5);
      if (which == 0) values[2049] = std::numeric_limits<float>::infinity();
      if (which == 1) values[n - 1] = std::numeric_limits<float>::quiet_NaN();
      // Squares overflow fp32 within a block: the block is summed in double.
      if (which == 2) values[100] = gdt == DType::kFloat16 ? 60000.0f : 3e30f;
      const Grad g = make_grad(gdt, values);
      const std::vector<float> accum = random_vector(n, 1e19f, 9);
      for (bool with_accum : {false, true}) {
        for (Isa isa : all_isas()) {
          const Reference want =
              three_passes(hyperparams(OptimizerKind::kAdamW), {1e-3, 1, 1.0}, g,
                           with_accum ? &accum : nullptr, DType::kFloat16, 2, isa);
          State fused(n, 2);
          Buffers b = fused.buffers(g, true, DType::kFloat16);
          b.grad_accum = with_accum ? accum.data() : nullptr;
          auto stats = optimizer_step_with_stats(hyperparams(OptimizerKind::kAdamW), {1e-3, 1, 1.0},
                                                 b, {.isa = isa});
          ASSERT_TRUE(stats.ok());
          const std::string what = absl::StrCat(str(isa_name(isa)), " ", str(dtype_name(gdt)),
                                                " case ", which, with_accum ? " +accum" : "");
          expect_same_stats(*stats, want.stats, what);
          EXPECT_EQ(stats->nonfinite, which < 2) << what;
        }
      }
    }
  }
}

TEST(CpuAdamFused, AccumulateGradIsTheFp32SumOnEveryIsa) {
  const size_t n = 1000 + 13;
  for (DType gdt : kAllDTypes) {
    const std::vector<float> values = random_vector(n, 0.5f, 1);
    const Grad g = make_grad(gdt, values);
    const std::vector<float> start = random_vector(n, 0.5f, 2);
    for (Isa isa : all_isas()) {
      for (bool first : {true, false}) {
        std::vector<float> acc = start;
        ASSERT_TRUE(accumulate_grad(acc.data(), g.data(), gdt, n, first, {.isa = isa}).ok());
        for (size_t i = 0; i < n; ++i) {
          const float x = gdt == DType::kFloat32   ? values[i]
                          : gdt == DType::kFloat16 ? fp16_to_fp32(g.u16[i])
                                                   : bf16_to_fp32(g.u16[i]);
          const float want = first ? x : start[i] + x;
          ASSERT_EQ(std::memcmp(&acc[i], &want, 4), 0)
              << isa_name(isa) << " " << dtype_name(gdt) << " at " << i;
        }
      }
    }
  }
}

TEST(CpuAdamFused, StepBytesCountsEveryStream) {
  Buffers b{.n = 10, .grad_dtype = DType::kFloat16, .param_out = &b, .out_dtype = DType::kBFloat16};
  // fp16 grad 2 + master 8 + m 8 + v 8 + copy 2: the 28 B/param of DESIGN.md.
  EXPECT_EQ(step_bytes(OptimizerKind::kAdamW, b), 280u);
  b.grad_accum = reinterpret_cast<const float*>(&b);
  EXPECT_EQ(step_bytes(OptimizerKind::kAdamW, b), 320u);
  b.param_out = nullptr;
  EXPECT_EQ(step_bytes(OptimizerKind::kLion, b), 220u);
  // A rollback copy in the same pass writes master and the kind's states.
  b.save_param = b.save_exp_avg = b.save_exp_avg_sq = reinterpret_cast<float*>(&b);
  EXPECT_EQ(step_bytes(OptimizerKind::kLion, b), 300u);
}

// ---- edge-case gradients ----

TEST(CpuAdam, ZeroGradientsLeaveStatesAndOnlyDecayParams) {
  const size_t n = 77;
  for (Isa isa : all_isas()) {
    std::vector<float> p(n, 2.0f), m(n, 0.0f), v(n, 0.0f);
    std::vector<uint16_t> g(n, fp32_to_fp16(0.0f));
    Buffers b{.n = n,
              .param = p.data(),
              .exp_avg = m.data(),
              .exp_avg_sq = v.data(),
              .grad = g.data(),
              .grad_dtype = DType::kFloat16};
    Hyperparams hp;
    hp.weight_decay = 0.1;
    ASSERT_TRUE(optimizer_step(hp, {0.01, 1, 1.0}, b, {.isa = isa}).ok());
    for (size_t i = 0; i < n; ++i) {
      ASSERT_EQ(m[i], 0.0f);
      ASSERT_EQ(v[i], 0.0f);
      ASSERT_EQ(p[i], 2.0f * static_cast<float>(1.0 - 0.01 * 0.1)) << isa_name(isa);
    }
  }
}

TEST(CpuAdam, DenormalGradientsMatchScalarAndStayFinite) {
  const size_t n = 131;
  std::vector<float> tiny(n);
  for (size_t i = 0; i < n; ++i) tiny[i] = std::numeric_limits<float>::denorm_min() * (i + 1);
  // fp16 subnormals: 2^-24 .. a few of them.
  std::vector<float> tiny16(n);
  for (size_t i = 0; i < n; ++i) tiny16[i] = std::ldexp(static_cast<float>(i % 5), -24);
  for (const Grad& g : {make_grad(DType::kFloat32, tiny), make_grad(DType::kFloat16, tiny16)}) {
    for (OptimizerKind kind : kAllKinds) {
      State want(n, 1);
      ASSERT_TRUE(optimizer_step(hyperparams(kind), {1e-3, 1, 1.0},
                                 want.buffers(g, true, DType::kFloat16), {.isa = Isa::kScalar})
                      .ok());
      for (size_t i = 0; i < n; ++i) ASSERT_TRUE(std::isfinite(want.p[i]));
      for (Isa isa : vector_isas()) {
        State got(n, 1);
        ASSERT_TRUE(optimizer_step(hyperparams(kind), {1e-3, 1, 1.0},
                                   got.buffers(g, true, DType::kFloat16), {.isa = isa})
                        .ok());
        expect_same_state(got, want,
                          absl::StrCat(str(isa_name(isa)), " ", str(optimizer_name(kind))));
      }
    }
  }
}

// ---- gradient statistics ----

TEST(CpuAdamGradStats, SumOfSquaresWithinOneMillionthOnEveryIsa) {
  const size_t n = 300007;
  const std::vector<float> values = random_vector(n, 3.0f, 17);
  for (DType dt : kAllDTypes) {
    const Grad g = make_grad(dt, values);
    double exact = 0;
    for (size_t i = 0; i < n; ++i) {
      const double x = dt == DType::kFloat32   ? values[i]
                       : dt == DType::kFloat16 ? fp16_to_fp32(g.u16[i])
                                               : bf16_to_fp32(g.u16[i]);
      exact += x * x;
    }
    for (Isa isa : all_isas()) {
      auto s = grad_stats(g.data(), dt, n, {.isa = isa});
      ASSERT_TRUE(s.ok());
      EXPECT_FALSE(s->nonfinite);
      EXPECT_NEAR(s->sum_squares, exact, 1e-6 * exact) << isa_name(isa) << " " << dtype_name(dt);
    }
  }
}

TEST(CpuAdamGradStats, IndependentOfThreadCount) {
  const size_t n = 1 << 20;
  const Grad g = make_grad(DType::kFloat16, random_vector(n, 1.0f, 23));
  tbb::task_arena one(1), two(2);
  auto a = grad_stats(g.data(), g.dtype, n, {.arena = &one});
  auto b = grad_stats(g.data(), g.dtype, n, {.arena = &two});
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->sum_squares, b->sum_squares);
}

TEST(CpuAdamGradStats, DetectsInfAndNanAnywhere) {
  const size_t n = 2500;  // two full stats blocks and a partial one
  const float specials[] = {std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(),
                            std::numeric_limits<float>::quiet_NaN()};
  for (DType dt : kAllDTypes) {
    for (size_t pos : {size_t{0}, size_t{15}, size_t{1024}, size_t{2047}, size_t{2499}}) {
      for (float special : specials) {
        std::vector<float> values(n, 0.5f);
        values[pos] = special;
        const Grad g = make_grad(dt, values);
        for (Isa isa : all_isas()) {
          auto s = grad_stats(g.data(), dt, n, {.isa = isa});
          ASSERT_TRUE(s.ok());
          EXPECT_TRUE(s->nonfinite) << isa_name(isa) << " " << dtype_name(dt) << " at " << pos;
          EXPECT_DOUBLE_EQ(s->sum_squares, 0.25 * (n - 1)) << "finite elements still counted";
        }
      }
    }
  }
}

TEST(CpuAdamGradStats, LargeFiniteValuesDoNotOverflow) {
  std::vector<float> values(3000, 1e20f);  // squares overflow fp32, not double
  for (Isa isa : all_isas()) {
    auto s = grad_stats(values.data(), DType::kFloat32, values.size(), {.isa = isa});
    ASSERT_TRUE(s.ok());
    EXPECT_FALSE(s->nonfinite);
    EXPECT_NEAR(s->sum_squares, 3000 * 1e40, 1e-6 * 3000 * 1e40) << isa_name(isa);
  }
}

// ---- errors ----

TEST(CpuAdam, RejectsBadArguments) {
  const size_t n = 8;
  State s(n, 1);
  const Grad g = make_grad(DType::kFloat32, random_vector(n, 1.0f, 2));
  Buffers b = s.buffers(g, false, DType::kFloat16);
  const Hyperparams hp;
  EXPECT_EQ(optimizer_step(hp, {1e-3, 0, 1.0}, b).code(), absl::StatusCode::kInvalidArgument);
  Hyperparams bad_beta = hp;
  bad_beta.beta1 = 1.0;
  EXPECT_EQ(optimizer_step(bad_beta, {}, b).code(), absl::StatusCode::kInvalidArgument);
  Buffers no_m = b;
  no_m.exp_avg = nullptr;
  absl::Status st = optimizer_step(hp, {}, no_m);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(st.message()).find("exp_avg"), std::string::npos) << st;
  Hyperparams adagrad = hp;
  adagrad.kind = OptimizerKind::kAdagrad;
  EXPECT_TRUE(optimizer_step(adagrad, {}, no_m).ok()) << "Adagrad has no m";
  Buffers f32_out = s.buffers(g, true, DType::kFloat32);
  EXPECT_EQ(optimizer_step(hp, {}, f32_out).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(optimizer_step(hp, {std::nan(""), 1, 1.0}, b).code(),
            absl::StatusCode::kInvalidArgument);
  for (Isa isa : {Isa::kSse2, Isa::kAvx2, Isa::kAvx512, Isa::kNeon}) {
    if (!isa_available(isa)) {
      EXPECT_EQ(optimizer_step(hp, {}, b, {.isa = isa}).code(),
                absl::StatusCode::kFailedPrecondition);
    }
  }
  EXPECT_FALSE(parse_optimizer("sgd").ok());
  EXPECT_EQ(*parse_optimizer("lion"), OptimizerKind::kLion);
}

}  // namespace
}  // namespace strata::cpu_adam
