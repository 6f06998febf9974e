#include "model/cpu/gelu.h"

#include <cmath>

#include "core/status.h"
#include "oneapi/tbb/blocked_range.h"
#include "oneapi/tbb/parallel_for.h"

namespace strata::model::cpu {
namespace {

constexpr float kSqrt2OverPi = static_cast<float>(0.7978845608028654);  // sqrt(2/pi)
constexpr float kCubic = 0.044715f;
constexpr int64_t kGrain = 4096;

}  // namespace

void gelu_forward(float* out, const float* inp, int64_t n) {
  STRATA_CHECK(n >= 0 && out != nullptr && inp != nullptr);
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, n, kGrain),
                    [&](const tbb::blocked_range<int64_t>& r) {
                      for (int64_t i = r.begin(); i < r.end(); ++i) {
                        const float x = inp[i];
                        const float u = kSqrt2OverPi * (x + kCubic * x * x * x);
                        out[i] = 0.5f * x * (1.0f + std::tanh(u));
                      }
                    });
}

void gelu_backward(float* dinp, const float* inp, const float* dout, int64_t n) {
  STRATA_CHECK(n >= 0 && dinp != nullptr && inp != nullptr && dout != nullptr);
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, n, kGrain),
                    [&](const tbb::blocked_range<int64_t>& r) {
                      for (int64_t i = r.begin(); i < r.end(); ++i) {
                        const float x = inp[i];
                        const float u = kSqrt2OverPi * (x + kCubic * x * x * x);
                        const float th = std::tanh(u);
                        // sech^2 as 1 - tanh^2: cosh(u)^2 overflows for |u| > ~44.
                        const float du = kSqrt2OverPi * (1.0f + 3.0f * kCubic * x * x);
                        const float grad = 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * du;
                        dinp[i] += grad * dout[i];
                      }
                    });
}

}  // namespace strata::model::cpu
