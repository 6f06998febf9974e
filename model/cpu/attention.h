// Causal multi-head self-attention on the CPU, blocked like FlashAttention so
// that no (T, T) score matrix is ever stored: keys are visited in blocks of
// k_block with an online softmax (running max and sum per query row), and the
// forward saves only the per-row log-sum-exp of the scaled scores.
//
// Shapes as GPT-2 / llm.c: qkv is (B, T, 3C), the output of the fused QKV
// matmul, with Q in columns [0, C), K in [C, 2C), V in [2C, 3C); head h owns
// columns [h*hs, (h+1)*hs) of each, hs = C / NH. out is (B, T, C) with head h
// in the same columns; lse is (B, NH, T).
//   out[b,t,h] = sum_{s<=t} softmax_s(q_t . k_s / sqrt(hs)) v_s
//
// Backward accumulates into dqkv (B, T, 3C) (dQ, dK, dV in the same layout),
// recomputing the probabilities block by block from qkv and lse; it needs the
// forward's out to form D_t = dout_t . out_t, the softmax correction term.
//
// Memory: scratch per task is O(k_block * hs + q_block * hs) floats.
// Threads: oneTBB. The forward splits over (batch, head, query block); the
// backward over (batch, head), visiting key blocks and query rows in a fixed
// order inside each task, so dQ, dK and dV are each summed in one order and
// results are bit-identical whatever the thread count. C % NH != 0 or
// non-positive shapes stop the process (STRATA_CHECK).
#pragma once

#include <cstdint>

namespace strata::model::cpu {

struct AttentionBlocking {
  int64_t q_block = 64;  // query rows sharing one pass over a key block (forward)
  int64_t k_block = 64;  // keys per block: scores, K^T and V^T tiles stay in L1/L2
};

void attention_forward(float* out, float* lse, const float* qkv, int64_t b, int64_t t, int64_t c,
                       int64_t nh, AttentionBlocking blocking = {});

void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                        const float* lse, int64_t b, int64_t t, int64_t c, int64_t nh,
                        AttentionBlocking blocking = {});

}  // namespace strata::model::cpu
