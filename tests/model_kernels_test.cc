// model/cpu kernels against naive fp64 references: every forward on tiny
// shapes (B=2, T=5, C=8, NH=2, V=11), every backward against central finite
// differences of the fp64 reference objective L = sum(w * out) for a random w,
// blocked attention at T=300 against the naive T x T reference, cross-entropy
// with padding columns and ignored targets, and bit-identical results with
// one thread and with all of them.
//
// Tolerances: forwards |got - ref| <= 1e-5 * (1 + |ref|) (fp32 compute, short
// sums); gradients |got - fd| <= 2e-4 * (1 + |fd|) (fp32 compute against fp64
// differences with h = 1e-6, whose own error is ~1e-9).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "model/cpu/attention.h"
#include "model/cpu/cross_entropy.h"
#include "model/cpu/encoder.h"
#include "model/cpu/gelu.h"
#include "model/cpu/layernorm.h"
#include "model/cpu/matmul.h"
#include "model/cpu/residual.h"
#include "oneapi/tbb/global_control.h"
#include "oneapi/tbb/task_arena.h"

namespace strata::model::cpu {
namespace {

using Vec = std::vector<double>;

constexpr int64_t kB = 2, kT = 5, kC = 8, kNH = 2, kV = 11;
constexpr double kFwdTol = 1e-5;
constexpr double kGradTol = 2e-4;
constexpr double kFdStep = 1e-6;

std::vector<float> random_floats(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(gen);
  return v;
}

Vec to_double(const std::vector<float>& v) { return Vec(v.begin(), v.end()); }

void expect_close(const std::vector<float>& got, const Vec& want, double tol,
                  const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int reported = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::abs(static_cast<double>(got[i]) - want[i]);
    if (err > tol * (1.0 + std::abs(want[i])) && reported++ < 5) {
      ADD_FAILURE() << what << "[" << i << "]: got " << got[i] << ", want " << want[i]
                    << " (tolerance " << tol << ")";
    }
  }
}

// Central differences of f with respect to every element of inputs[k].
Vec finite_differences(const std::function<double(const std::vector<Vec>&)>& f,
                       std::vector<Vec> inputs, size_t k) {
  Vec grad(inputs[k].size());
  for (size_t i = 0; i < grad.size(); ++i) {
    const double x = inputs[k][i];
    inputs[k][i] = x + kFdStep;
    const double up = f(inputs);
    inputs[k][i] = x - kFdStep;
    const double down = f(inputs);
    inputs[k][i] = x;
    grad[i] = (up - down) / (2 * kFdStep);
  }
  return grad;
}

double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Gradient buffers start non-zero so that the tests see accumulation (+=).
constexpr float kGradSeed = 0.25f;

std::vector<float> minus_seed(std::vector<float> g) {
  for (float& x : g) x -= kGradSeed;
  return g;
}

// ---------------------------------------------------------------- references

Vec matmul_ref(const Vec& inp, const Vec& w, const Vec* bias, int64_t n, int64_t c, int64_t oc) {
  Vec out(n * oc);
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t o = 0; o < oc; ++o) {
      double s = bias != nullptr ? (*bias)[o] : 0.0;
      for (int64_t i = 0; i < c; ++i) s += inp[r * c + i] * w[o * c + i];
      out[r * oc + o] = s;
    }
  }
  return out;
}

Vec layernorm_ref(const Vec& inp, const Vec& w, const Vec& bias, int64_t n, int64_t c,
                  Vec* mean = nullptr, Vec* rstd = nullptr) {
  Vec out(n * c);
  for (int64_t r = 0; r < n; ++r) {
    double m = 0, v = 0;
    for (int64_t i = 0; i < c; ++i) m += inp[r * c + i];
    m /= c;
    for (int64_t i = 0; i < c; ++i) v += (inp[r * c + i] - m) * (inp[r * c + i] - m);
    const double rs = 1.0 / std::sqrt(v / c + 1e-5);
    for (int64_t i = 0; i < c; ++i) out[r * c + i] = (inp[r * c + i] - m) * rs * w[i] + bias[i];
    if (mean != nullptr) mean->push_back(m);
    if (rstd != nullptr) rstd->push_back(rs);
  }
  return out;
}

Vec gelu_ref(const Vec& x) {
  Vec out(x.size());
  const double k = std::sqrt(2.0 / M_PI);
  for (size_t i = 0; i < x.size(); ++i) {
    out[i] = 0.5 * x[i] * (1.0 + std::tanh(k * (x[i] + 0.044715 * x[i] * x[i] * x[i])));
  }
  return out;
}

