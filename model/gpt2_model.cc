#include "model/gpt2_model.h"
#include "model/gpt2_params.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/dtype.h"
#include "core/status.h"
#include "model/cpu/attention.h"
#include "model/cpu/cross_entropy.h"
#include "model/cpu/encoder.h"
#include "model/cpu/gelu.h"
#include "model/cpu/layernorm.h"
#include "model/cpu/matmul.h"
#include "model/cpu/residual.h"
#include "model/cuda/gpt2_cuda_model.h"

namespace strata::model {
namespace {

using engine::LayerContext;
using engine::ParamSpec;

// splitmix64: a portable stream, so init does not depend on the C++
// library's distributions.
uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

double uniform01(uint64_t& s) {  // in (0, 1)
  return (static_cast<double>(splitmix64(s) >> 11) + 0.5) / 9007199254740992.0;
}

void fill_normal(float* out, uint64_t n, double stddev, uint64_t seed) {
  uint64_t s = seed;
  for (uint64_t i = 0; i < n; i += 2) {
    const double r = std::sqrt(-2.0 * std::log(uniform01(s)));
    const double a = 2.0 * M_PI * uniform01(s);
    out[i] = static_cast<float>(stddev * r * std::cos(a));
    if (i + 1 < n) out[i + 1] = static_cast<float>(stddev * r * std::sin(a));
  }
}

// Params in fp32: the device memory itself for fp32 (SimDevice memory is
// host memory), else a converted copy in `scratch`.
const float* as_fp32(const void* p, DType dtype, uint64_t n, std::vector<float>& scratch) {
  if (dtype == DType::kFloat32) return static_cast<const float*>(p);
  scratch.resize(n);
  convert_to_fp32(p, dtype, scratch.data(), n);
  return scratch.data();
}

class Gpt2Model final : public engine::Model {
 public:
  Gpt2Model(const Gpt2ModelOptions& o, TokenSource* source)
      : cfg_(o.config),
        b_(o.micro_batch),
        t_(o.seq_len > 0 ? o.seq_len : o.config.seq_len),
        c_(o.config.n_embd),
        v_(o.config.vocab_size),
        nh_(o.config.n_head),
        nl_(o.config.n_layer),
        n_(b_ * t_),
        seed_(o.seed),
        init_(o.init),
        source_(source),
        checkpoint_(o.checkpoint_activations),
        params_(gpt2_layer_params(o.config)) {
    const size_t nc = static_cast<size_t>(n_ * c_);
    inputs_.resize(n_);
    targets_.resize(n_);
    wte32_.resize(static_cast<size_t>(v_ * c_));
    head_dwte_.resize(wte32_.size());
    // Checkpointing: one set, recomputed in each block's backward.
    blocks_.resize(checkpoint_ ? 1 : nl_);
    for (Acts& a : blocks_) {
      a.ln1.resize(nc);
      a.ln1_mean.resize(n_);
      a.ln1_rstd.resize(n_);
      a.qkv.resize(3 * nc);
      a.atty.resize(nc);
      a.lse.resize(static_cast<size_t>(b_ * nh_ * t_));
      a.res2.resize(nc);
      a.ln2.resize(nc);
      a.ln2_mean.resize(n_);
      a.ln2_rstd.resize(n_);
      a.fch.resize(4 * nc);
    }
    // residual_[0] is the embedding's output, residual_[l] block l's.
    residual_.resize(nl_ + 1);
    for (auto& r : residual_) r.resize(nc);
    lnf_.resize(nc);
    lnf_mean_.resize(n_);
    lnf_rstd_.resize(n_);
    logits_.resize(static_cast<size_t>(n_ * v_));
    losses_.resize(n_);
    ce_lse_.resize(n_);
    tmp_.resize(nc);
    dres_.resize(nc);
    dln_.resize(nc);
    datty_.resize(nc);
    dqkv_.resize(3 * nc);
    fchg_.resize(4 * nc);
    dfchg_.resize(4 * nc);
    dfch_.resize(4 * nc);
  }

  int num_layers() const override { return static_cast<int>(nl_) + 2; }

  std::vector<ParamSpec> layer_params(int layer) const override { return params_[layer]; }

