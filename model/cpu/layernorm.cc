#include "model/cpu/layernorm.h"

#include <algorithm>
#include <cmath>

#include "core/status.h"
#include "oneapi/tbb/blocked_range.h"
#include "oneapi/tbb/parallel_for.h"

namespace strata::model::cpu {
namespace {

// Rows a task: enough work (rows * C) to amortise task overhead at C = 128.
constexpr int64_t kRowGrain = 16;
constexpr int64_t kChannelChunk = 256;

}  // namespace

void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                       const float* bias, int64_t n, int64_t c) {
  STRATA_CHECK(n > 0 && c > 0);
  STRATA_CHECK(out && mean && rstd && inp && weight && bias);
  const float inv_c = 1.0f / static_cast<float>(c);
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, n, kRowGrain),
                    [&](const tbb::blocked_range<int64_t>& r) {
                      for (int64_t row = r.begin(); row < r.end(); ++row) {
                        const float* x = inp + row * c;
                        float s = 0.0f;
                        for (int64_t i = 0; i < c; ++i) s += x[i];
                        const float m = s * inv_c;
                        // Two passes: the shifted sum of squares does not cancel
                        // when |mean| >> std, as E[x^2] - mean^2 would.
                        float v = 0.0f;
                        for (int64_t i = 0; i < c; ++i) {
                          const float d = x[i] - m;
                          v += d * d;
                        }
                        const float rs = 1.0f / std::sqrt(v * inv_c + kLayerNormEps);
                        float* y = out + row * c;
                        for (int64_t i = 0; i < c; ++i)
                          y[i] = (x[i] - m) * rs * weight[i] + bias[i];
                        mean[row] = m;
                        rstd[row] = rs;
                      }
                    });
}

void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                        const float* inp, const float* weight, const float* mean, const float* rstd,
                        int64_t n, int64_t c) {
  STRATA_CHECK(n > 0 && c > 0);
  STRATA_CHECK(dout && inp && weight && mean && rstd);
  const float inv_c = 1.0f / static_cast<float>(c);
  if (dinp != nullptr) {
    tbb::parallel_for(tbb::blocked_range<int64_t>(0, n, kRowGrain),
                      [&](const tbb::blocked_range<int64_t>& r) {
                        for (int64_t row = r.begin(); row < r.end(); ++row) {
                          const float* x = inp + row * c;
                          const float* dy = dout + row * c;
                          const float m = mean[row], rs = rstd[row];
                          float sum_dn = 0.0f, sum_dn_n = 0.0f;
                          for (int64_t i = 0; i < c; ++i) {
                            const float dn = dy[i] * weight[i];
                            sum_dn += dn;
                            sum_dn_n += dn * (x[i] - m) * rs;
                          }
                          const float mean_dn = sum_dn * inv_c, mean_dn_n = sum_dn_n * inv_c;
                          float* dx = dinp + row * c;
                          for (int64_t i = 0; i < c; ++i) {
                            const float norm = (x[i] - m) * rs;
                            dx[i] += rs * (dy[i] * weight[i] - mean_dn - norm * mean_dn_n);
                          }
                        }
                      });
  }
  if (dweight == nullptr && dbias == nullptr) return;
  // Parameter gradients are sums over rows: split over channels so that no
  // two tasks write one sum and each sum runs in row order.
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, c, kChannelChunk),
                    [&](const tbb::blocked_range<int64_t>& r) {
                      for (int64_t c0 = r.begin(); c0 < r.end(); c0 += kChannelChunk) {
                        const int64_t len = std::min(kChannelChunk, r.end() - c0);
                        float dw[kChannelChunk], db[kChannelChunk];
                        std::fill(dw, dw + len, 0.0f);
                        std::fill(db, db + len, 0.0f);
                        for (int64_t row = 0; row < n; ++row) {
                          const float* x = inp + row * c + c0;
                          const float* dy = dout + row * c + c0;
                          const float m = mean[row], rs = rstd[row];
                          for (int64_t k = 0; k < len; ++k) {
                            dw[k] += (x[k] - m) * rs * dy[k];
                            db[k] += dy[k];
                          }
                        }
                        for (int64_t k = 0; k < len; ++k) {
                          if (dweight != nullptr) dweight[c0 + k] += dw[k];
                          if (dbias != nullptr) dbias[c0 + k] += db[k];
                        }
                      }
                    });
}

}  // namespace strata::model::cpu