// Naive causal attention with a full score row per query; optionally the lse.
Vec attention_ref(const Vec& qkv, int64_t b, int64_t t, int64_t c, int64_t nh, Vec* lse = nullptr) {
  const int64_t hs = c / nh, c3 = 3 * c;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hs));
  Vec out(b * t * c, 0.0);
  if (lse != nullptr) lse->assign(b * nh * t, 0.0);
  Vec s(t);
  for (int64_t bi = 0; bi < b; ++bi) {
    for (int64_t h = 0; h < nh; ++h) {
      for (int64_t i = 0; i < t; ++i) {
        const double* q = &qkv[(bi * t + i) * c3 + h * hs];
        double mx = -1e300;
        for (int64_t j = 0; j <= i; ++j) {
          const double* k = &qkv[(bi * t + j) * c3 + c + h * hs];
          double d = 0;
          for (int64_t e = 0; e < hs; ++e) d += q[e] * k[e];
          s[j] = d * scale;
          mx = std::max(mx, s[j]);
        }
        double sum = 0;
        for (int64_t j = 0; j <= i; ++j) sum += std::exp(s[j] - mx);
        for (int64_t j = 0; j <= i; ++j) {
          const double p = std::exp(s[j] - mx) / sum;
          const double* v = &qkv[(bi * t + j) * c3 + 2 * c + h * hs];
          for (int64_t e = 0; e < hs; ++e) out[(bi * t + i) * c + h * hs + e] += p * v[e];
        }
        if (lse != nullptr) (*lse)[(bi * nh + h) * t + i] = mx + std::log(sum);
      }
    }
  }
  return out;
}

// Analytic fp64 attention backward (full P rows), for T too long for finite
// differences; it is itself checked against them at the tiny shape.
Vec attention_backward_ref(const Vec& dout, const Vec& qkv, int64_t b, int64_t t, int64_t c,
                           int64_t nh) {
  const int64_t hs = c / nh, c3 = 3 * c;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hs));
  Vec dqkv(qkv.size(), 0.0), p(t), dp(t);
  for (int64_t bi = 0; bi < b; ++bi) {
    for (int64_t h = 0; h < nh; ++h) {
      for (int64_t i = 0; i < t; ++i) {
        const int64_t qi = (bi * t + i) * c3 + h * hs;
        const double* dy = &dout[(bi * t + i) * c + h * hs];
        double mx = -1e300;
        for (int64_t j = 0; j <= i; ++j) {
          double d = 0;
          for (int64_t e = 0; e < hs; ++e)
            d += qkv[qi + e] * qkv[(bi * t + j) * c3 + c + h * hs + e];
          p[j] = d * scale;
          mx = std::max(mx, p[j]);
        }
        double sum = 0;
        for (int64_t j = 0; j <= i; ++j) sum += (p[j] = std::exp(p[j] - mx));
        double pdp = 0;
        for (int64_t j = 0; j <= i; ++j) {
          p[j] /= sum;
          const int64_t vj = (bi * t + j) * c3 + 2 * c + h * hs;
          dp[j] = 0;
          for (int64_t e = 0; e < hs; ++e) {
            dp[j] += dy[e] * qkv[vj + e];
            dqkv[vj + e] += p[j] * dy[e];
          }
          pdp += p[j] * dp[j];
        }
        for (int64_t j = 0; j <= i; ++j) {
          const double ds = p[j] * (dp[j] - pdp) * scale;
          const int64_t kj = (bi * t + j) * c3 + c + h * hs;
          for (int64_t e = 0; e < hs; ++e) {
            dqkv[qi + e] += ds * qkv[kj + e];
            dqkv[kj + e] += ds * qkv[qi + e];
          }
        }
      }
    }
  }
  return dqkv;
}

double cross_entropy_ref(const Vec& logits, const std::vector<int32_t>& targets, int64_t n,
                         int64_t v, int64_t vp, int32_t ignore, Vec* losses = nullptr) {
  double total = 0;
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    double mx = -1e300, s = 0;
    for (int64_t j = 0; j < v; ++j) mx = std::max(mx, logits[i * vp + j]);
    for (int64_t j = 0; j < v; ++j) s += std::exp(logits[i * vp + j] - mx);
    const double loss = targets[i] == ignore ? 0.0 : mx + std::log(s) - logits[i * vp + targets[i]];
    if (losses != nullptr) losses->push_back(loss);
    if (targets[i] != ignore) {
      total += loss;
      ++count;
    }
  }
  return count == 0 ? 0.0 : total / count;
}