  void init_param(int layer, int param, float* out) const override {
    if (init_) return init_(layer, param, out);
    const uint64_t n = layer_params(layer)[param].numel;
    const uint64_t seed = seed_ ^ (0x5851F42D4C957F2DULL * (uint64_t(layer) * 64 + param + 1));
    if (layer == 0) return fill_normal(out, n, 0.02, seed);
    if (layer == nl_ + 1) return std::fill(out, out + n, param == 0 ? 1.0f : 0.0f);
    switch (param) {
      case kLn1W:
      case kLn2W:
        return std::fill(out, out + n, 1.0f);
      case kQkvW:
      case kFcW:
        return fill_normal(out, n, 0.02, seed);
      case kAttnProjW:
      case kFcProjW:  // GPT-2 scales the residual projections by 1/sqrt(2 * n_layer)
        return fill_normal(out, n, 0.02 / std::sqrt(2.0 * static_cast<double>(nl_)), seed);
      default:
        return std::fill(out, out + n, 0.0f);
    }
  }

  // For sample_text(): swap the data source, read the last forward's logits.
  TokenSource* exchange_source(TokenSource* s) { return std::exchange(source_, s); }
  const float* logits_row(int64_t row) const {
    return cuda_ != nullptr ? cuda_->logits_row(row) : logits_.data() + row * v_;
  }
  int64_t seq_len() const { return t_; }
  int64_t micro_batch() const { return b_; }
  int64_t vocab() const { return v_; }

  absl::Status forward(int layer, const LayerContext& ctx) override {
    STRATA_RETURN_IF_ERROR(check_ctx(layer, ctx, false));
    if (layer == 0) {
      // Data is fetched and checked here, on the caller's thread, so a bad
      // token is an error rather than a kernel's STRATA_CHECK.
      std::vector<int32_t> in(n_), tg(n_);
      if (ctx.training) {
        source_->train_batch(ctx.micro_batch, in.data(), tg.data());
      } else {
        source_->val_batch(ctx.micro_batch, in.data(), tg.data());
      }
      for (int64_t i = 0; i < n_; ++i) {
        if (in[i] < 0 || in[i] >= v_ || tg[i] < -1 || tg[i] >= v_) {
          return absl::InvalidArgumentError(
              absl::StrCat(ctx.training ? "training" : "validation", " batch ", ctx.micro_batch,
                           " holds token ", in[i], " / target ", tg[i], " at position ", i,
                           "; ids must be in [0, ", v_, ") (targets may be -1 to be ignored)"));
        }
      }
      if (uses_device_kernels(ctx.device)) {
        STRATA_ASSIGN_OR_RETURN(Gpt2CudaPath * gpu, cuda_path(ctx));
        return gpu->forward_embedding(ctx, in, tg);
      }
      return ctx.device->launch_host_function(
          ctx.stream, [this, ctx, in = std::move(in), tg = std::move(tg)]() mutable {
            inputs_ = std::move(in);
            targets_ = std::move(tg);
            embedding_forward(ctx);
          });
    }
    if (uses_device_kernels(ctx.device)) {
      STRATA_ASSIGN_OR_RETURN(Gpt2CudaPath * gpu, cuda_path(ctx));
      return gpu->forward(layer, ctx);
    }
    if (layer == nl_ + 1) {
      return ctx.device->launch_host_function(ctx.stream, [this, ctx] { head_forward(ctx); });
    }
    return ctx.device->launch_host_function(ctx.stream,
                                            [this, layer, ctx] { block_forward(layer, ctx); });
  }

  absl::Status backward(int layer, const LayerContext& ctx) override {
    STRATA_RETURN_IF_ERROR(check_ctx(layer, ctx, true));
    if (uses_device_kernels(ctx.device)) {
      STRATA_ASSIGN_OR_RETURN(Gpt2CudaPath * gpu, cuda_path(ctx));
      return gpu->backward(layer, ctx, layer_params(layer));
    }
    if (layer == 0) {
      return ctx.device->launch_host_function(ctx.stream, [this, ctx] { embedding_backward(ctx); });
    }
    if (layer == nl_ + 1) {
      return ctx.device->launch_host_function(ctx.stream, [this, ctx] { head_backward(ctx); });
    }
    return ctx.device->launch_host_function(ctx.stream,
                                            [this, layer, ctx] { block_backward(layer, ctx); });
  }

