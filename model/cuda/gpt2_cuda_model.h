// Gpt2CudaPath: Gpt2Model's forward and backward on a GPU with the kernels
// of model/cuda/gpt2_kernels.h, for devices whose memory the host cannot
// address (CudaDevice). Gpt2Model (model/gpt2_model.cc) owns one, creates it
// on the first forward on such a device, and hands it each layer call after
// fetching and validating the data; the layer order, parameter layout, tied
// embedding and loss are Gpt2Model's (see model/gpt2_model.h).
//
// Activations live in device memory in the compute dtype (ctx.dtype, fixed by
// the first call), statistics and parameter gradients in fp32 (cast to the
// compute dtype into ctx.grads when a layer's backward ends). Memory: as
// Gpt2Model's host activations, in the compute dtype, taken with cudaMalloc
// at create() on the device's GPU: not through the Device, so the path does
// not depend on the Device object's lifetime (and its stats leave it out).
//
// Ordering: every kernel and copy is queued on ctx.stream itself (its CUDA
// handle, Device::native_stream), after the engine's waits for the layer's
// parameters and before its gradient transfers, so no layer call waits for
// the GPU: the engine's one wait per step (or per bucket event) covers the
// path's work too. loss() is valid once the engine has waited for the
// stream after the head's forward (an evaluation's forward waits itself, for
// the logits); inputs and targets go through a pinned staging buffer whose
// reuse waits on an event of its last copies (done by then in the engine's
// order). The first backward waits once while the gradient scratch grows.
//
// Errors: the kernels' statuses, annotated with the layer; activation
// checkpointing is Unimplemented here. Not thread-safe (one engine thread).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model.h"
#include "gpu/device.h"
#include "model/cuda/gpt2_kernels.h"
#include "model/gpt2_config.h"

namespace strata::model {

// True when `device` needs the device-kernel path: its memory is not host
// memory (every Device but SimDevice).
bool uses_device_kernels(const gpu::Device* device);

class Gpt2CudaPath {
 public:
  // b, t: micro-batch and sequence length. Allocates every activation.
  static absl::StatusOr<std::unique_ptr<Gpt2CudaPath>> create(gpu::Device& device,
                                                              const Gpt2Config& config, int64_t b,
                                                              int64_t t, DType dtype,
                                                              bool checkpoint_activations);
  ~Gpt2CudaPath();
  Gpt2CudaPath(const Gpt2CudaPath&) = delete;
  Gpt2CudaPath& operator=(const Gpt2CudaPath&) = delete;

  // Layer 0, with the micro-batch's validated inputs and targets (B x T, host).
  absl::Status forward_embedding(const engine::LayerContext& ctx,
                                 const std::vector<int32_t>& inputs,
                                 const std::vector<int32_t>& targets);
  // Layers 1..n_layer + 1.
  absl::Status forward(int layer, const engine::LayerContext& ctx);
  // Any layer; specs is the model's layer_params(layer).
  absl::Status backward(int layer, const engine::LayerContext& ctx,
                        const std::vector<engine::ParamSpec>& specs);

  // The mean loss of the last forward of the head (see Ordering).
  double loss() const { return *host_loss_; }
  // Row `row` of the last evaluation forward's logits (fp32, host copy).
  const float* logits_row(int64_t row) const { return host_logits_.data() + row * v_; }

 private:
  struct Acts {  // device memory; what a block's backward needs
    void *ln1, *qkv, *atty, *res2, *ln2, *fch;
    float *ln1_mean, *ln1_rstd, *lse, *ln2_mean, *ln2_rstd;
  };

  Gpt2CudaPath(const Gpt2Config& config, int64_t b, int64_t t, DType dtype);
  absl::Status init();
  absl::StatusOr<void*> alloc(uint64_t bytes);
  // Checks ctx's dtype and takes its stream's CUDA handle for this call.
  absl::Status begin_call(const engine::LayerContext& ctx);
  absl::Status block_forward(int layer, const engine::LayerContext& ctx);
  absl::Status head_forward(const engine::LayerContext& ctx);
  absl::Status block_backward(int layer, const engine::LayerContext& ctx,
                              const std::vector<float*>& g);
  absl::Status head_backward(const engine::LayerContext& ctx, const std::vector<float*>& g);
  absl::Status embedding_backward(const engine::LayerContext& ctx, const std::vector<float*>& g);

  const Gpt2Config cfg_;
  const int64_t b_, t_, c_, v_, nh_, nl_, n_;
  const DType dtype_;
  cuda::Stream stream_ = nullptr;  // the engine's stream of the current call
  std::unique_ptr<cuda::Blas> blas_;
  std::vector<void*> allocations_;

  int32_t *tokens_ = nullptr, *targets_ = nullptr;
  void* wte_ = nullptr;         // layer 0's wte, kept for the tied head
  float* head_dwte_ = nullptr;  // the head's wte gradient (fp32), added in backward(0)
  std::vector<Acts> blocks_;
  std::vector<void*> residual_;  // residual_[0] the embedding's output, [l] block l's
  void *lnf_ = nullptr, *logits_ = nullptr;
  float *lnf_mean_ = nullptr, *lnf_rstd_ = nullptr, *losses_ = nullptr, *ce_lse_ = nullptr,
        *mean_loss_ = nullptr;
  void *tmp_ = nullptr, *dres_ = nullptr, *dln_ = nullptr, *datty_ = nullptr, *dqkv_ = nullptr,
       *fchg_ = nullptr, *dfchg_ = nullptr, *dfch_ = nullptr;
  float* grads_ = nullptr;  // fp32 gradient scratch for one layer
  uint64_t grads_numel_ = 0;

  int32_t* host_ids_ = nullptr;  // pinned: tokens, targets (n_ each), then the loss
  float* host_loss_ = nullptr;
  cuda::Event ids_copied_ = nullptr;  // recorded after the copies from host_ids_
  std::vector<float> host_logits_;
};

}  // namespace strata::model