// ---------------------------------------------------------------- matmul

TEST(ModelKernelsTest, MatmulForwardAndBackward) {
  const int64_t n = kB * kT, c = kC, oc = 3 * kC;
  for (bool with_bias : {true, false}) {
    SCOPED_TRACE(with_bias ? "bias" : "no bias");
    auto inp = random_floats(n * c, 1), w = random_floats(oc * c, 2), bias = random_floats(oc, 3);
    auto wout = random_floats(n * oc, 4);
    std::vector<float> out(n * oc);
    matmul_forward(out.data(), inp.data(), w.data(), with_bias ? bias.data() : nullptr, n, c, oc);
    Vec bias_d = to_double(bias);
    expect_close(out,
                 matmul_ref(to_double(inp), to_double(w), with_bias ? &bias_d : nullptr, n, c, oc),
                 kFwdTol, "out");

    std::vector<float> dinp(n * c, kGradSeed), dw(oc * c, kGradSeed), db(oc, kGradSeed);
    matmul_backward(dinp.data(), dw.data(), with_bias ? db.data() : nullptr, wout.data(),
                    inp.data(), w.data(), n, c, oc);
    auto f = [&](const std::vector<Vec>& x) {
      return dot(to_double(wout), matmul_ref(x[0], x[1], with_bias ? &x[2] : nullptr, n, c, oc));
    };
    const std::vector<Vec> xs = {to_double(inp), to_double(w), bias_d};
    expect_close(minus_seed(dinp), finite_differences(f, xs, 0), kGradTol, "dinp");
    expect_close(minus_seed(dw), finite_differences(f, xs, 1), kGradTol, "dweight");
    if (with_bias) {
      expect_close(minus_seed(db), finite_differences(f, xs, 2), kGradTol, "dbias");
    } else {
      for (float g : db) EXPECT_EQ(g, kGradSeed);
    }
  }
}

TEST(ModelKernelsTest, MatmulBackwardSkipsNullGradients) {
  const int64_t n = 3, c = 4, oc = 5;
  auto inp = random_floats(n * c, 5), w = random_floats(oc * c, 6), dout = random_floats(n * oc, 7);
  std::vector<float> dw(oc * c, 0.0f);
  matmul_backward(nullptr, dw.data(), nullptr, dout.data(), inp.data(), nullptr, n, c, oc);
  Vec want(oc * c, 0.0);
  for (int64_t o = 0; o < oc; ++o) {
    for (int64_t i = 0; i < c; ++i) {
      for (int64_t r = 0; r < n; ++r) want[o * c + i] += double{dout[r * oc + o]} * inp[r * c + i];
    }
  }
  expect_close(dw, want, kFwdTol, "dweight");
}

// ---------------------------------------------------------------- layernorm

TEST(ModelKernelsTest, LayerNormForwardAndBackward) {
  const int64_t n = kB * kT, c = kC;
  auto inp = random_floats(n * c, 10, 2.0f), w = random_floats(c, 11), bias = random_floats(c, 12);
  for (float& x : inp) x += 3.0f;  // a mean far from zero, as residual streams have
  auto wout = random_floats(n * c, 13);
  std::vector<float> out(n * c), mean(n), rstd(n);
  layernorm_forward(out.data(), mean.data(), rstd.data(), inp.data(), w.data(), bias.data(), n, c);
  Vec want_mean, want_rstd;
  expect_close(
      out,
      layernorm_ref(to_double(inp), to_double(w), to_double(bias), n, c, &want_mean, &want_rstd),
      kFwdTol, "out");
  expect_close(mean, want_mean, kFwdTol, "mean");
  expect_close(rstd, want_rstd, kFwdTol, "rstd");

  std::vector<float> dinp(n * c, kGradSeed), dw(c, kGradSeed), db(c, kGradSeed);
  layernorm_backward(dinp.data(), dw.data(), db.data(), wout.data(), inp.data(), w.data(),
                     mean.data(), rstd.data(), n, c);
  auto f = [&](const std::vector<Vec>& x) {
    return dot(to_double(wout), layernorm_ref(x[0], x[1], x[2], n, c));
  };
  const std::vector<Vec> xs = {to_double(inp), to_double(w), to_double(bias)};
  expect_close(minus_seed(dinp), finite_differences(f, xs, 0), kGradTol, "dinp");
  expect_close(minus_seed(dw), finite_differences(f, xs, 1), kGradTol, "dweight");
  expect_close(minus_seed(db), finite_differences(f, xs, 2), kGradTol, "dbias");
}