  double loss() const override { return cuda_ != nullptr ? cuda_->loss() : loss_; }

  Gpt2ActivationMemory activation_memory() const {
    auto bytes = [](const auto&... v) { return (uint64_t{0} + ... + v.size()) * sizeof(float); };
    uint64_t acts = 0;
    for (const Acts& a : blocks_) {
      acts += bytes(a.ln1, a.ln1_mean, a.ln1_rstd, a.qkv, a.atty, a.lse, a.res2, a.ln2, a.ln2_mean,
                    a.ln2_rstd, a.fch);
    }
    uint64_t residual = 0;
    for (const auto& r : residual_) residual += bytes(r);
    Gpt2ActivationMemory m;
    m.saved_bytes = acts + residual;
    m.total_bytes = m.saved_bytes + bytes(lnf_, lnf_mean_, lnf_rstd_, logits_, losses_, ce_lse_) +
                    bytes(wte32_, head_dwte_) +
                    bytes(tmp_, dres_, dln_, datty_, dqkv_, fchg_, dfchg_, dfch_) +
                    (inputs_.size() + targets_.size()) * sizeof(int32_t);
    return m;
  }

 private:
  struct Acts {  // what a block's backward needs from its forward
    std::vector<float> ln1, ln1_mean, ln1_rstd, qkv, atty, lse, res2, ln2, ln2_mean, ln2_rstd, fch;
  };

  // The device-kernel path (model/cuda), made on the first call on a device
  // whose memory the host cannot address.
  absl::StatusOr<Gpt2CudaPath*> cuda_path(const LayerContext& ctx) {
    if (cuda_ == nullptr) {
      STRATA_ASSIGN_OR_RETURN(
          cuda_, Gpt2CudaPath::create(*ctx.device, cfg_, b_, t_, ctx.dtype, checkpoint_));
    }
    return cuda_.get();
  }

  absl::Status check_ctx(int layer, const LayerContext& ctx, bool backward) const {
    if (layer < 0 || layer >= num_layers()) {
      return absl::InvalidArgumentError(
          absl::StrCat("gpt2: layer ", layer, " out of range [0, ", num_layers(), ")"));
    }
    const size_t want = layer_params(layer).size();
    if (ctx.params.size() != want || (backward && ctx.grads.size() != want)) {
      return absl::InvalidArgumentError(absl::StrCat("gpt2: layer ", layer, " takes ", want,
                                                     " params and grads; got ", ctx.params.size(),
                                                     " and ", ctx.grads.size()));
    }
    return absl::OkStatus();
  }

  // Gradient buffers in fp32: ctx.grads itself for fp32 (zeroed, since the
  // kernels accumulate), else zeroed scratch that finish_grads() converts.
  std::vector<float*> begin_grads(int layer, const LayerContext& ctx) {
    const std::vector<ParamSpec> specs = layer_params(layer);
    std::vector<float*> g(specs.size());
    grad_scratch_.resize(specs.size());
    for (size_t i = 0; i < specs.size(); ++i) {
      if (ctx.dtype == DType::kFloat32) {
        g[i] = static_cast<float*>(ctx.grads[i]);
      } else {
        grad_scratch_[i].resize(specs[i].numel);
        g[i] = grad_scratch_[i].data();
      }
      std::fill(g[i], g[i] + specs[i].numel, 0.0f);
    }
    return g;
  }

  void finish_grads(int layer, const LayerContext& ctx) {
    if (ctx.dtype == DType::kFloat32) return;
    const std::vector<ParamSpec> specs = layer_params(layer);
    for (size_t i = 0; i < specs.size(); ++i) {
      if (ctx.dtype == DType::kFloat16) {
        convert_fp32_to_fp16(grad_scratch_[i].data(), static_cast<uint16_t*>(ctx.grads[i]),
                             specs[i].numel);
      } else {
        convert_fp32_to_bf16(grad_scratch_[i].data(), static_cast<uint16_t*>(ctx.grads[i]),
                             specs[i].numel);
      }
    }
  }

  std::vector<const float*> params_fp32(int layer, const LayerContext& ctx) {
    const std::vector<ParamSpec> specs = layer_params(layer);
    std::vector<const float*> p(specs.size());
    param_scratch_.resize(std::max(param_scratch_.size(), specs.size()));
    for (size_t i = 0; i < specs.size(); ++i) {
      p[i] = as_fp32(ctx.params[i], ctx.dtype, specs[i].numel, param_scratch_[i]);
    }
    return p;
  }

