// MlpTestModel: a small MLP regression model implementing engine::Model with
// real compute, for the training-engine tests on SimDevice.
//
// Layers: Linear + ReLU, ..., Linear; loss = mean((y - t)^2) over the batch
// and outputs, where the target t = A x comes from a fixed linear teacher and
// the inputs x of micro-batch k are a deterministic function of k. Each
// layer has params "w" (out x in) and "b" (out). Forward and backward run as
// host functions on the device stream and compute in fp32 directly on the
// SimDevice memory (host memory), reading params and writing grads in the
// compute dtype. Activations live in the model (host vectors).
//
// Injected faults: poison(k, layer, value) makes the backward of
// micro-batch k write `value` (+inf by default) into the first gradient
// element of `layer` (an overflow, or a NaN); fail_forward / fail_backward
// make that call return an error; delay_backward makes that layer's
// backward wait first (so the engine's worker has stepped the layers whose
// backward ran before it). inputs() and targets() give micro-batch k's data
// for reference computations in the tests.
//
// Data parallel: MlpTestModel(dims, batch, shard, shards) is rank `shard` of
// `shards`: its micro-batch k is rows [shard * batch, (shard + 1) * batch)
// of the (batch * shards)-row micro-batch k of MlpTestModel(dims, batch *
// shards), so N ranks together see what one rank sees.
// interleave_ranks(N) on a one-rank model of `batch` rows makes it see the
// N ranks' micro-batches one after another instead: its micro-batch m is
// rank m % N's micro-batch m / N. Run with N times the ranks'
// gradient_accumulation_steps, it computes the same per-micro-batch
// gradients the N ranks compute (same rows, same rounding to the compute
// dtype) and differs from them only in how they are summed.
//
// Not thread-safe; SimDevice only (it dereferences device pointers).
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/dtype.h"
#include "engine/model.h"

namespace strata::test_models {

class MlpTestModel final : public engine::Model {
 public:
  explicit MlpTestModel(std::vector<int> dims = {16, 32, 32, 4}, int batch = 32, int shard = 0,
                        int shards = 1)
      : dims_(std::move(dims)), batch_(batch), shard_(shard), shards_(shards) {
    const int layers = static_cast<int>(dims_.size()) - 1;
    x_.resize(layers + 1);
    z_.resize(layers);
    dx_.resize(layers + 1);
    uint64_t s = 12345;
    teacher_.resize(static_cast<size_t>(dims_.back()) * dims_.front());
    for (float& a : teacher_) a = uniform(s) * 0.5f;
  }

  int num_layers() const override { return static_cast<int>(dims_.size()) - 1; }
  std::vector<engine::ParamSpec> layer_params(int layer) const override {
    const uint64_t in = dims_[layer], out = dims_[layer + 1];
    return {{"w", out * in}, {"b", out}};
  }
  void init_param(int layer, int param, float* out) const override {
    const uint64_t in = dims_[layer], n = layer_params(layer)[param].numel;
    uint64_t s = 1000 + 10 * layer + param;
    const float a = param == 0 ? std::sqrt(3.0f / static_cast<float>(in)) : 0.1f;
    for (uint64_t i = 0; i < n; ++i) out[i] = a * uniform(s);
  }

  absl::Status forward(int layer, const engine::LayerContext& ctx) override {
    if (ctx.training && fail_forward_ == Fault{ctx.micro_batch, layer}) {
      return absl::InternalError(absl::StrCat("injected forward failure, layer ", layer));
    }
    return ctx.device->launch_host_function(ctx.stream, [this, layer, ctx] {
      const int in = dims_[layer], out = dims_[layer + 1];
      if (layer == 0) make_batch(ctx.micro_batch);
      const std::vector<float> w = to_f32(ctx.params[0], ctx.dtype, uint64_t(out) * in);
      const std::vector<float> b = to_f32(ctx.params[1], ctx.dtype, out);
      std::vector<float>& z = z_[layer];
      std::vector<float>& y = x_[layer + 1];
      z.assign(size_t(batch_) * out, 0.0f);
      y.assign(size_t(batch_) * out, 0.0f);
      const bool last = layer == num_layers() - 1;
      for (int n = 0; n < batch_; ++n) {
        for (int o = 0; o < out; ++o) {
          float acc = b[o];
          for (int i = 0; i < in; ++i) acc += w[size_t(o) * in + i] * x_[layer][size_t(n) * in + i];
          z[size_t(n) * out + o] = acc;
          y[size_t(n) * out + o] = last ? acc : std::max(acc, 0.0f);
        }
      }
      if (last) {
        double sum = 0;
        for (size_t k = 0; k < y.size(); ++k) {
          const double d = double(y[k]) - target_[k];
          sum += d * d;
        }
        loss_ = sum / static_cast<double>(y.size());
      }
    });
  }

