#include "model/cpu/residual.h"

#include "core/status.h"
#include "oneapi/tbb/blocked_range.h"
#include "oneapi/tbb/parallel_for.h"

namespace strata::model::cpu {
namespace {

// Memory-bound: large blocks so a task moves a few hundred KiB.
constexpr int64_t kGrain = 16384;

}  // namespace

void residual_forward(float* out, const float* a, const float* b, int64_t n) {
  STRATA_CHECK(n >= 0 && out != nullptr && a != nullptr && b != nullptr);
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, n, kGrain),
                    [&](const tbb::blocked_range<int64_t>& r) {
                      for (int64_t i = r.begin(); i < r.end(); ++i) out[i] = a[i] + b[i];
                    });
}

void residual_backward(float* da, float* db, const float* dout, int64_t n) {
  STRATA_CHECK(n >= 0 && dout != nullptr);
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, n, kGrain),
                    [&](const tbb::blocked_range<int64_t>& r) {
                      for (int64_t i = r.begin(); i < r.end(); ++i) {
                        if (da != nullptr) da[i] += dout[i];
                        if (db != nullptr) db[i] += dout[i];
                      }
                    });
}

}  // namespace strata::model::cpu
