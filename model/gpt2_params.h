// The parameters of strata's GPT-2, layer by layer, as the engine sees them
// (engine::Model::layer_params): layer 0 = wte, wpe; layers 1..n_layer =
// the twelve tensors of a block, in Gpt2BlockParam order (llm.c's layout:
// weights are [out, in]); layer n_layer + 1 = ln_f.w, ln_f.b. One
// definition for the CPU model, its CUDA path and the memory predictions.
#pragma once

#include <vector>

#include "engine/model.h"
#include "model/gpt2_config.h"

namespace strata::model {

enum Gpt2BlockParam {
  kLn1W,
  kLn1B,
  kQkvW,
  kQkvB,
  kAttnProjW,
  kAttnProjB,
  kLn2W,
  kLn2B,
  kFcW,
  kFcB,
  kFcProjW,
  kFcProjB,
  kBlockParams
};

// Every layer's parameters for a model of shape `c` (c.seq_len positions).
std::vector<std::vector<engine::ParamSpec>> gpt2_layer_params(const Gpt2Config& c);

}  // namespace strata::model
