// Softmax cross-entropy over the vocabulary, fused: the forward keeps only
// the per-row log-sum-exp (N floats) instead of an (N, V) probability matrix,
// and the backward rebuilds softmax from logits and lse.
//
// logits is (N, Vp) row-major with N = B*T; only the first V columns are real
// (Vp >= V lets the LM head pad the vocabulary, e.g. 50257 -> 50304, as
// llm.c does). targets is (N) with ids in [0, V), or ignore_index for rows
// that do not count (padding, prompt tokens).
//
// Forward: lse[i] = log(sum_{j<V} exp(logits[i,j])), losses[i] = lse[i] -
// logits[i, target[i]] (0 for ignored rows); returns the mean loss over the
// rows that count (0 when none do).
// Backward: for each counted row, dlogits[i,j] = dloss * (softmax[i,j] -
// [j == target[i]]) / count for j < V; padded columns and ignored rows get 0.
// dloss is d(objective)/d(mean loss): 1, or the loss scale under fp16.
// Unlike the other backwards this one WRITES dlogits (it is the graph's
// first gradient), and dlogits may be the logits buffer itself, which saves
// an (N, Vp) buffer.
//
// Threads: oneTBB over rows; the mean is summed in row order in double, so
// results never depend on the thread count. A target outside [0, V) that is
// not ignore_index stops the process (STRATA_CHECK).
#pragma once

#include <cstdint>

namespace strata::model::cpu {

// llm.c's convention for masked targets.
inline constexpr int32_t kIgnoreIndex = -1;

float cross_entropy_forward(float* losses, float* lse, const float* logits, const int32_t* targets,
                            int64_t n, int64_t v, int64_t vp, int32_t ignore_index = kIgnoreIndex);

void cross_entropy_backward(float* dlogits, const float* logits, const float* lse,
                            const int32_t* targets, int64_t n, int64_t v, int64_t vp, float dloss,
                            int32_t ignore_index = kIgnoreIndex);

}  // namespace strata::model::cpu