  void embedding_forward(const LayerContext& ctx) {
    // The head runs after this layer's params are released, so it reads its
    // own fp32 copy of wte, taken here.
    convert_to_fp32(ctx.params[0], ctx.dtype, wte32_.data(), wte32_.size());
    std::vector<float> wpe_scratch;
    const float* wpe = as_fp32(ctx.params[1], ctx.dtype, uint64_t(cfg_.seq_len) * c_, wpe_scratch);
    cpu::encoder_forward(residual_[0].data(), inputs_.data(), wte32_.data(), wpe, b_, t_, c_, v_);
  }

  void embedding_backward(const LayerContext& ctx) {
    std::vector<float*> g = begin_grads(0, ctx);
    // Tied embedding: the head's wte gradient plus the lookup's.
    std::memcpy(g[0], head_dwte_.data(), head_dwte_.size() * sizeof(float));
    cpu::encoder_backward(g[0], g[1], dres_.data(), inputs_.data(), b_, t_, c_, v_);
    finish_grads(0, ctx);
  }

  Acts& block_acts(int layer) { return blocks_[checkpoint_ ? 0 : layer - 1]; }

  void block_forward(int layer, const LayerContext& ctx) {
    const std::vector<const float*> p = params_fp32(layer, ctx);
    Acts& a = block_acts(layer);
    block_forward_acts(layer, p, a);
    const int64_t nc = n_ * c_;
    cpu::gelu_forward(fchg_.data(), a.fch.data(), 4 * nc);
    cpu::matmul_forward(tmp_.data(), fchg_.data(), p[kFcProjW], p[kFcProjB], n_, 4 * c_, c_);
    cpu::residual_forward(residual_[layer].data(), a.res2.data(), tmp_.data(), nc);
  }

  // The block's forward up to what its backward reads (a.fch, the MLP's
  // pre-activation); block_forward finishes it, and a checkpointed backward
  // calls this alone to rebuild `a` from the block's kept input.
  void block_forward_acts(int layer, const std::vector<const float*>& p, Acts& a) {
    const float* x = residual_[layer - 1].data();
    const int64_t nc = n_ * c_;
    cpu::layernorm_forward(a.ln1.data(), a.ln1_mean.data(), a.ln1_rstd.data(), x, p[kLn1W],
                           p[kLn1B], n_, c_);
    cpu::matmul_forward(a.qkv.data(), a.ln1.data(), p[kQkvW], p[kQkvB], n_, c_, 3 * c_);
    cpu::attention_forward(a.atty.data(), a.lse.data(), a.qkv.data(), b_, t_, c_, nh_);
    cpu::matmul_forward(tmp_.data(), a.atty.data(), p[kAttnProjW], p[kAttnProjB], n_, c_, c_);
    cpu::residual_forward(a.res2.data(), x, tmp_.data(), nc);
    cpu::layernorm_forward(a.ln2.data(), a.ln2_mean.data(), a.ln2_rstd.data(), a.res2.data(),
                           p[kLn2W], p[kLn2B], n_, c_);
    cpu::matmul_forward(a.fch.data(), a.ln2.data(), p[kFcW], p[kFcB], n_, c_, 4 * c_);
  }

