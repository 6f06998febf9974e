#include "model/cpu/matmul.h"

#include <cblas.h>

#include <algorithm>
#include <cstring>

#include "core/status.h"
#include "oneapi/tbb/blocked_range.h"
#include "oneapi/tbb/parallel_for.h"

namespace strata::model::cpu {

void set_blas_threads(int n) {
  STRATA_CHECK(n >= 1);
  openblas_set_num_threads(n);
}

int blas_threads() { return openblas_get_num_threads(); }

void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int64_t n,
                    int64_t c, int64_t oc) {
  STRATA_CHECK(n > 0 && c > 0 && oc > 0);
  STRATA_CHECK(out != nullptr && inp != nullptr && weight != nullptr);
  float beta = 0.0f;
  if (bias != nullptr) {
    // Seed every row with the bias and let sgemm add to it (beta = 1): one
    // pass over out instead of a second one after the product.
    for (int64_t r = 0; r < n; ++r) std::memcpy(out + r * oc, bias, sizeof(float) * oc);
    beta = 1.0f;
  }
  // Row-major (n, c) x (oc, c)^T -> (n, oc).
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(n),
              static_cast<blasint>(oc), static_cast<blasint>(c), 1.0f, inp, static_cast<blasint>(c),
              weight, static_cast<blasint>(c), beta, out, static_cast<blasint>(oc));
}

void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                     const float* weight, int64_t n, int64_t c, int64_t oc) {
  STRATA_CHECK(n > 0 && c > 0 && oc > 0);
  STRATA_CHECK(dout != nullptr);
  if (dinp != nullptr) {
    STRATA_CHECK(weight != nullptr);
    // dinp (n, c) += dout (n, oc) @ W (oc, c).
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<blasint>(n),
                static_cast<blasint>(c), static_cast<blasint>(oc), 1.0f, dout,
                static_cast<blasint>(oc), weight, static_cast<blasint>(c), 1.0f, dinp,
                static_cast<blasint>(c));
  }
  if (dweight != nullptr) {
    STRATA_CHECK(inp != nullptr);
    // dW (oc, c) += dout^T (oc, n) @ inp (n, c).
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, static_cast<blasint>(oc),
                static_cast<blasint>(c), static_cast<blasint>(n), 1.0f, dout,
                static_cast<blasint>(oc), inp, static_cast<blasint>(c), 1.0f, dweight,
                static_cast<blasint>(c));
  }
  if (dbias != nullptr) {
    // Split over output channels: each channel sums its column in row order,
    // so the result does not depend on how many threads run. 256 channels a
    // task keeps each row segment a few cache lines long.
    constexpr int64_t kChunk = 256;
    tbb::parallel_for(tbb::blocked_range<int64_t>(0, oc, kChunk),
                      [&](const tbb::blocked_range<int64_t>& r) {
                        for (int64_t o0 = r.begin(); o0 < r.end(); o0 += kChunk) {
                          const int64_t len = std::min(kChunk, r.end() - o0);
                          float acc[kChunk];
                          std::fill(acc, acc + len, 0.0f);
                          for (int64_t row = 0; row < n; ++row) {
                            const float* d = dout + row * oc + o0;
                            for (int64_t k = 0; k < len; ++k) acc[k] += d[k];
                          }
                          for (int64_t k = 0; k < len; ++k) dbias[o0 + k] += acc[k];
                        }
                      });
  }
}

}  // namespace strata::model::cpu