// ---------------------------------------------------------------- gelu, residual

TEST(ModelKernelsTest, GeluForwardAndBackward) {
  const int64_t n = kB * kT * 4 * kC;
  auto inp = random_floats(n, 20, 2.0f), wout = random_floats(n, 21);
  inp[0] = 30.0f;  // far tails: the derivative must stay finite (1 and 0)
  inp[1] = -30.0f;
  std::vector<float> out(n);
  gelu_forward(out.data(), inp.data(), n);
  expect_close(out, gelu_ref(to_double(inp)), kFwdTol, "out");
  std::vector<float> dinp(n, kGradSeed);
  gelu_backward(dinp.data(), inp.data(), wout.data(), n);
  auto f = [&](const std::vector<Vec>& x) { return dot(to_double(wout), gelu_ref(x[0])); };
  expect_close(minus_seed(dinp), finite_differences(f, {to_double(inp)}, 0), kGradTol, "dinp");
}

TEST(ModelKernelsTest, ResidualForwardAndBackward) {
  const int64_t n = kB * kT * kC;
  auto a = random_floats(n, 30), b = random_floats(n, 31), dout = random_floats(n, 32);
  std::vector<float> out(n);
  residual_forward(out.data(), a.data(), b.data(), n);
  for (int64_t i = 0; i < n; ++i) EXPECT_EQ(out[i], a[i] + b[i]);
  std::vector<float> da(n, kGradSeed), db(n, kGradSeed);
  residual_backward(da.data(), db.data(), dout.data(), n);
  for (int64_t i = 0; i < n; ++i) {
    EXPECT_EQ(da[i], kGradSeed + dout[i]);
    EXPECT_EQ(db[i], kGradSeed + dout[i]);
  }
}

// ---------------------------------------------------------------- encoder

TEST(ModelKernelsTest, EncoderForwardAndBackward) {
  const int64_t max_t = kT + 3;
  // Token 3 appears three times: its gradient rows must sum.
  const std::vector<int32_t> tokens = {3, 0, 10, 3, 7, 1, 3, 5, 9, 2};
  auto wte = random_floats(kV * kC, 40), wpe = random_floats(max_t * kC, 41);
  auto wout = random_floats(kB * kT * kC, 42);
  std::vector<float> out(kB * kT * kC);
  encoder_forward(out.data(), tokens.data(), wte.data(), wpe.data(), kB, kT, kC, kV);
  auto ref = [&](const Vec& te, const Vec& pe) {
    Vec y(kB * kT * kC);
    for (int64_t r = 0; r < kB * kT; ++r) {
      for (int64_t i = 0; i < kC; ++i)
        y[r * kC + i] = te[tokens[r] * kC + i] + pe[(r % kT) * kC + i];
    }
    return y;
  };
  expect_close(out, ref(to_double(wte), to_double(wpe)), kFwdTol, "out");
  std::vector<float> dwte(kV * kC, kGradSeed), dwpe(max_t * kC, kGradSeed);
  encoder_backward(dwte.data(), dwpe.data(), wout.data(), tokens.data(), kB, kT, kC, kV);
  auto f = [&](const std::vector<Vec>& x) { return dot(to_double(wout), ref(x[0], x[1])); };
  const std::vector<Vec> xs = {to_double(wte), to_double(wpe)};
  expect_close(minus_seed(dwte), finite_differences(f, xs, 0), kGradTol, "dwte");
  expect_close(minus_seed(dwpe), finite_differences(f, xs, 1), kGradTol, "dwpe");
}

// ---------------------------------------------------------------- attention

struct AttentionRun {
  std::vector<float> out, lse, dqkv;
};

AttentionRun run_attention(const std::vector<float>& qkv, const std::vector<float>& dout, int64_t b,
                           int64_t t, int64_t c, int64_t nh, AttentionBlocking blk) {
  AttentionRun r{std::vector<float>(b * t * c), std::vector<float>(b * nh * t),
                 std::vector<float>(qkv.size(), kGradSeed)};
  attention_forward(r.out.data(), r.lse.data(), qkv.data(), b, t, c, nh, blk);
  attention_backward(r.dqkv.data(), dout.data(), qkv.data(), r.out.data(), r.lse.data(), b, t, c,
                     nh, blk);
  return r;
}

