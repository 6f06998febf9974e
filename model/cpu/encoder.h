// GPT-2's input embedding: token embedding plus learned position embedding.
// tokens is (B, T) of ids in [0, V); wte is (V, C); wpe is (max_T, C) with
// T <= max_T; out is (B, T, C) with out[b,t,:] = wte[tokens[b,t],:] + wpe[t,:].
//
// Backward accumulates dwte[tokens[b,t],:] += dout[b,t,:] and dwpe[t,:] +=
// dout[b,t,:] (either may be null). With tied embeddings the LM head's matmul
// backward adds into the same dwte.
//
// Threads: oneTBB. The forward splits over rows; the backward splits over
// channels and visits (b, t) in order inside each task, so repeated tokens
// sum in a fixed order and results are bit-identical whatever the thread
// count. A token id outside [0, V) or T > max_T stops the process
// (STRATA_CHECK): the tokenizer and data loader guarantee both.
#pragma once

#include <cstdint>

namespace strata::model::cpu {

void encoder_forward(float* out, const int32_t* tokens, const float* wte, const float* wpe,
                     int64_t b, int64_t t, int64_t c, int64_t v);

void encoder_backward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens, int64_t b,
                      int64_t t, int64_t c, int64_t v);

}  // namespace strata::model::cpu
