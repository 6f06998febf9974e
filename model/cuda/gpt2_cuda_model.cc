#include "model/cuda/gpt2_cuda_model.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "model/gpt2_params.h"

namespace strata::model {
namespace {

using engine::LayerContext;

// Gradient sub-buffers start on 256-byte boundaries (cuBLAS's preferred
// alignment for tensor-core paths).
constexpr uint64_t kAlignFloats = 64;

uint64_t align_up(uint64_t n) { return (n + kAlignFloats - 1) / kAlignFloats * kAlignFloats; }

}  // namespace

bool uses_device_kernels(const gpu::Device* device) { return !device->host_addressable(); }

Gpt2CudaPath::Gpt2CudaPath(const Gpt2Config& config, int64_t b, int64_t t, DType dtype)
    : cfg_(config),
      b_(b),
      t_(t),
      c_(config.n_embd),
      v_(config.vocab_size),
      nh_(config.n_head),
      nl_(config.n_layer),
      n_(b * t),
      dtype_(dtype) {}

Gpt2CudaPath::~Gpt2CudaPath() {
  // Nothing may still use the buffers. The engine's stream may be gone with
  // its device by now, so this waits for the whole GPU (once, at the end).
  if (stream_ != nullptr) (void)cuda::synchronize_device();
  blas_.reset();
  for (void* p : allocations_) cuda::free(p);
  cuda::free_host(host_ids_);
  if (ids_copied_ != nullptr) (void)cuda::destroy_event(ids_copied_);
}

absl::StatusOr<std::unique_ptr<Gpt2CudaPath>> Gpt2CudaPath::create(gpu::Device& device,
                                                                   const Gpt2Config& config,
                                                                   int64_t b, int64_t t,
                                                                   DType dtype,
                                                                   bool checkpoint_activations) {
  if (checkpoint_activations) {
    return absl::UnimplementedError(
        "gpt2 on a CUDA device: activation checkpointing is not implemented on the GPU path yet; "
        "run without it");
  }
  // The device's calls make its GPU current on this thread, so the stream,
  // the cuBLAS handle and the activations below land on it.
  STRATA_RETURN_IF_ERROR(device.synchronize(), "gpt2 on a CUDA device");
  std::unique_ptr<Gpt2CudaPath> path(new Gpt2CudaPath(config, b, t, dtype));
  STRATA_RETURN_IF_ERROR(path->init(), "gpt2 on a CUDA device");
  return path;
}

absl::StatusOr<void*> Gpt2CudaPath::alloc(uint64_t bytes) {
  STRATA_ASSIGN_OR_RETURN(void* p, cuda::allocate(bytes), "allocating activations");
  allocations_.push_back(p);
  return p;
}

absl::Status Gpt2CudaPath::init() {
  STRATA_ASSIGN_OR_RETURN(blas_, cuda::Blas::create());
  // Tokens, targets and the loss: pinned, so their copies are queued
  // without a staging wait.
  STRATA_ASSIGN_OR_RETURN(void* ids, cuda::allocate_host(2 * n_ * sizeof(int32_t) + sizeof(float)));
  host_ids_ = static_cast<int32_t*>(ids);
  host_loss_ = reinterpret_cast<float*>(host_ids_ + 2 * n_);
  *host_loss_ = 0;
  STRATA_ASSIGN_OR_RETURN(ids_copied_, cuda::create_event());
  const uint64_t es = dtype_size(dtype_), n = n_, nc = n_ * c_, f = sizeof(float);
  auto act = [&](uint64_t elements) { return alloc(elements * es); };
  auto stat = [&](uint64_t elements) -> absl::StatusOr<float*> {
    STRATA_ASSIGN_OR_RETURN(void* p, alloc(elements * f));
    return static_cast<float*>(p);
  };
  STRATA_ASSIGN_OR_RETURN(void* tokens, alloc(n * sizeof(int32_t)));
  STRATA_ASSIGN_OR_RETURN(void* targets, alloc(n * sizeof(int32_t)));
  tokens_ = static_cast<int32_t*>(tokens);
  targets_ = static_cast<int32_t*>(targets);
  STRATA_ASSIGN_OR_RETURN(wte_, act(uint64_t(v_) * c_));
  STRATA_ASSIGN_OR_RETURN(head_dwte_, stat(uint64_t(v_) * c_));
  blocks_.resize(nl_);
  for (Acts& a : blocks_) {
    STRATA_ASSIGN_OR_RETURN(a.ln1, act(nc));
    STRATA_ASSIGN_OR_RETURN(a.qkv, act(3 * nc));
    STRATA_ASSIGN_OR_RETURN(a.atty, act(nc));
    STRATA_ASSIGN_OR_RETURN(a.res2, act(nc));
    STRATA_ASSIGN_OR_RETURN(a.ln2, act(nc));
    STRATA_ASSIGN_OR_RETURN(a.fch, act(4 * nc));
    STRATA_ASSIGN_OR_RETURN(a.ln1_mean, stat(n));
    STRATA_ASSIGN_OR_RETURN(a.ln1_rstd, stat(n));
    STRATA_ASSIGN_OR_RETURN(a.lse, stat(uint64_t(b_) * nh_ * t_));
    STRATA_ASSIGN_OR_RETURN(a.ln2_mean, stat(n));
    STRATA_ASSIGN_OR_RETURN(a.ln2_rstd, stat(n));
  }
  residual_.resize(nl_ + 1);
  for (void*& r : residual_) {
    STRATA_ASSIGN_OR_RETURN(r, act(nc));
  }
  STRATA_ASSIGN_OR_RETURN(lnf_, act(nc));
  STRATA_ASSIGN_OR_RETURN(logits_, act(n * v_));
  STRATA_ASSIGN_OR_RETURN(lnf_mean_, stat(n));
  STRATA_ASSIGN_OR_RETURN(lnf_rstd_, stat(n));
  STRATA_ASSIGN_OR_RETURN(losses_, stat(n));
  STRATA_ASSIGN_OR_RETURN(ce_lse_, stat(n));
  STRATA_ASSIGN_OR_RETURN(mean_loss_, stat(1));
  STRATA_ASSIGN_OR_RETURN(tmp_, act(nc));
  STRATA_ASSIGN_OR_RETURN(dres_, act(nc));
  STRATA_ASSIGN_OR_RETURN(dln_, act(nc));
  STRATA_ASSIGN_OR_RETURN(datty_, act(nc));
  STRATA_ASSIGN_OR_RETURN(dqkv_, act(3 * nc));
  STRATA_ASSIGN_OR_RETURN(fchg_, act(4 * nc));
  STRATA_ASSIGN_OR_RETURN(dfchg_, act(4 * nc));
  STRATA_ASSIGN_OR_RETURN(dfch_, act(4 * nc));
  return absl::OkStatus();
}

absl::Status Gpt2CudaPath::begin_call(const LayerContext& ctx) {
  if (ctx.dtype != dtype_) {
    return absl::FailedPreconditionError(absl::StrCat(
        "gpt2 on a CUDA device: the compute dtype changed from ", std::string(dtype_name(dtype_)),
        " to ", std::string(dtype_name(ctx.dtype)), " between calls; one model runs in one dtype"));
  }
  void* s = ctx.device->native_stream(ctx.stream);
  if (s == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "gpt2 on a CUDA device: the engine's stream ", ctx.stream, " on ", ctx.device->name(),
        " has no CUDA stream to queue the kernels on; this path needs a CUDA device"));
  }
  stream_ = s;
  return absl::OkStatus();
}