TEST(ModelKernelsTest, AttentionTinyForwardAndBackward) {
  auto qkv = random_floats(kB * kT * 3 * kC, 50), wout = random_floats(kB * kT * kC, 51);
  Vec want_lse;
  const Vec want = attention_ref(to_double(qkv), kB, kT, kC, kNH, &want_lse);
  auto f = [&](const std::vector<Vec>& x) {
    return dot(to_double(wout), attention_ref(x[0], kB, kT, kC, kNH));
  };
  const Vec fd = finite_differences(f, {to_double(qkv)}, 0);
  // The reference backward used at T=300 must agree with the differences too.
  {
    const Vec analytic = attention_backward_ref(to_double(wout), to_double(qkv), kB, kT, kC, kNH);
    for (size_t i = 0; i < fd.size(); ++i)
      EXPECT_NEAR(analytic[i], fd[i], 1e-7 * (1 + std::abs(fd[i])));
  }
  // One block covering everything, and blocks smaller than T that do not divide it.
  for (AttentionBlocking blk :
       {AttentionBlocking{}, AttentionBlocking{2, 3}, AttentionBlocking{1, 1}}) {
    SCOPED_TRACE("q_block " + std::to_string(blk.q_block) + " k_block " +
                 std::to_string(blk.k_block));
    AttentionRun r = run_attention(qkv, wout, kB, kT, kC, kNH, blk);
    expect_close(r.out, want, kFwdTol, "out");
    expect_close(r.lse, want_lse, kFwdTol, "lse");
    expect_close(minus_seed(r.dqkv), fd, kGradTol, "dqkv");
  }
}

TEST(ModelKernelsTest, AttentionLongSequenceBlocked) {
  const int64_t b = 2, t = 300, c = 32, nh = 2;
  auto qkv = random_floats(b * t * 3 * c, 60), dout = random_floats(b * t * c, 61);
  Vec want_lse;
  const Vec want = attention_ref(to_double(qkv), b, t, c, nh, &want_lse);
  const Vec want_grad = attention_backward_ref(to_double(dout), to_double(qkv), b, t, c, nh);
  AttentionRun r = run_attention(qkv, dout, b, t, c, nh, {.q_block = 32, .k_block = 48});
  expect_close(r.out, want, kFwdTol, "out");
  expect_close(r.lse, want_lse, kFwdTol, "lse");
  expect_close(minus_seed(r.dqkv), want_grad, 1e-4, "dqkv");
}

// ---------------------------------------------------------------- cross-entropy

TEST(ModelKernelsTest, CrossEntropyForwardAndBackward) {
  const int64_t n = kB * kT, vp = kV + 3;  // three padding columns
  auto logits = random_floats(n * vp, 70, 2.0f);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = kV; j < vp; ++j) logits[i * vp + j] = 50.0f;  // must not count
  }
  std::vector<int32_t> targets = {0, 10, 5, kIgnoreIndex, 3, 3, 7, kIgnoreIndex, 1, 9};
  std::vector<float> losses(n), lse(n);
  const float mean =
      cross_entropy_forward(losses.data(), lse.data(), logits.data(), targets.data(), n, kV, vp);
  Vec want_losses;
  const double want_mean =
      cross_entropy_ref(to_double(logits), targets, n, kV, vp, kIgnoreIndex, &want_losses);
  EXPECT_NEAR(mean, want_mean, kFwdTol * (1 + want_mean));
  expect_close(losses, want_losses, kFwdTol, "losses");

  const float dloss = 1024.0f;  // a loss scale
  std::vector<float> dlogits(n * vp, kGradSeed);
  cross_entropy_backward(dlogits.data(), logits.data(), lse.data(), targets.data(), n, kV, vp,
                         dloss);
  auto f = [&](const std::vector<Vec>& x) {
    return dloss * cross_entropy_ref(x[0], targets, n, kV, vp, kIgnoreIndex);
  };
  // The reference ignores padding columns, so their differences are 0 as the
  // kernel must write; ignored rows likewise.
  expect_close(dlogits, finite_differences(f, {to_double(logits)}, 0), kGradTol, "dlogits");

  // In place: dlogits may be the logits buffer.
  std::vector<float> inplace = logits;
  cross_entropy_backward(inplace.data(), inplace.data(), lse.data(), targets.data(), n, kV, vp,
                         dloss);
  EXPECT_EQ(inplace, dlogits);
}