  // dres_ holds d(loss)/d(block output) on entry and d(loss)/d(block input)
  // on return: both residual branches add into it in place.
  void block_backward(int layer, const LayerContext& ctx) {
    const std::vector<const float*> p = params_fp32(layer, ctx);
    std::vector<float*> g = begin_grads(layer, ctx);
    Acts& a = block_acts(layer);
    if (checkpoint_) block_forward_acts(layer, p, a);
    const float* x = residual_[layer - 1].data();
    const int64_t nc = n_ * c_;
    auto zero = [](std::vector<float>& v) { std::fill(v.begin(), v.end(), 0.0f); };

    // MLP branch. The GELU output is recomputed rather than kept per layer.
    cpu::gelu_forward(fchg_.data(), a.fch.data(), 4 * nc);
    zero(dfchg_);
    cpu::matmul_backward(dfchg_.data(), g[kFcProjW], g[kFcProjB], dres_.data(), fchg_.data(),
                         p[kFcProjW], n_, 4 * c_, c_);
    zero(dfch_);
    cpu::gelu_backward(dfch_.data(), a.fch.data(), dfchg_.data(), 4 * nc);
    zero(dln_);
    cpu::matmul_backward(dln_.data(), g[kFcW], g[kFcB], dfch_.data(), a.ln2.data(), p[kFcW], n_, c_,
                         4 * c_);
    cpu::layernorm_backward(dres_.data(), g[kLn2W], g[kLn2B], dln_.data(), a.res2.data(), p[kLn2W],
                            a.ln2_mean.data(), a.ln2_rstd.data(), n_, c_);
    // Attention branch; dres_ now holds d(res2).
    zero(datty_);
    cpu::matmul_backward(datty_.data(), g[kAttnProjW], g[kAttnProjB], dres_.data(), a.atty.data(),
                         p[kAttnProjW], n_, c_, c_);
    zero(dqkv_);
    cpu::attention_backward(dqkv_.data(), datty_.data(), a.qkv.data(), a.atty.data(), a.lse.data(),
                            b_, t_, c_, nh_);
    zero(dln_);
    cpu::matmul_backward(dln_.data(), g[kQkvW], g[kQkvB], dqkv_.data(), a.ln1.data(), p[kQkvW], n_,
                         c_, 3 * c_);
    cpu::layernorm_backward(dres_.data(), g[kLn1W], g[kLn1B], dln_.data(), x, p[kLn1W],
                            a.ln1_mean.data(), a.ln1_rstd.data(), n_, c_);
    finish_grads(layer, ctx);
  }

  void head_forward(const LayerContext& ctx) {
    const std::vector<const float*> p = params_fp32(nl_ + 1, ctx);
    cpu::layernorm_forward(lnf_.data(), lnf_mean_.data(), lnf_rstd_.data(), residual_[nl_].data(),
                           p[0], p[1], n_, c_);
    cpu::matmul_forward(logits_.data(), lnf_.data(), wte32_.data(), nullptr, n_, c_, v_);
    loss_ = cpu::cross_entropy_forward(losses_.data(), ce_lse_.data(), logits_.data(),
                                       targets_.data(), n_, v_, v_);
  }

  void head_backward(const LayerContext& ctx) {
    const std::vector<const float*> p = params_fp32(nl_ + 1, ctx);
    std::vector<float*> g = begin_grads(nl_ + 1, ctx);
    // In place: the logits are not needed once their gradient is formed.
    cpu::cross_entropy_backward(logits_.data(), logits_.data(), ce_lse_.data(), targets_.data(), n_,
                                v_, v_, static_cast<float>(ctx.loss_grad_scale));
    std::fill(head_dwte_.begin(), head_dwte_.end(), 0.0f);
    std::fill(dln_.begin(), dln_.end(), 0.0f);
    cpu::matmul_backward(dln_.data(), head_dwte_.data(), nullptr, logits_.data(), lnf_.data(),
                         wte32_.data(), n_, c_, v_);
    std::fill(dres_.begin(), dres_.end(), 0.0f);
    cpu::layernorm_backward(dres_.data(), g[0], g[1], dln_.data(), residual_[nl_].data(), p[0],
                            lnf_mean_.data(), lnf_rstd_.data(), n_, c_);
    finish_grads(nl_ + 1, ctx);
  }

  const Gpt2Config cfg_;
  const int64_t b_, t_, c_, v_, nh_, nl_, n_;
  const uint64_t seed_;
  const std::function<void(int, int, float*)> init_;
  TokenSource* source_;
  const bool checkpoint_;  // blocks_ holds one recompute set, not one per block
  const std::vector<std::vector<ParamSpec>> params_;  // per layer