absl::Status Gpt2CudaPath::forward_embedding(const LayerContext& ctx,
                                             const std::vector<int32_t>& inputs,
                                             const std::vector<int32_t>& targets) {
  STRATA_RETURN_IF_ERROR(begin_call(ctx));
  // The staging buffer is reused once the last micro-batch's copies ran.
  // The engine has waited for that micro-batch's backward by now, so this
  // returns at once; it guards a caller that has not.
  STRATA_RETURN_IF_ERROR(cuda::synchronize_event(ids_copied_), "gpt2 layer 0 forward");
  const uint64_t ids = n_ * sizeof(int32_t);
  std::memcpy(host_ids_, inputs.data(), ids);
  std::memcpy(host_ids_ + n_, targets.data(), ids);
  STRATA_RETURN_IF_ERROR(cuda::copy(tokens_, host_ids_, ids, stream_));
  STRATA_RETURN_IF_ERROR(cuda::copy(targets_, host_ids_ + n_, ids, stream_));
  STRATA_RETURN_IF_ERROR(cuda::record_event(ids_copied_, stream_));
  // The head runs after layer 0's params are released: keep wte.
  STRATA_RETURN_IF_ERROR(
      cuda::copy(wte_, ctx.params[0], uint64_t(v_) * c_ * dtype_size(dtype_), stream_));
  STRATA_RETURN_IF_ERROR(cuda::encoder_forward(residual_[0], tokens_, ctx.params[0], ctx.params[1],
                                               b_, t_, c_, v_, dtype_, stream_),
                         "gpt2 layer 0 forward");
  return absl::OkStatus();
}

