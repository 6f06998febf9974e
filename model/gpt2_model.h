// Gpt2Model: the reference GPT-2 (learned positions, pre-LayerNorm blocks,
// causal self-attention, GELU MLP, tied input/output embeddings) as an
// engine::Model, computed with the CPU kernels in model/cpu on a device
// whose memory the host can address (SimDevice).
//
// Layers, in the order the engine drives them: 0 = token + position
// embedding (wte, wpe); 1..n_layer = transformer blocks; n_layer + 1 =
// final LayerNorm and the language-model head, which reuses wte (tied): the
// head reads the wte value captured by layer 0's forward and its wte
// gradient is added into layer 0's wte gradient in backward.
//
// Parameters are held by the engine in the compute dtype (fp16, bf16 or
// fp32); the model converts them to fp32 for compute and writes gradients
// back in the compute dtype. Activations are the model's own (fp32, host).
//
// Data comes from a TokenSource, read by layer 0's forward on the calling
// thread: with LayerContext::training, train_batch(ctx.micro_batch), else
// val_batch(ctx.micro_batch) (TrainingEngine::evaluate). A token or target
// outside the vocabulary (targets may be -1, ignored) fails that forward
// with InvalidArgument. loss() is the mean cross-entropy of the last forward.
//
// Memory (fp32, host): per block ~12*B*T*C floats of saved activations, plus
// B*T*V logits, an fp32 wte copy and its head gradient (2*V*C), and scratch
// shared by all layers (~19*B*T*C). With checkpoint_activations a block keeps
// only its input (B*T*C floats, the residual stream) between forward and
// backward; its backward first recomputes the block's forward into one set of
// block activations shared by all blocks (the same kernels on the same
// inputs, so gradients and losses are bit-identical to a run without it), at
// the cost of about one more block forward per block in backward.
// gpt2_activation_memory() reports the bytes either way.
//
// Threads: compute runs in launch_host_function on ctx.stream; the dense
// layers use OpenBLAS's pool, whose size the caller sets once with
// model::cpu::set_blas_threads (the model leaves it alone), the rest oneTBB.
// Not thread-safe (the engine calls it from one thread); SimDevice only (it
// dereferences device pointers).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model.h"
#include "engine/training_engine.h"
#include "model/gpt2_config.h"

namespace strata::model {

// Supplies token batches: inputs and next-token targets, each B x T int32.
class TokenSource {
 public:
  virtual ~TokenSource() = default;
  // Training batch number `index` (deterministic for a given index).
  virtual void train_batch(int64_t index, int32_t* inputs, int32_t* targets) = 0;
  // Validation batch number `index`.
  virtual void val_batch(int64_t index, int32_t* inputs, int32_t* targets) = 0;
};

struct Gpt2ModelOptions {
  Gpt2Config config;
  int64_t micro_batch = 4;  // B
  int64_t seq_len = 0;      // T; 0: config.seq_len
  uint64_t seed = 1337;     // parameter initialisation
  // Keep only each block's input through forward; recompute the block in
  // its backward (see "Memory" above).
  bool checkpoint_activations = false;
  // When set, the initial fp32 value of parameter `param` of `layer` (its
  // numel floats into out) in place of the seeded random one, e.g. weights
  // from a file (Gpt2Init::fill in model/gpt2_weights.h); must not fail.
  std::function<void(int layer, int param, float* out)> init;
};

// InvalidArgument when seq_len exceeds the model's positions or the options
// are inconsistent; the source must outlive the model.
absl::StatusOr<std::unique_ptr<engine::Model>> make_gpt2_model(const Gpt2ModelOptions& options,
                                                               TokenSource* source);

// Host bytes of a Gpt2Model's activations (fp32). saved_bytes: what
// forward keeps for backward (every block's input and output, plus, without
// checkpointing, every block's intermediate tensors; with it, one block's
// worth of recompute space); total_bytes: every buffer the model holds
// between calls (saved, logits, the fp32 wte copy and its head gradient,
// and scratch). InvalidArgument when `model` is not from make_gpt2_model.
struct Gpt2ActivationMemory {
  uint64_t saved_bytes = 0;
  uint64_t total_bytes = 0;
};
absl::StatusOr<Gpt2ActivationMemory> gpt2_activation_memory(const engine::Model& model);
// The same figures before building a model (for `strata plan`), from its
// shape alone; equal to gpt2_activation_memory of the model these options make.
Gpt2ActivationMemory gpt2_activation_memory_for(const Gpt2ModelOptions& options);

// Continues `context` (token ids) by `tokens` ids drawn from the model's
// current weights and returns the new ids: each costs one forward-only pass
// of `engine` over the last seq_len ids (position-by-position causal
// attention makes the padding after the context irrelevant). temperature 0
// takes the most likely id; otherwise softmax(logits / temperature) sampled
// with `seed`. `model` must come from make_gpt2_model and be the model
// `engine` drives; its TokenSource is restored afterwards. InvalidArgument
// for an empty context or an id outside [0, vocab_size), naming it.
absl::StatusOr<std::vector<int32_t>> sample_tokens(engine::TrainingEngine& engine,
                                                   engine::Model& model,
                                                   std::span<const int32_t> context, int tokens,
                                                   double temperature, uint64_t seed);

// sample_tokens for a byte-level model (vocab 256): `prompt`'s bytes ("\n"
// when empty) continued by `tokens` bytes, which are returned.
absl::StatusOr<std::string> sample_text(engine::TrainingEngine& engine, engine::Model& model,
                                        std::string_view prompt, int tokens, double temperature,
                                        uint64_t seed);

}  // namespace strata::model