  std::vector<int32_t> inputs_, targets_;
  std::vector<float> wte32_;      // layer 0's wte in fp32, for the tied head
  std::vector<float> head_dwte_;  // the head's wte gradient, added in backward(0)
  std::vector<Acts> blocks_;
  std::vector<std::vector<float>> residual_;
  std::vector<float> lnf_, lnf_mean_, lnf_rstd_, logits_, losses_, ce_lse_;
  // Scratch shared by all layers (the engine runs one layer at a time).
  std::vector<float> tmp_, dres_, dln_, datty_, dqkv_, fchg_, dfchg_, dfch_;
  std::vector<std::vector<float>> param_scratch_, grad_scratch_;
  double loss_ = 0;
  std::unique_ptr<Gpt2CudaPath> cuda_;  // set once a layer ran on a CUDA device
};

}  // namespace

absl::StatusOr<std::unique_ptr<engine::Model>> make_gpt2_model(const Gpt2ModelOptions& options,
                                                               TokenSource* source) {
  STRATA_RETURN_IF_ERROR(validate(options.config), "gpt2 model options");
  const Gpt2Config& c = options.config;
  if (source == nullptr) {
    return absl::InvalidArgumentError("gpt2 model: no TokenSource given");
  }
  if (options.micro_batch < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("gpt2 model: micro_batch must be at least 1 (got ", options.micro_batch, ")"));
  }
  if (options.seq_len < 0 || options.seq_len > c.seq_len) {
    return absl::InvalidArgumentError(
        absl::StrCat("gpt2 model: seq_len ", options.seq_len, " is outside [1, ", c.seq_len,
                     "], the positions of model '", c.name, "'; pass a seq_len of at most ",
                     c.seq_len, " (0 uses ", c.seq_len, ")"));
  }
  return std::unique_ptr<engine::Model>(new Gpt2Model(options, source));
}

namespace {

// Serves the sampling context as every validation batch: the context fills
// the start of each row, the rest is padding, and no target counts.
class ContextSource final : public TokenSource {
 public:
  ContextSource(const std::vector<int32_t>& context, int64_t b, int64_t t)
      : context_(context), b_(b), t_(t) {}
  void train_batch(int64_t, int32_t* inputs, int32_t* targets) override { fill(inputs, targets); }
  void val_batch(int64_t, int32_t* inputs, int32_t* targets) override { fill(inputs, targets); }

 private:
  void fill(int32_t* inputs, int32_t* targets) const {
    for (int64_t r = 0; r < b_; ++r) {
      for (int64_t i = 0; i < t_; ++i) {
        inputs[r * t_ + i] = i < static_cast<int64_t>(context_.size()) ? context_[i] : 0;
        targets[r * t_ + i] = -1;
      }
    }
  }
  const std::vector<int32_t>& context_;
  int64_t b_, t_;
};

}  // namespace

Gpt2ActivationMemory gpt2_activation_memory_for(const Gpt2ModelOptions& o) {
  // Mirrors Gpt2Model's constructor; tests hold the two equal.
  const uint64_t b = o.micro_batch, t = o.seq_len > 0 ? o.seq_len : o.config.seq_len;
  const uint64_t c = o.config.n_embd, v = o.config.vocab_size, nh = o.config.n_head;
  const uint64_t layers = o.config.n_layer, n = b * t, nc = n * c;
  const uint64_t per_block = 11 * nc + 4 * n + b * nh * t;
  const uint64_t saved = (o.checkpoint_activations ? 1 : layers) * per_block + (layers + 1) * nc;
  Gpt2ActivationMemory m;
  m.saved_bytes = saved * sizeof(float);
  // ln_f and its statistics, logits, losses, the wte copy and its head
  // gradient, backward scratch, token ids.
  m.total_bytes =
      (saved + nc + 2 * n + n * v + 2 * n + 2 * v * c + 19 * nc + 2 * n) * sizeof(float);
  return m;
}

absl::StatusOr<Gpt2ActivationMemory> gpt2_activation_memory(const engine::Model& model) {
  const auto* gpt = dynamic_cast<const Gpt2Model*>(&model);
  if (gpt == nullptr) {
    return absl::InvalidArgumentError("gpt2_activation_memory needs a model from make_gpt2_model");
  }
  return gpt->activation_memory();
}