absl::Status Gpt2CudaPath::forward(int layer, const LayerContext& ctx) {
  STRATA_RETURN_IF_ERROR(begin_call(ctx));
  const std::string where = absl::StrCat("gpt2 layer ", layer, " forward");
  if (layer == nl_ + 1) return annotate(head_forward(ctx), where);
  return annotate(block_forward(layer, ctx), where);
}

absl::Status Gpt2CudaPath::block_forward(int layer, const LayerContext& ctx) {
  const std::vector<const void*>& p = ctx.params;
  Acts& a = blocks_[layer - 1];
  const void* x = residual_[layer - 1];
  const int64_t nc = n_ * c_;
  const DType dt = dtype_;
  cuda::Stream s = stream_;
  STRATA_RETURN_IF_ERROR(
      cuda::layernorm_forward(a.ln1, a.ln1_mean, a.ln1_rstd, x, p[kLn1W], p[kLn1B], n_, c_, dt, s));
  STRATA_RETURN_IF_ERROR(
      cuda::matmul_forward(*blas_, a.qkv, a.ln1, p[kQkvW], p[kQkvB], n_, c_, 3 * c_, dt, s));
  STRATA_RETURN_IF_ERROR(cuda::attention_forward(a.atty, a.lse, a.qkv, b_, t_, c_, nh_, dt, s));
  STRATA_RETURN_IF_ERROR(
      cuda::matmul_forward(*blas_, tmp_, a.atty, p[kAttnProjW], p[kAttnProjB], n_, c_, c_, dt, s));
  STRATA_RETURN_IF_ERROR(cuda::residual_forward(a.res2, x, tmp_, nc, dt, s));
  STRATA_RETURN_IF_ERROR(cuda::layernorm_forward(a.ln2, a.ln2_mean, a.ln2_rstd, a.res2, p[kLn2W],
                                                 p[kLn2B], n_, c_, dt, s));
  STRATA_RETURN_IF_ERROR(
      cuda::matmul_forward(*blas_, a.fch, a.ln2, p[kFcW], p[kFcB], n_, c_, 4 * c_, dt, s));
  STRATA_RETURN_IF_ERROR(cuda::gelu_forward(fchg_, a.fch, 4 * nc, dt, s));
  STRATA_RETURN_IF_ERROR(
      cuda::matmul_forward(*blas_, tmp_, fchg_, p[kFcProjW], p[kFcProjB], n_, 4 * c_, c_, dt, s));
  return cuda::residual_forward(residual_[layer], a.res2, tmp_, nc, dt, s);
}

