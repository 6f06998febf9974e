#include "model/cpu/encoder.h"

#include "core/status.h"
#include "oneapi/tbb/blocked_range.h"
#include "oneapi/tbb/parallel_for.h"

namespace strata::model::cpu {

void encoder_forward(float* out, const int32_t* tokens, const float* wte, const float* wpe,
                     int64_t b, int64_t t, int64_t c, int64_t v) {
  STRATA_CHECK(b > 0 && t > 0 && c > 0 && v > 0);
  STRATA_CHECK(out && tokens && wte && wpe);
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, b * t, 32),
                    [&](const tbb::blocked_range<int64_t>& r) {
                      for (int64_t row = r.begin(); row < r.end(); ++row) {
                        const int32_t id = tokens[row];
                        STRATA_CHECK_MSG(id >= 0 && id < v, "token id outside [0, vocab)");
                        const float* te = wte + static_cast<int64_t>(id) * c;
                        const float* pe = wpe + (row % t) * c;
                        float* y = out + row * c;
                        for (int64_t i = 0; i < c; ++i) y[i] = te[i] + pe[i];
                      }
                    });
}

void encoder_backward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens, int64_t b,
                      int64_t t, int64_t c, int64_t v) {
  STRATA_CHECK(b > 0 && t > 0 && c > 0 && v > 0);
  STRATA_CHECK(dout && tokens);
  // Channel chunks of 64 floats (a quarter KiB per row segment): each task owns
  // those columns of dwte and dwpe outright.
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, c, 64),
                    [&](const tbb::blocked_range<int64_t>& r) {
                      const int64_t c0 = r.begin(), len = r.end() - r.begin();
                      for (int64_t row = 0; row < b * t; ++row) {
                        const float* dy = dout + row * c + c0;
                        if (dwte != nullptr) {
                          const int32_t id = tokens[row];
                          STRATA_CHECK_MSG(id >= 0 && id < v, "token id outside [0, vocab)");
                          float* dte = dwte + static_cast<int64_t>(id) * c + c0;
                          for (int64_t k = 0; k < len; ++k) dte[k] += dy[k];
                        }
                        if (dwpe != nullptr) {
                          float* dpe = dwpe + (row % t) * c + c0;
                          for (int64_t k = 0; k < len; ++k) dpe[k] += dy[k];
                        }
                      }
                    });
}

}  // namespace strata::model::cpu