absl::StatusOr<std::vector<int32_t>> sample_tokens(engine::TrainingEngine& engine,
                                                   engine::Model& model,
                                                   std::span<const int32_t> context, int tokens,
                                                   double temperature, uint64_t seed) {
  auto* gpt = dynamic_cast<Gpt2Model*>(&model);
  if (gpt == nullptr) {
    return absl::InvalidArgumentError("sampling needs a model from make_gpt2_model");
  }
  if (tokens < 0 || !(temperature >= 0)) {
    return absl::InvalidArgumentError("sampling needs tokens >= 0 and temperature >= 0");
  }
  if (context.empty()) {
    return absl::InvalidArgumentError("sampling needs a context of at least one token");
  }
  for (size_t i = 0; i < context.size(); ++i) {
    if (context[i] < 0 || context[i] >= gpt->vocab()) {
      return absl::InvalidArgumentError(absl::StrCat("context token ", context[i], " at position ",
                                                     i, " is outside the model's vocabulary [0, ",
                                                     gpt->vocab(), ")"));
    }
  }
  std::vector<int32_t> ids(context.begin(), context.end());
  std::vector<int32_t> window;
  ContextSource source(window, gpt->micro_batch(), gpt->seq_len());
  TokenSource* saved = gpt->exchange_source(&source);
  std::mt19937_64 rng(seed);
  absl::Status status;
  std::vector<double> p(static_cast<size_t>(gpt->vocab()));
  for (int k = 0; k < tokens && status.ok(); ++k) {
    const size_t keep = std::min<size_t>(ids.size(), static_cast<size_t>(gpt->seq_len()));
    window.assign(ids.end() - static_cast<std::ptrdiff_t>(keep), ids.end());
    if (auto v = engine.evaluate(1); !v.ok()) {
      status = v.status();
      break;
    }
    const float* logits = gpt->logits_row(static_cast<int64_t>(keep) - 1);
    int next = static_cast<int>(std::max_element(logits, logits + gpt->vocab()) - logits);
    if (temperature > 0) {
      const double top = logits[next];
      for (int64_t i = 0; i < gpt->vocab(); ++i) p[i] = std::exp((logits[i] - top) / temperature);
      next = std::discrete_distribution<int>(p.begin(), p.end())(rng);
    }
    ids.push_back(next);
  }
  gpt->exchange_source(saved);
  if (!status.ok()) return annotate(status, "sampling");
  return std::vector<int32_t>(ids.begin() + static_cast<std::ptrdiff_t>(context.size()), ids.end());
}

absl::StatusOr<std::string> sample_text(engine::TrainingEngine& engine, engine::Model& model,
                                        std::string_view prompt, int tokens, double temperature,
                                        uint64_t seed) {
  auto* gpt = dynamic_cast<Gpt2Model*>(&model);
  if (gpt == nullptr)
    return absl::InvalidArgumentError("sample_text needs a model from make_gpt2_model");
  if (gpt->vocab() != kGpt2ByteVocab) {
    return absl::FailedPreconditionError("sample_text decodes byte-level models only (vocab 256)");
  }
  const std::string_view text = prompt.empty() ? std::string_view("\n") : prompt;
  std::vector<int32_t> context(text.size());
  for (size_t i = 0; i < text.size(); ++i) context[i] = static_cast<unsigned char>(text[i]);
  STRATA_ASSIGN_OR_RETURN(std::vector<int32_t> ids,
                          sample_tokens(engine, model, context, tokens, temperature, seed));
  std::string out(ids.size(), '\0');
  for (size_t i = 0; i < ids.size(); ++i) out[i] = static_cast<char>(ids[i]);
  return out;
}

std::vector<std::vector<ParamSpec>> gpt2_layer_params(const Gpt2Config& cfg) {
  const uint64_t c = cfg.n_embd;
  std::vector<std::vector<ParamSpec>> layers;
  layers.push_back({{"wte", uint64_t(cfg.vocab_size) * c}, {"wpe", uint64_t(cfg.seq_len) * c}});
  for (int64_t l = 0; l < cfg.n_layer; ++l) {
    layers.push_back({{"ln_1.w", c},
                      {"ln_1.b", c},
                      {"attn.c_attn.w", 3 * c * c},
                      {"attn.c_attn.b", 3 * c},
                      {"attn.c_proj.w", c * c},
                      {"attn.c_proj.b", c},
                      {"ln_2.w", c},
                      {"ln_2.b", c},
                      {"mlp.c_fc.w", 4 * c * c},
                      {"mlp.c_fc.b", 4 * c},
                      {"mlp.c_proj.w", 4 * c * c},
                      {"mlp.c_proj.b", c}});
  }
  layers.push_back({{"ln_f.w", c}, {"ln_f.b", c}});
  return layers;
}

}  // namespace strata::model