absl::Status Gpt2CudaPath::head_forward(const LayerContext& ctx) {
  const std::vector<const void*>& p = ctx.params;
  cuda::Stream s = stream_;
  STRATA_RETURN_IF_ERROR(cuda::layernorm_forward(lnf_, lnf_mean_, lnf_rstd_, residual_[nl_], p[0],
                                                 p[1], n_, c_, dtype_, s));
  STRATA_RETURN_IF_ERROR(
      cuda::matmul_forward(*blas_, logits_, lnf_, wte_, nullptr, n_, c_, v_, dtype_, s));
  STRATA_RETURN_IF_ERROR(cuda::cross_entropy_forward(losses_, ce_lse_, mean_loss_, logits_,
                                                     targets_, n_, v_, v_, dtype_, s));
  STRATA_RETURN_IF_ERROR(cuda::copy(host_loss_, mean_loss_, sizeof(float), s));
  if (!ctx.training) {
    // Sampling (sample_tokens) reads an evaluation's logits on the host.
    const uint64_t count = uint64_t(n_) * v_;
    host_logits_.resize(count);
    std::vector<uint16_t> half(dtype_ == DType::kFloat32 ? 0 : count);
    void* dst = dtype_ == DType::kFloat32 ? static_cast<void*>(host_logits_.data()) : half.data();
    STRATA_RETURN_IF_ERROR(cuda::copy(dst, logits_, count * dtype_size(dtype_), s));
    STRATA_RETURN_IF_ERROR(ctx.device->synchronize_stream(ctx.stream), "reading the logits");
    if (dtype_ == DType::kFloat16) convert_fp16_to_fp32(half.data(), host_logits_.data(), count);
    if (dtype_ == DType::kBFloat16) convert_bf16_to_fp32(half.data(), host_logits_.data(), count);
  }
  // Training reads the loss after the engine's wait for the backward: no
  // wait here.
  return absl::OkStatus();
}

absl::Status Gpt2CudaPath::backward(int layer, const LayerContext& ctx,
                                    const std::vector<engine::ParamSpec>& specs) {
  STRATA_RETURN_IF_ERROR(begin_call(ctx));
  // fp32 gradient scratch, zeroed: the kernels accumulate. It grows to the
  // largest layer in the first backward (cudaFree waits for the GPU anyway).
  uint64_t total = 0;
  for (const engine::ParamSpec& spec : specs) total += align_up(spec.numel);
  if (total > grads_numel_) {
    STRATA_RETURN_IF_ERROR(ctx.device->synchronize_stream(ctx.stream));
    if (grads_ != nullptr) {
      allocations_.erase(std::find(allocations_.begin(), allocations_.end(), grads_));
      cuda::free(grads_);
      grads_ = nullptr;
      grads_numel_ = 0;
    }
    STRATA_ASSIGN_OR_RETURN(void* p, alloc(total * sizeof(float)), "gradient scratch");
    grads_ = static_cast<float*>(p);
    grads_numel_ = total;
  }
  std::vector<float*> g(specs.size());
  uint64_t offset = 0;
  for (size_t i = 0; i < specs.size(); ++i) {
    g[i] = grads_ + offset;
    offset += align_up(specs[i].numel);
  }
  STRATA_RETURN_IF_ERROR(cuda::zero(grads_, total * sizeof(float), stream_));

  const std::string where = absl::StrCat("gpt2 layer ", layer, " backward");
  if (layer == 0) {
    STRATA_RETURN_IF_ERROR(embedding_backward(ctx, g), where);
  } else if (layer == nl_ + 1) {
    STRATA_RETURN_IF_ERROR(head_backward(ctx, g), where);
  } else {
    STRATA_RETURN_IF_ERROR(block_backward(layer, ctx, g), where);
  }
  for (size_t i = 0; i < specs.size(); ++i) {
    STRATA_RETURN_IF_ERROR(cuda::cast_from_fp32(ctx.grads[i], dtype_, g[i],
                                                static_cast<int64_t>(specs[i].numel), stream_),
                           where);
  }
  return absl::OkStatus();
}

