#include "model/cpu/cross_entropy.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/status.h"
#include "oneapi/tbb/blocked_range.h"
#include "oneapi/tbb/parallel_for.h"

namespace strata::model::cpu {
namespace {

void check_target(int32_t target, int64_t v, int32_t ignore_index) {
  STRATA_CHECK_MSG(target == ignore_index || (target >= 0 && target < v),
                   "target id outside [0, vocab) and not the ignore index");
}

int64_t count_targets(const int32_t* targets, int64_t n, int32_t ignore_index) {
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) count += targets[i] != ignore_index ? 1 : 0;
  return count;
}

}  // namespace

float cross_entropy_forward(float* losses, float* lse, const float* logits, const int32_t* targets,
                            int64_t n, int64_t v, int64_t vp, int32_t ignore_index) {
  STRATA_CHECK(n > 0 && v > 0 && vp >= v);
  STRATA_CHECK(losses && lse && logits && targets);
  // A row is V floats (200 KiB for GPT-2): one row a task is plenty.
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, n, 1),
                    [&](const tbb::blocked_range<int64_t>& r) {
                      for (int64_t i = r.begin(); i < r.end(); ++i) {
                        const float* x = logits + i * vp;
                        const float mx = *std::max_element(x, x + v);
                        // The sum runs in double: up to 50k terms.
                        double s = 0.0;
                        for (int64_t j = 0; j < v; ++j) s += std::exp(x[j] - mx);
                        const float row_lse = mx + static_cast<float>(std::log(s));
                        lse[i] = row_lse;
                        const int32_t tgt = targets[i];
                        check_target(tgt, v, ignore_index);
                        losses[i] = tgt == ignore_index ? 0.0f : row_lse - x[tgt];
                      }
                    });
  const int64_t count = count_targets(targets, n, ignore_index);
  if (count == 0) return 0.0f;
  double total = 0.0;
  for (int64_t i = 0; i < n; ++i) total += losses[i];
  return static_cast<float>(total / static_cast<double>(count));
}

void cross_entropy_backward(float* dlogits, const float* logits, const float* lse,
                            const int32_t* targets, int64_t n, int64_t v, int64_t vp, float dloss,
                            int32_t ignore_index) {
  STRATA_CHECK(n > 0 && v > 0 && vp >= v);
  STRATA_CHECK(dlogits && logits && lse && targets);
  const int64_t count = count_targets(targets, n, ignore_index);
  const float scale = count == 0 ? 0.0f : dloss / static_cast<float>(count);
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, n, 1),
                    [&](const tbb::blocked_range<int64_t>& r) {
                      for (int64_t i = r.begin(); i < r.end(); ++i) {
                        const float* x = logits + i * vp;
                        float* dx = dlogits + i * vp;
                        const int32_t tgt = targets[i];
                        check_target(tgt, v, ignore_index);
                        if (tgt == ignore_index) {
                          std::fill(dx, dx + vp, 0.0f);
                          continue;
                        }
                        // Reads x[j] before writing dx[j]: safe when dx == x.
                        const float row_lse = lse[i];
                        for (int64_t j = 0; j < v; ++j) dx[j] = scale * std::exp(x[j] - row_lse);
                        dx[tgt] -= scale;
                        std::fill(dx + v, dx + vp, 0.0f);
                      }
                    });
}

}  // namespace strata::model::cpu