TEST(ModelKernelsTest, CrossEntropyAllIgnored) {
  const int64_t n = 3;
  auto logits = random_floats(n * kV, 71);
  std::vector<int32_t> targets(n, -100);
  std::vector<float> losses(n), lse(n), dlogits(n * kV, 1.0f);
  EXPECT_EQ(cross_entropy_forward(losses.data(), lse.data(), logits.data(), targets.data(), n, kV,
                                  kV, -100),
            0.0f);
  cross_entropy_backward(dlogits.data(), logits.data(), lse.data(), targets.data(), n, kV, kV, 1.0f,
                         -100);
  for (float g : dlogits) EXPECT_EQ(g, 0.0f);
  for (float l : losses) EXPECT_EQ(l, 0.0f);
}

TEST(ModelKernelsDeathTest, BadIdsStop) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const std::vector<int32_t> tokens = {0, kV};
  std::vector<float> wte(kV * kC), wpe(2 * kC), out(2 * kC), losses(2), lse(2);
  EXPECT_DEATH(encoder_forward(out.data(), tokens.data(), wte.data(), wpe.data(), 1, 2, kC, kV),
               "token id");
  EXPECT_DEATH(
      cross_entropy_forward(losses.data(), lse.data(), wte.data(), tokens.data(), 2, kC, kC),
      "target id");
}

// ---------------------------------------------------------------- determinism

// Every kernel's output with one oneTBB thread, to compare with all threads.
std::vector<std::vector<float>> run_all_kernels() {
  const int64_t b = 2, t = 130, c = 64, nh = 4, v = 300, n = b * t;
  auto x = random_floats(n * c, 80), w = random_floats(c, 81), bias = random_floats(c, 82);
  auto dy = random_floats(n * c, 83), qkv = random_floats(n * 3 * c, 84);
  auto wte = random_floats(v * c, 85), wpe = random_floats(t * c, 86);
  auto logits = random_floats(n * v, 87);
  std::vector<int32_t> tokens(n);
  for (int64_t i = 0; i < n; ++i) tokens[i] = static_cast<int32_t>((i * 7) % 13);  // repeats
  std::vector<std::vector<float>> results;

  std::vector<float> out(n * c), mean(n), rstd(n), dx(n * c, 0), dw(c, 0), db(c, 0);
  layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), bias.data(), n, c);
  layernorm_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), mean.data(),
                     rstd.data(), n, c);
  results.insert(results.end(), {out, dx, dw, db});

  AttentionRun r = run_attention(qkv, dy, b, t, c, nh, {.q_block = 16, .k_block = 32});
  results.insert(results.end(), {r.out, r.lse, r.dqkv});

  std::vector<float> dwte(v * c, 0), dwpe(t * c, 0);
  encoder_backward(dwte.data(), dwpe.data(), dy.data(), tokens.data(), b, t, c, v);
  results.insert(results.end(), {dwte, dwpe});

  std::vector<float> dbias(3 * c, 0);
  matmul_backward(nullptr, nullptr, dbias.data(), qkv.data(), nullptr, nullptr, n, c, 3 * c);
  results.push_back(dbias);

  std::vector<float> losses(n), lse(n), dlogits(n * v);
  results.push_back(
      {cross_entropy_forward(losses.data(), lse.data(), logits.data(), tokens.data(), n, v, v)});
  cross_entropy_backward(dlogits.data(), logits.data(), lse.data(), tokens.data(), n, v, v, 1.0f);
  results.push_back(dlogits);
  return results;
}

TEST(ModelKernelsTest, SameBitsWithOneThreadAndMany) {
  std::vector<std::vector<float>> one;
  {
    tbb::global_control limit(tbb::global_control::max_allowed_parallelism, 1);
    one = run_all_kernels();
  }
  // More threads than this machine may have cores: oneTBB lets an arena
  // oversubscribe, which splits the work differently again.
  std::vector<std::vector<float>> many;
  {
    tbb::global_control limit(tbb::global_control::max_allowed_parallelism, 8);
    tbb::task_arena arena(8);
    arena.execute([&] { many = run_all_kernels(); });
  }
  ASSERT_EQ(one.size(), many.size());
  for (size_t k = 0; k < one.size(); ++k) {
    ASSERT_EQ(one[k].size(), many[k].size());
    EXPECT_EQ(std::memcmp(one[k].data(), many[k].data(), one[k].size() * sizeof(float)), 0)
        << "result " << k << " differs between 1 and 8 threads";
  }
}

}  // namespace
}  // namespace strata::model::cpu