// dres_ holds d(loss)/d(block output) on entry and d(loss)/d(block input) on
// return, as in Gpt2Model::block_backward.
absl::Status Gpt2CudaPath::block_backward(int layer, const LayerContext& ctx,
                                          const std::vector<float*>& g) {
  const std::vector<const void*>& p = ctx.params;
  const Acts& a = blocks_[layer - 1];
  const void* x = residual_[layer - 1];
  const int64_t nc = n_ * c_;
  const uint64_t es = dtype_size(dtype_);
  const DType dt = dtype_;
  cuda::Stream s = stream_;
  // MLP branch; the GELU output is recomputed rather than kept per layer.
  STRATA_RETURN_IF_ERROR(cuda::gelu_forward(fchg_, a.fch, 4 * nc, dt, s));
  STRATA_RETURN_IF_ERROR(cuda::zero(dfchg_, 4 * nc * es, s));
  STRATA_RETURN_IF_ERROR(cuda::matmul_backward(*blas_, dfchg_, g[kFcProjW], g[kFcProjB], dres_,
                                               fchg_, p[kFcProjW], n_, 4 * c_, c_, dt, s));
  STRATA_RETURN_IF_ERROR(cuda::zero(dfch_, 4 * nc * es, s));
  STRATA_RETURN_IF_ERROR(cuda::gelu_backward(dfch_, a.fch, dfchg_, 4 * nc, dt, s));
  STRATA_RETURN_IF_ERROR(cuda::zero(dln_, nc * es, s));
  STRATA_RETURN_IF_ERROR(cuda::matmul_backward(*blas_, dln_, g[kFcW], g[kFcB], dfch_, a.ln2,
                                               p[kFcW], n_, c_, 4 * c_, dt, s));
  STRATA_RETURN_IF_ERROR(cuda::layernorm_backward(dres_, g[kLn2W], g[kLn2B], dln_, a.res2, p[kLn2W],
                                                  a.ln2_mean, a.ln2_rstd, n_, c_, dt, s));
  // Attention branch; dres_ now holds d(res2).
  STRATA_RETURN_IF_ERROR(cuda::zero(datty_, nc * es, s));
  STRATA_RETURN_IF_ERROR(cuda::matmul_backward(*blas_, datty_, g[kAttnProjW], g[kAttnProjB], dres_,
                                               a.atty, p[kAttnProjW], n_, c_, c_, dt, s));
  STRATA_RETURN_IF_ERROR(cuda::zero(dqkv_, 3 * nc * es, s));
  STRATA_RETURN_IF_ERROR(
      cuda::attention_backward(dqkv_, datty_, a.qkv, a.atty, a.lse, b_, t_, c_, nh_, dt, s));
  STRATA_RETURN_IF_ERROR(cuda::zero(dln_, nc * es, s));
  STRATA_RETURN_IF_ERROR(cuda::matmul_backward(*blas_, dln_, g[kQkvW], g[kQkvB], dqkv_, a.ln1,
                                               p[kQkvW], n_, c_, 3 * c_, dt, s));
  return cuda::layernorm_backward(dres_, g[kLn1W], g[kLn1B], dln_, x, p[kLn1W], a.ln1_mean,
                                  a.ln1_rstd, n_, c_, dt, s);
}

absl::Status Gpt2CudaPath::head_backward(const LayerContext& ctx, const std::vector<float*>& g) {
  const std::vector<const void*>& p = ctx.params;
  const uint64_t es = dtype_size(dtype_);
  cuda::Stream s = stream_;
  // In place: the logits are not needed once their gradient is formed.
  STRATA_RETURN_IF_ERROR(cuda::cross_entropy_backward(logits_, logits_, ce_lse_, targets_, n_, v_,
                                                      v_, static_cast<float>(ctx.loss_grad_scale),
                                                      dtype_, s));
  STRATA_RETURN_IF_ERROR(cuda::zero(head_dwte_, uint64_t(v_) * c_ * sizeof(float), s));
  STRATA_RETURN_IF_ERROR(cuda::zero(dln_, uint64_t(n_) * c_ * es, s));
  STRATA_RETURN_IF_ERROR(cuda::matmul_backward(*blas_, dln_, head_dwte_, nullptr, logits_, lnf_,
                                               wte_, n_, c_, v_, dtype_, s));
  STRATA_RETURN_IF_ERROR(cuda::zero(dres_, uint64_t(n_) * c_ * es, s));
  return cuda::layernorm_backward(dres_, g[0], g[1], dln_, residual_[nl_], p[0], lnf_mean_,
                                  lnf_rstd_, n_, c_, dtype_, s);
}

absl::Status Gpt2CudaPath::embedding_backward(const LayerContext& ctx,
                                              const std::vector<float*>& g) {
  // Tied embedding: the head's wte gradient plus the lookup's.
  STRATA_RETURN_IF_ERROR(cuda::copy(g[0], head_dwte_, uint64_t(v_) * c_ * sizeof(float), stream_));
  return cuda::encoder_backward(g[0], g[1], dres_, tokens_, b_, t_, c_, v_, dtype_, stream_);
}

}  // namespace strata::model
