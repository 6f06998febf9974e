#include "model/cpu/attention.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <vector>

#include "core/status.h"
#include "oneapi/tbb/blocked_range.h"
#include "oneapi/tbb/parallel_for.h"

namespace strata::model::cpu {
namespace {

// Copies rows [j0, j0 + jk) of one head's K (or V) into a (hs, jk) tile, so
// that scores for one query row are hs axpys over contiguous keys, which
// vectorise without reassociating a dot product.
void load_transposed(float* tile, const float* src, int64_t row_stride, int64_t j0, int64_t jk,
                     int64_t hs) {
  for (int64_t j = 0; j < jk; ++j) {
    const float* x = src + (j0 + j) * row_stride;
    for (int64_t d = 0; d < hs; ++d) tile[d * jk + j] = x[d];
  }
}

// s[j] = scale * sum_d q[d] * tile[d, j] for j < jmax. The forward and the
// backward both score through here, so the backward's recomputed
// probabilities round exactly as the forward's did.
void scores(float* s, const float* q, const float* tile, int64_t jk, int64_t jmax, int64_t hs,
            float scale) {
  std::fill(s, s + jmax, 0.0f);
  for (int64_t d = 0; d < hs; ++d) {
    const float qd = q[d];
    const float* kd = tile + d * jk;
    for (int64_t j = 0; j < jmax; ++j) s[j] += qd * kd[j];
  }
  for (int64_t j = 0; j < jmax; ++j) s[j] *= scale;
}

// x[j] = exp(x[j]) for x[j] <= 0 (scores minus their running max or their
// lse), written as plain arithmetic so the loop vectorises: libm's expf does
// not, and it would otherwise dominate the forward. exp(x) = 2^k * e^r with
// k = round(x / ln 2), |r| <= ln2/2, e^r by its degree-7 Taylor polynomial
// (truncation < 1e-8 relative, about 1 ulp overall). Inputs below -87 give
// 2^-126-ish instead of 0 or a denormal: 1e-38 of the row's largest term.
void exp_nonpositive(float* x, int64_t n) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693145751953125f;  // ln 2 split so k * kLn2Hi is exact
  constexpr float kLn2Lo = 1.42860682030941723e-6f;
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  for (int64_t j = 0; j < n; ++j) {
    const float v = std::max(x[j], -87.0f);
    const float k = (v * kLog2e + kRound) - kRound;
    const float r = (v - k * kLn2Hi) - k * kLn2Lo;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
    x[j] = p * std::bit_cast<float>(bits);
  }
}

void axpy(float* y, float a, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

struct Dims {
  int64_t b, t, c, nh, hs, c3;
  float scale;
};

Dims make_dims(int64_t b, int64_t t, int64_t c, int64_t nh, const AttentionBlocking& blk) {
  STRATA_CHECK(b > 0 && t > 0 && c > 0 && nh > 0);
  STRATA_CHECK_MSG(c % nh == 0, "channels must be a multiple of the head count");
  STRATA_CHECK(blk.q_block > 0 && blk.k_block > 0);
  const int64_t hs = c / nh;
  return {b, t, c, nh, hs, 3 * c, 1.0f / std::sqrt(static_cast<float>(hs))};
}

// One (batch, head, query block): rows [i0, i0 + iq).
void forward_block(float* out, float* lse, const float* qkv, const Dims& dm,
                   const AttentionBlocking& blk, int64_t bi, int64_t h, int64_t i0, int64_t iq) {
  const int64_t hs = dm.hs, kb = blk.k_block;
  const float* base = qkv + bi * dm.t * dm.c3;
  const float* q_base = base + h * hs;
  const float* k_base = base + dm.c + h * hs;
  const float* v_base = base + 2 * dm.c + h * hs;
  std::vector<float> acc(iq * hs, 0.0f), tile(hs * kb), s(kb);
  std::vector<float> m(iq, -std::numeric_limits<float>::infinity()), l(iq, 0.0f);
  const int64_t last_row = i0 + iq - 1;
  for (int64_t j0 = 0; j0 <= last_row; j0 += kb) {
    const int64_t jk = std::min(kb, dm.t - j0);
    load_transposed(tile.data(), k_base, dm.c3, j0, jk, hs);
    for (int64_t i = std::max<int64_t>(0, j0 - i0); i < iq; ++i) {
      const int64_t row = i0 + i;
      const int64_t jmax = std::min(jk, row - j0 + 1);  // causal: keys j0 + j <= row
      scores(s.data(), q_base + row * dm.c3, tile.data(), jk, jmax, hs, dm.scale);
      const float block_max = *std::max_element(s.data(), s.data() + jmax);
      const float m_new = std::max(m[i], block_max);
      // Rescale what was summed under the old maximum (exp(-inf) = 0 the first time).
      const float corr = std::exp(m[i] - m_new);
      float* a = acc.data() + i * hs;
      float li = l[i] * corr;
      for (int64_t d = 0; d < hs; ++d) a[d] *= corr;
      for (int64_t j = 0; j < jmax; ++j) s[j] -= m_new;
      exp_nonpositive(s.data(), jmax);
      for (int64_t j = 0; j < jmax; ++j) {
        li += s[j];
        axpy(a, s[j], v_base + (j0 + j) * dm.c3, hs);
      }
      l[i] = li;
      m[i] = m_new;
    }
  }
  for (int64_t i = 0; i < iq; ++i) {
    const int64_t row = i0 + i;
    const float inv = 1.0f / l[i];
    float* y = out + (bi * dm.t + row) * dm.c + h * hs;
    for (int64_t d = 0; d < hs; ++d) y[d] = acc[i * hs + d] * inv;
    lse[(bi * dm.nh + h) * dm.t + row] = m[i] + std::log(l[i]);
  }
}

// One (batch, head): every dQ, dK and dV of that head.
void backward_head(float* dqkv, const float* dout, const float* qkv, const float* out,
                   const float* lse, const Dims& dm, const AttentionBlocking& blk, int64_t bi,
                   int64_t h) {
  const int64_t hs = dm.hs, kb = blk.k_block, t = dm.t;
  const int64_t off = bi * t * dm.c3 + h * hs;
  const float* q_base = qkv + off;
  const float* k_base = qkv + off + dm.c;
  const float* v_base = qkv + off + 2 * dm.c;
  float* dq_base = dqkv + off;
  float* dk_base = dqkv + off + dm.c;
  float* dv_base = dqkv + off + 2 * dm.c;
  const float* dy_base = dout + bi * t * dm.c + h * hs;
  const float* y_base = out + bi * t * dm.c + h * hs;
  const float* lse_h = lse + (bi * dm.nh + h) * t;

  // D_i = dout_i . out_i = sum_j P_ij dP_ij: the softmax backward's row term.
  std::vector<float> dd(t);
  for (int64_t i = 0; i < t; ++i) {
    const float* dy = dy_base + i * dm.c;
    const float* y = y_base + i * dm.c;
    float acc = 0.0f;
    for (int64_t d = 0; d < hs; ++d) acc += dy[d] * y[d];
    dd[i] = acc;
  }

  std::vector<float> kt(hs * kb), vt(hs * kb), dk(kb * hs), dv(kb * hs), p(kb), dp(kb);
  for (int64_t j0 = 0; j0 < t; j0 += kb) {
    const int64_t jk = std::min(kb, t - j0);
    load_transposed(kt.data(), k_base, dm.c3, j0, jk, hs);
    load_transposed(vt.data(), v_base, dm.c3, j0, jk, hs);
    std::fill(dk.begin(), dk.end(), 0.0f);
    std::fill(dv.begin(), dv.end(), 0.0f);
    for (int64_t row = j0; row < t; ++row) {
      const int64_t jmax = std::min(jk, row - j0 + 1);
      const float* q = q_base + row * dm.c3;
      const float* dy = dy_base + row * dm.c;
      float* dq = dq_base + row * dm.c3;
      scores(p.data(), q, kt.data(), jk, jmax, hs, dm.scale);
      const float row_lse = lse_h[row];
      for (int64_t j = 0; j < jmax; ++j) p[j] -= row_lse;
      exp_nonpositive(p.data(), jmax);
      // dP_ij = dout_i . v_j, through the transposed V tile like the scores.
      std::fill(dp.begin(), dp.begin() + jmax, 0.0f);
      for (int64_t d = 0; d < hs; ++d) {
        const float g = dy[d];
        const float* vd = vt.data() + d * jk;
        for (int64_t j = 0; j < jmax; ++j) dp[j] += g * vd[j];
      }
      for (int64_t j = 0; j < jmax; ++j) {
        // dS_ij = P_ij (dP_ij - D_i); the 1/sqrt(hs) of the scores folds in here.
        const float ds = p[j] * (dp[j] - dd[row]) * dm.scale;
        axpy(dv.data() + j * hs, p[j], dy, hs);
        axpy(dq, ds, k_base + (j0 + j) * dm.c3, hs);
        axpy(dk.data() + j * hs, ds, q, hs);
      }
    }
    for (int64_t j = 0; j < jk; ++j) {
      float* dkr = dk_base + (j0 + j) * dm.c3;
      float* dvr = dv_base + (j0 + j) * dm.c3;
      for (int64_t d = 0; d < hs; ++d) {
        dkr[d] += dk[j * hs + d];
        dvr[d] += dv[j * hs + d];
      }
    }
  }
}

}  // namespace

void attention_forward(float* out, float* lse, const float* qkv, int64_t b, int64_t t, int64_t c,
                       int64_t nh, AttentionBlocking blocking) {
  const Dims dm = make_dims(b, t, c, nh, blocking);
  STRATA_CHECK(out && lse && qkv);
  const int64_t nqb = (t + blocking.q_block - 1) / blocking.q_block;
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, b * nh * nqb, 1),
                    [&](const tbb::blocked_range<int64_t>& r) {
                      for (int64_t task = r.begin(); task < r.end(); ++task) {
                        const int64_t qb = task % nqb, bh = task / nqb;
                        const int64_t i0 = qb * blocking.q_block;
                        forward_block(out, lse, qkv, dm, blocking, bh / nh, bh % nh, i0,
                                      std::min(blocking.q_block, t - i0));
                      }
                    });
}

void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                        const float* lse, int64_t b, int64_t t, int64_t c, int64_t nh,
                        AttentionBlocking blocking) {
  const Dims dm = make_dims(b, t, c, nh, blocking);
  STRATA_CHECK(dqkv && dout && qkv && out && lse);
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, b * nh, 1),
                    [&](const tbb::blocked_range<int64_t>& r) {
                      for (int64_t bh = r.begin(); bh < r.end(); ++bh) {
                        backward_head(dqkv, dout, qkv, out, lse, dm, blocking, bh / nh, bh % nh);
                      }
                    });
}

}  // namespace strata::model::cpu