  absl::Status backward(int layer, const engine::LayerContext& ctx) override {
    if (fail_backward_ == Fault{ctx.micro_batch, layer}) {
      return absl::InternalError(absl::StrCat("injected backward failure, layer ", layer));
    }
    return ctx.device->launch_host_function(ctx.stream, [this, layer, ctx] {
      if (delay_ == Fault{ctx.micro_batch, layer}) {
        std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms_));
      }
      const int in = dims_[layer], out = dims_[layer + 1];
      const bool last = layer == num_layers() - 1;
      const std::vector<float>& y = x_[layer + 1];
      std::vector<float> dz(size_t(batch_) * out);
      for (size_t k = 0; k < dz.size(); ++k) {
        if (last) {
          dz[k] = static_cast<float>(ctx.loss_grad_scale * 2.0 * (double(y[k]) - target_[k]) /
                                     static_cast<double>(dz.size()));
        } else {
          dz[k] = z_[layer][k] > 0 ? dx_[layer + 1][k] : 0.0f;
        }
      }
      const std::vector<float> w = to_f32(ctx.params[0], ctx.dtype, uint64_t(out) * in);
      std::vector<float> dw(size_t(out) * in, 0.0f), db(out, 0.0f);
      std::vector<float>& dx = dx_[layer];
      dx.assign(size_t(batch_) * in, 0.0f);
      for (int n = 0; n < batch_; ++n) {
        for (int o = 0; o < out; ++o) {
          const float g = dz[size_t(n) * out + o];
          db[o] += g;
          for (int i = 0; i < in; ++i) {
            dw[size_t(o) * in + i] += g * x_[layer][size_t(n) * in + i];
            dx[size_t(n) * in + i] += g * w[size_t(o) * in + i];
          }
        }
      }
      if (poison_ == Fault{ctx.micro_batch, layer}) dw[0] = poison_value_;
      from_f32(dw, ctx.grads[0], ctx.dtype);
      from_f32(db, ctx.grads[1], ctx.dtype);
    });
  }

  double loss() const override { return loss_; }
  void poison(int64_t micro_batch, int layer = 0,
              float value = std::numeric_limits<float>::infinity()) {
    poison_ = {micro_batch, layer};
    poison_value_ = value;
  }
  void fail_forward(int64_t micro_batch, int layer) { fail_forward_ = {micro_batch, layer}; }
  void fail_backward(int64_t micro_batch, int layer) { fail_backward_ = {micro_batch, layer}; }
  void delay_backward(int64_t micro_batch, int layer, int ms) {
    delay_ = {micro_batch, layer};
    delay_ms_ = ms;
  }
  void clear_faults() { poison_ = fail_forward_ = fail_backward_ = delay_ = Fault{}; }

  const std::vector<int>& dims() const { return dims_; }
  int batch() const { return batch_; }
  void interleave_ranks(int ranks) { interleave_ = ranks; }
  int shard() const { return shard_; }
  int shards() const { return shards_; }
  // Micro-batch k's inputs (batch x dims.front()) and targets (batch x dims.back()).
  std::vector<float> inputs(int64_t micro) {
    make_batch(micro);
    return x_[0];
  }
  std::vector<float> targets(int64_t micro) {
    make_batch(micro);
    return target_;
  }

 private:
  // Uniform in [-1, 1), from a 64-bit LCG: the same on every platform.
  static float uniform(uint64_t& s) {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<float>((s >> 40) & 0xFFFFFF) / float(1 << 23) - 1.0f;
  }
  void make_batch(int64_t micro) {
    const int in = dims_.front(), out = dims_.back();
    const int64_t shard = interleave_ > 1 ? micro % interleave_ : shard_;
    if (interleave_ > 1) micro /= interleave_;
    uint64_t s = 0x9E3779B97F4A7C15ULL * static_cast<uint64_t>(micro + 1);
    x_[0].resize(size_t(batch_) * in);
    // The shards before this one draw their rows first.
    for (size_t k = 0; k < size_t(shard) * batch_ * in; ++k) uniform(s);
    for (float& v : x_[0]) v = uniform(s);
    target_.assign(size_t(batch_) * out, 0.0f);
    for (int n = 0; n < batch_; ++n)
      for (int o = 0; o < out; ++o)
        for (int i = 0; i < in; ++i)
          target_[size_t(n) * out + o] += teacher_[size_t(o) * in + i] * x_[0][size_t(n) * in + i];
  }
  static std::vector<float> to_f32(const void* p, DType dt, uint64_t n) {
    std::vector<float> v(n);
    if (dt == DType::kFloat32) std::memcpy(v.data(), p, n * 4);
    if (dt == DType::kFloat16) convert_fp16_to_fp32(static_cast<const uint16_t*>(p), v.data(), n);
    if (dt == DType::kBFloat16) convert_bf16_to_fp32(static_cast<const uint16_t*>(p), v.data(), n);
    return v;
  }
  static void from_f32(const std::vector<float>& v, void* p, DType dt) {
    if (dt == DType::kFloat32) std::memcpy(p, v.data(), v.size() * 4);
    if (dt == DType::kFloat16) convert_fp32_to_fp16(v.data(), static_cast<uint16_t*>(p), v.size());
    if (dt == DType::kBFloat16) convert_fp32_to_bf16(v.data(), static_cast<uint16_t*>(p), v.size());
  }

  std::vector<int> dims_;
  int batch_;
  int shard_ = 0, shards_ = 1;
  int interleave_ = 1;  // interleave_ranks
  std::vector<float> teacher_, target_;
  std::vector<std::vector<float>> x_, z_, dx_;  // per layer: input, pre-activation, d(input)
  double loss_ = 0;
  struct Fault {
    int64_t micro_batch = -1;
    int layer = -1;
    bool operator==(const Fault&) const = default;
  };
  Fault poison_, fail_forward_, fail_backward_, delay_;
  float poison_value_ = 0;
  int delay_ms_ = 0;
};

}  // namespace strata::test_models
