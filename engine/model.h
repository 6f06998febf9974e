// Model: what the training engine drives. A model is a sequence of layers;
// each layer declares named parameters (name, numel) and runs its forward
// and backward on a Device stream, given its parameters in device memory.
//
// The engine owns every parameter, gradient and optimizer state (in its
// TieredStore); the model owns its activations and its input data. For each
// micro-batch the engine calls forward(0..L-1) then backward(L-1..0), one
// layer at a time, handing each call the layer's parameters (in the compute
// dtype: fp16, bf16 or fp32) and, in backward, the buffers the layer must
// fill with its gradients (same dtype, overwritten, not accumulated: the
// engine accumulates across micro-batches itself). The layer's gradient is
// that of loss * ctx.loss_grad_scale, where the engine folds the fp16 loss
// scale and the 1/gradient_accumulation_steps average into loss_grad_scale.
//
// Work is enqueued on ctx.stream (kernels, or launch_host_function on a
// device whose memory the host can address, such as SimDevice); the pointers
// in ctx stay valid until that work has finished. Threading: the engine
// calls a model from one thread at a time. Errors returned by forward /
// backward abort the step (nothing is applied).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "core/dtype.h"
#include "gpu/device.h"

namespace strata::engine {

struct ParamSpec {
  std::string name;  // unique within its layer, e.g. "w", "b"
  uint64_t numel = 0;
};

struct LayerContext {
  gpu::Device* device = nullptr;
  gpu::StreamId stream = 0;
  DType dtype = DType::kFloat32;  // of params and grads
  int64_t micro_batch = 0;        // 0-based count of micro-batches run so far (selects data)
  double loss_grad_scale = 1.0;   // backward: differentiate loss * loss_grad_scale
  // false: an evaluation forward (TrainingEngine::evaluate): micro_batch is
  // a validation batch index, and no backward follows.
  bool training = true;
  std::vector<const void*> params;  // device memory, one per ParamSpec, in dtype
  std::vector<void*> grads;         // backward only: device memory to overwrite
};

class Model {
 public:
  virtual ~Model() = default;

  virtual int num_layers() const = 0;
  virtual std::vector<ParamSpec> layer_params(int layer) const = 0;
  // The initial fp32 value of one parameter (host memory, numel elements).
  virtual void init_param(int layer, int param, float* out) const = 0;

  virtual absl::Status forward(int layer, const LayerContext& ctx) = 0;
  virtual absl::Status backward(int layer, const LayerContext& ctx) = 0;
  // The unscaled loss of the micro-batch whose forward ran last; valid once
  // the work of the last layer's forward has finished.
  virtual double loss() const = 0;
};

}  // namespace strata::engine
