// model/cuda kernels against the model/cpu kernels (themselves checked
// against fp64 references in model_kernels_test) on small shapes, for fp32,
// fp16 and bf16. Inputs are rounded to the dtype first and both sides get
// the same rounded inputs (and, for a backward, the same saved forward
// state), so a difference comes from the kernel's own arithmetic and output
// rounding only.
//
// Tolerance: max |gpu - cpu| <= tol * max |cpu| over each output, with tol
// 1e-4 for fp32 (summation order; cuBLAS in pure fp32, no TF32), 1e-2 for
// fp16 (5 bits more than the 2^-11 output rounding) and 3e-2 for bf16
// (2^-8 rounding, several roundings deep). Parameter gradients are fp32 in
// every dtype (see gpt2_kernels.h), but their inputs are rounded, so the
// same tolerance applies.
//
// Every test that launches a kernel probes for a GPU and skips with the
// reason when there is none; argument checks run everywhere.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/status.h"
#include "gpu/cuda_info.h"
#include "gpu/device.h"
#include "gpu/sim_device.h"
#include "model/cpu/attention.h"
#include "model/cpu/cross_entropy.h"
#include "model/cpu/encoder.h"
#include "model/cpu/gelu.h"
#include "model/cpu/layernorm.h"
#include "model/cpu/matmul.h"
#include "model/cpu/residual.h"
#include "model/cuda/gpt2_kernels.h"
#include "model/gpt2_model.h"

namespace strata::model {
namespace {

using Floats = std::vector<float>;

Floats random_floats(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  Floats v(n);
  for (float& x : v) x = dist(gen);
  return v;
}

// x rounded to `t` and back (round to nearest even, as the kernels store).
Floats rounded(Floats x, DType t) {
  if (t == DType::kFloat32) return x;
  std::vector<uint16_t> h(x.size());
  if (t == DType::kFloat16) {
    convert_fp32_to_fp16(x.data(), h.data(), x.size());
    convert_fp16_to_fp32(h.data(), x.data(), x.size());
  } else {
    convert_fp32_to_bf16(x.data(), h.data(), x.size());
    convert_bf16_to_fp32(h.data(), x.data(), x.size());
  }
  return x;
}

Floats random_rounded(size_t n, uint32_t seed, DType t, float scale = 1.0f) {
  return rounded(random_floats(n, seed, scale), t);
}

double tolerance(DType t) {
  switch (t) {
    case DType::kFloat16:
      return 1e-2;
    case DType::kBFloat16:
      return 3e-2;
    default:
      return 1e-4;
  }
}

void expect_close(const Floats& got, const Floats& want, double tol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double scale = 1e-6;
  for (float w : want) scale = std::max(scale, static_cast<double>(std::abs(w)));
  double worst = 0.0;
  size_t at = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::abs(static_cast<double>(got[i]) - want[i]) / scale;
    if (!(err <= worst)) {  // NaN counts as worst
      worst = std::isnan(err) ? INFINITY : err;
      at = i;
    }
  }
  EXPECT_LE(worst, tol) << what << ": worst element [" << at << "] got " << got[at] << ", want "
                        << want[at] << " (max |want| " << scale << ")";
}

class ModelCudaKernelsTest : public ::testing::TestWithParam<DType> {
 protected:
  void SetUp() override {
    const gpu::CudaInfo info = gpu::probe_cuda();
    if (info.devices.empty()) GTEST_SKIP() << "no GPU: " << info.why_none;
    auto device = gpu::make_cuda_device(0);
    ASSERT_TRUE(device.ok()) << device.status();
    device_ = std::move(*device);
    auto stream = device_->create_stream();
    ASSERT_TRUE(stream.ok()) << stream.status();
    stream_ = *stream;
    auto blas = cuda::Blas::create();
    ASSERT_TRUE(blas.ok()) << blas.status();
    blas_ = std::move(*blas);
  }

  void TearDown() override {
    blas_.reset();
    if (device_ == nullptr) return;
    EXPECT_TRUE(device_->synchronize().ok());
    for (void* p : owned_) device_->free(p);
  }

  DType dtype() const { return GetParam(); }

  void* upload_bytes(const void* src, size_t bytes) {
    auto p = device_->allocate(bytes);
    if (!p.ok()) {
      ADD_FAILURE() << p.status();
      return nullptr;
    }
    owned_.push_back(*p);
    absl::Status s = device_->copy_to_device(*p, src, bytes, stream_);
    if (s.ok()) s = device_->synchronize_stream(stream_);
    if (!s.ok()) ADD_FAILURE() << s;
    return *p;
  }

  // x in dtype t on the device.
  void* upload(const Floats& x, DType t) {
    if (t == DType::kFloat32) return upload_bytes(x.data(), x.size() * sizeof(float));
    std::vector<uint16_t> h(x.size());
    if (t == DType::kFloat16) {
      convert_fp32_to_fp16(x.data(), h.data(), x.size());
    } else {
      convert_fp32_to_bf16(x.data(), h.data(), x.size());
    }
    return upload_bytes(h.data(), h.size() * sizeof(uint16_t));
  }
  void* upload(const Floats& x) { return upload(x, dtype()); }
  float* upload_f32(const Floats& x) { return static_cast<float*>(upload(x, DType::kFloat32)); }
  int32_t* upload_i32(const std::vector<int32_t>& x) {
    return static_cast<int32_t*>(upload_bytes(x.data(), x.size() * sizeof(int32_t)));
  }

  // n elements of dtype t, after all queued work (any stream) has finished.
  Floats download(const void* p, size_t n, DType t) {
    Floats out(n);
    absl::Status s = device_->synchronize();
    std::vector<uint16_t> h(t == DType::kFloat32 ? 0 : n);
    void* dst = t == DType::kFloat32 ? static_cast<void*>(out.data()) : h.data();
    if (s.ok()) s = device_->copy_to_host(dst, p, n * dtype_size(t), stream_);
    if (s.ok()) s = device_->synchronize_stream(stream_);
    if (!s.ok()) ADD_FAILURE() << s;
    if (t == DType::kFloat16) convert_fp16_to_fp32(h.data(), out.data(), n);
    if (t == DType::kBFloat16) convert_bf16_to_fp32(h.data(), out.data(), n);
    return out;
  }
  Floats download(const void* p, size_t n) { return download(p, n, dtype()); }
  Floats download_f32(const float* p, size_t n) { return download(p, n, DType::kFloat32); }

  std::unique_ptr<gpu::Device> device_;
  gpu::StreamId stream_ = 0;
  std::unique_ptr<cuda::Blas> blas_;
  std::vector<void*> owned_;
  // Kernels go to the legacy default stream; download() synchronises the device.
  cuda::Stream ks_ = nullptr;
};

TEST_P(ModelCudaKernelsTest, MatmulForwardAndBackward) {
  const DType t = dtype();
  const std::array<std::array<int64_t, 3>, 2> shapes = {{{64, 64, 96}, {37, 24, 10}}};
  for (const auto& [n, c, oc] : shapes) {
    SCOPED_TRACE(testing::Message() << "N=" << n << " C=" << c << " OC=" << oc);
    const Floats x = random_rounded(n * c, 1, t), w = random_rounded(oc * c, 2, t, 0.2f),
                 b = random_rounded(oc, 3, t), dy = random_rounded(n * oc, 4, t);
    Floats ref(n * oc);
    cpu::matmul_forward(ref.data(), x.data(), w.data(), b.data(), n, c, oc);
    void* g_x = upload(x);
    void* g_w = upload(w);
    void* out = upload(Floats(n * oc, 0.0f));
    ASSERT_TRUE(cuda::matmul_forward(*blas_, out, g_x, g_w, upload(b), n, c, oc, t, ks_).ok());
    expect_close(download(out, n * oc), rounded(ref, t), tolerance(t), "matmul out");
    ASSERT_TRUE(cuda::matmul_forward(*blas_, out, g_x, g_w, nullptr, n, c, oc, t, ks_).ok());
    cpu::matmul_forward(ref.data(), x.data(), w.data(), nullptr, n, c, oc);
    expect_close(download(out, n * oc), rounded(ref, t), tolerance(t), "matmul out, no bias");

    // Backward accumulates: start every gradient from random values.
    Floats dinp = random_rounded(n * c, 5, t), dweight = random_floats(oc * c, 6),
           dbias = random_floats(oc, 7);
    void* g_dinp = upload(dinp);
    float* g_dweight = upload_f32(dweight);
    float* g_dbias = upload_f32(dbias);
    ASSERT_TRUE(cuda::matmul_backward(*blas_, g_dinp, g_dweight, g_dbias, upload(dy), g_x, g_w, n,
                                      c, oc, t, ks_)
                    .ok());
    cpu::matmul_backward(dinp.data(), dweight.data(), dbias.data(), dy.data(), x.data(), w.data(),
                         n, c, oc);
    expect_close(download(g_dinp, n * c), rounded(dinp, t), tolerance(t), "matmul dinp");
    expect_close(download_f32(g_dweight, oc * c), dweight, tolerance(t), "matmul dweight");
    expect_close(download_f32(g_dbias, oc), dbias, tolerance(t), "matmul dbias");
  }
}

TEST_P(ModelCudaKernelsTest, LayerNormForwardAndBackward) {
  const DType t = dtype();
  const int64_t n = 37, c = 100;  // rows not a multiple of 8, channels not of 32
  Floats x = random_rounded(n * c, 11, t, 2.0f);
  for (int64_t i = 0; i < n * c; i += c) x[i] += 5.0f;  // shifted rows
  x = rounded(x, t);
  const Floats w = random_rounded(c, 12, t), b = random_rounded(c, 13, t),
               dy = random_rounded(n * c, 14, t);
  Floats out(n * c), mean(n), rstd(n);
  cpu::layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), n, c);
  void* g_x = upload(x);
  void* g_w = upload(w);
  void* g_out = upload(Floats(n * c, 0.0f));
  float* g_mean = upload_f32(Floats(n, 0.0f));
  float* g_rstd = upload_f32(Floats(n, 0.0f));
  ASSERT_TRUE(
      cuda::layernorm_forward(g_out, g_mean, g_rstd, g_x, g_w, upload(b), n, c, t, ks_).ok());
  expect_close(download(g_out, n * c), rounded(out, t), tolerance(t), "layernorm out");
  expect_close(download_f32(g_mean, n), mean, 1e-4, "layernorm mean");
  expect_close(download_f32(g_rstd, n), rstd, 1e-4, "layernorm rstd");

  Floats dinp = random_rounded(n * c, 15, t), dweight = random_floats(c, 16),
         dbias = random_floats(c, 17);
  void* g_dinp = upload(dinp);
  float* g_dweight = upload_f32(dweight);
  float* g_dbias = upload_f32(dbias);
  // Both sides use the CPU's saved statistics.
  ASSERT_TRUE(cuda::layernorm_backward(g_dinp, g_dweight, g_dbias, upload(dy), g_x, g_w,
                                       upload_f32(mean), upload_f32(rstd), n, c, t, ks_)
                  .ok());
  cpu::layernorm_backward(dinp.data(), dweight.data(), dbias.data(), dy.data(), x.data(), w.data(),
                          mean.data(), rstd.data(), n, c);
  expect_close(download(g_dinp, n * c), rounded(dinp, t), tolerance(t), "layernorm dinp");
  expect_close(download_f32(g_dweight, c), dweight, tolerance(t), "layernorm dweight");
  expect_close(download_f32(g_dbias, c), dbias, tolerance(t), "layernorm dbias");
}

TEST_P(ModelCudaKernelsTest, GeluAndResidual) {
  const DType t = dtype();
  const int64_t n = 1001;
  const Floats x = random_rounded(n, 21, t, 3.0f), y = random_rounded(n, 22, t),
               dy = random_rounded(n, 23, t);
  Floats out(n);
  cpu::gelu_forward(out.data(), x.data(), n);
  void* g_x = upload(x);
  void* g_out = upload(Floats(n, 0.0f));
  ASSERT_TRUE(cuda::gelu_forward(g_out, g_x, n, t, ks_).ok());
  expect_close(download(g_out, n), rounded(out, t), tolerance(t), "gelu out");
  Floats dx = random_rounded(n, 24, t);
  void* g_dx = upload(dx);
  void* g_dy = upload(dy);
  ASSERT_TRUE(cuda::gelu_backward(g_dx, g_x, g_dy, n, t, ks_).ok());
  cpu::gelu_backward(dx.data(), x.data(), dy.data(), n);
  expect_close(download(g_dx, n), rounded(dx, t), tolerance(t), "gelu dinp");

  cpu::residual_forward(out.data(), x.data(), y.data(), n);
  ASSERT_TRUE(cuda::residual_forward(g_out, g_x, upload(y), n, t, ks_).ok());
  expect_close(download(g_out, n), rounded(out, t), tolerance(t), "residual out");
  Floats da = random_rounded(n, 25, t), db = random_rounded(n, 26, t);
  void* g_da = upload(da);
  void* g_db = upload(db);
  ASSERT_TRUE(cuda::residual_backward(g_da, g_db, g_dy, n, t, ks_).ok());
  ASSERT_TRUE(cuda::residual_backward(g_da, nullptr, g_dy, n, t, ks_).ok());
  cpu::residual_backward(da.data(), db.data(), dy.data(), n);
  da = rounded(da, t);  // the GPU rounds after each accumulation
  cpu::residual_backward(da.data(), nullptr, dy.data(), n);
  expect_close(download(g_da, n), rounded(da, t), tolerance(t), "residual da");
  expect_close(download(g_db, n), rounded(db, t), tolerance(t), "residual db");
}

TEST_P(ModelCudaKernelsTest, EncoderForwardAndBackward) {
  const DType t = dtype();
  const int64_t b = 2, tl = 6, c = 40, v = 37, max_t = 8;
  // Repeated ids, and ids in the same bucket (token % 32), share gradient rows.
  const std::vector<int32_t> tokens = {3, 3, 0, 36, 4, 3, 35, 0, 3, 1, 36, 4};
  const Floats wte = random_rounded(v * c, 31, t), wpe = random_rounded(max_t * c, 32, t),
               dy = random_rounded(b * tl * c, 33, t);
  Floats out(b * tl * c);
  cpu::encoder_forward(out.data(), tokens.data(), wte.data(), wpe.data(), b, tl, c, v);
  int32_t* g_tokens = upload_i32(tokens);
  void* g_out = upload(Floats(out.size(), 0.0f));
  ASSERT_TRUE(
      cuda::encoder_forward(g_out, g_tokens, upload(wte), upload(wpe), b, tl, c, v, t, ks_).ok());
  expect_close(download(g_out, out.size()), rounded(out, t), tolerance(t), "encoder out");

  Floats dwte = random_floats(v * c, 34), dwpe = random_floats(max_t * c, 35);
  float* g_dwte = upload_f32(dwte);
  float* g_dwpe = upload_f32(dwpe);
  ASSERT_TRUE(
      cuda::encoder_backward(g_dwte, g_dwpe, upload(dy), g_tokens, b, tl, c, v, t, ks_).ok());
  cpu::encoder_backward(dwte.data(), dwpe.data(), dy.data(), tokens.data(), b, tl, c, v);
  // Same inputs, same fp32 sums in the same order: exact.
  EXPECT_EQ(download_f32(g_dwte, dwte.size()), dwte);
  EXPECT_EQ(download_f32(g_dwpe, dwpe.size()), dwpe);
}

struct AttentionShape {
  int64_t b, t, c, nh;
};

TEST_P(ModelCudaKernelsTest, AttentionForwardAndBackward) {
  const DType t = dtype();
  // Head sizes 8, 16, 64 and 128; T across tile edges (32) and T = 1.
  for (const AttentionShape& s :
       {AttentionShape{2, 70, 64, 4}, AttentionShape{1, 33, 128, 2}, AttentionShape{1, 40, 256, 2},
        AttentionShape{1, 1, 8, 1}, AttentionShape{1, 300, 64, 1}}) {
    SCOPED_TRACE(testing::Message()
                 << "B=" << s.b << " T=" << s.t << " C=" << s.c << " NH=" << s.nh);
    const int64_t nc = s.b * s.t * s.c;
    const Floats qkv = random_rounded(3 * nc, 41, t), dy = random_rounded(nc, 42, t);
    Floats out(nc), lse(s.b * s.nh * s.t);
    cpu::attention_forward(out.data(), lse.data(), qkv.data(), s.b, s.t, s.c, s.nh);
    void* g_qkv = upload(qkv);
    void* g_out = upload(Floats(nc, 0.0f));
    float* g_lse = upload_f32(Floats(lse.size(), 0.0f));
    ASSERT_TRUE(cuda::attention_forward(g_out, g_lse, g_qkv, s.b, s.t, s.c, s.nh, t, ks_).ok());
    expect_close(download(g_out, nc), rounded(out, t), tolerance(t), "attention out");
    expect_close(download_f32(g_lse, lse.size()), lse, 1e-5, "attention lse");

    // Backward from the CPU's forward state (out rounded to the dtype).
    const Floats out_t = rounded(out, t);
    Floats dqkv = random_rounded(3 * nc, 43, t);
    void* g_dqkv = upload(dqkv);
    ASSERT_TRUE(cuda::attention_backward(g_dqkv, upload(dy), g_qkv, upload(out_t), upload_f32(lse),
                                         s.b, s.t, s.c, s.nh, t, ks_)
                    .ok());
    cpu::attention_backward(dqkv.data(), dy.data(), qkv.data(), out_t.data(), lse.data(), s.b, s.t,
                            s.c, s.nh);
    expect_close(download(g_dqkv, 3 * nc), rounded(dqkv, t), tolerance(t), "attention dqkv");
  }
}

TEST_P(ModelCudaKernelsTest, CrossEntropyForwardAndBackward) {
  const DType t = dtype();
  const int64_t n = 6, v = 50, vp = 56;
  const std::vector<int32_t> targets = {7, cpu::kIgnoreIndex, 0, 49, 7, 13};
  const Floats logits = random_rounded(n * vp, 51, t, 2.0f);
  Floats losses(n), lse(n);
  const float loss = cpu::cross_entropy_forward(losses.data(), lse.data(), logits.data(),
                                                targets.data(), n, v, vp);
  void* g_logits = upload(logits);
  int32_t* g_targets = upload_i32(targets);
  float* g_losses = upload_f32(Floats(n, -1.0f));
  float* g_lse = upload_f32(Floats(n, 0.0f));
  float* g_mean = upload_f32(Floats(1, 0.0f));
  ASSERT_TRUE(
      cuda::cross_entropy_forward(g_losses, g_lse, g_mean, g_logits, g_targets, n, v, vp, t, ks_)
          .ok());
  expect_close(download_f32(g_losses, n), losses, 1e-5, "cross-entropy losses");
  expect_close(download_f32(g_lse, n), lse, 1e-5, "cross-entropy lse");
  expect_close(download_f32(g_mean, 1), {loss}, 1e-5, "cross-entropy mean loss");

  // dloss as a loss scale would be, so fp16 gradients stay normal numbers.
  const float dloss = 1024.0f;
  Floats dlogits(n * vp);
  cpu::cross_entropy_backward(dlogits.data(), logits.data(), lse.data(), targets.data(), n, v, vp,
                              dloss);
  void* g_dlogits = upload(Floats(n * vp, 9.0f));  // written, not accumulated
  float* g_cpu_lse = upload_f32(lse);
  ASSERT_TRUE(cuda::cross_entropy_backward(g_dlogits, g_logits, g_cpu_lse, g_targets, n, v, vp,
                                           dloss, t, ks_)
                  .ok());
  expect_close(download(g_dlogits, n * vp), rounded(dlogits, t), tolerance(t),
               "cross-entropy dlogits");
  // In place, as the model runs it.
  ASSERT_TRUE(cuda::cross_entropy_backward(g_logits, g_logits, g_cpu_lse, g_targets, n, v, vp,
                                           dloss, t, ks_)
                  .ok());
  expect_close(download(g_logits, n * vp), rounded(dlogits, t), tolerance(t),
               "cross-entropy dlogits in place");
}

INSTANTIATE_TEST_SUITE_P(Dtypes, ModelCudaKernelsTest,
                         ::testing::Values(DType::kFloat32, DType::kFloat16, DType::kBFloat16),
                         [](const ::testing::TestParamInfo<DType>& info) {
                           return std::string(dtype_name(info.param));
                         });

// Argument checks happen before any CUDA call, so they run without a GPU.
TEST(ModelCudaKernelsArgsTest, RejectsBadShapesBeforeLaunching) {
  const absl::StatusCode want =
#ifdef STRATA_HAVE_CUDA
      absl::StatusCode::kInvalidArgument;
#else
      absl::StatusCode::kUnimplemented;
#endif
  float dummy[4] = {};
  // Head size 12: not a multiple of 8.
  absl::Status s =
      cuda::attention_forward(dummy, dummy, dummy, 1, 4, 48, 4, DType::kFloat32, nullptr);
  EXPECT_EQ(s.code(), want) << s;
#ifdef STRATA_HAVE_CUDA
  EXPECT_NE(std::string(s.message()).find("head size"), std::string::npos) << s;
#endif
  // Head size 256: over the limit.
  s = cuda::attention_backward(dummy, dummy, dummy, dummy, dummy, 1, 4, 256, 1, DType::kFloat32,
                               nullptr);
  EXPECT_EQ(s.code(), want) << s;
  s = cuda::layernorm_forward(dummy, dummy, dummy, dummy, dummy, dummy, 0, 8, DType::kFloat16,
                              nullptr);
  EXPECT_EQ(s.code(), want) << s;
  s = cuda::cross_entropy_forward(dummy, dummy, nullptr, dummy, nullptr, 2, 4, 4, DType::kFloat32,
                                  nullptr);
  EXPECT_EQ(s.code(), want) << s;  // null targets
  s = cuda::encoder_forward(dummy, nullptr, dummy, dummy, 1, 1, 4, 4, DType::kFloat32, nullptr);
  EXPECT_EQ(s.code(), want) << s;
}

TEST(ModelCudaKernelsArgsTest, BlasCreateFailsWithAReasonWithoutAGpu) {
  const gpu::CudaInfo info = gpu::probe_cuda();
  if (!info.devices.empty()) GTEST_SKIP() << "a GPU is present; this checks the no-GPU path";
  auto blas = cuda::Blas::create();
  ASSERT_FALSE(blas.ok());
  EXPECT_FALSE(blas.status().message().empty());
}

// Gpt2Model on a device whose memory the host cannot address.

class CountingSource final : public TokenSource {
 public:
  CountingSource(int64_t n, int64_t v) : n_(n), v_(v) {}
  void train_batch(int64_t index, int32_t* inputs, int32_t* targets) override {
    for (int64_t i = 0; i < n_; ++i) {
      inputs[i] = static_cast<int32_t>((7 * i + 3 * index) % v_);
      targets[i] = i % 5 == 4 ? -1 : static_cast<int32_t>((7 * i + 1) % v_);
    }
  }
  void val_batch(int64_t index, int32_t* inputs, int32_t* targets) override {
    train_batch(index + 1000, inputs, targets);
  }

 private:
  int64_t n_, v_;
};

// Not a SimDevice, so the model takes its GPU path; it has no memory.
class NoMemoryDevice final : public gpu::Device {
 public:
  std::string name() const override { return "no-memory"; }
  absl::StatusOr<void*> allocate(size_t) override {
    return absl::ResourceExhaustedError("no-memory device");
  }
  void free(void*) override {}
  gpu::DeviceMemoryStats stats() const override { return {}; }
  gpu::SyncCounters sync_counters() const override { return {}; }
  absl::StatusOr<gpu::StreamId> create_stream() override { return 1; }
  void destroy_stream(gpu::StreamId) override {}
  absl::StatusOr<gpu::EventId> create_event() override { return 1; }
  void destroy_event(gpu::EventId) override {}
  absl::Status record_event(gpu::EventId, gpu::StreamId) override { return absl::OkStatus(); }
  absl::Status wait_event(gpu::StreamId, gpu::EventId) override { return absl::OkStatus(); }
  absl::StatusOr<bool> query_event(gpu::EventId) override { return true; }
  absl::Status synchronize_event(gpu::EventId) override { return absl::OkStatus(); }
  absl::Status synchronize_stream(gpu::StreamId) override { return absl::OkStatus(); }
  absl::Status synchronize() override { return absl::OkStatus(); }
  absl::Status copy_to_device(void*, const void*, size_t, gpu::StreamId) override {
    return absl::OkStatus();
  }
  absl::Status copy_to_host(void*, const void*, size_t, gpu::StreamId) override {
    return absl::OkStatus();
  }
  absl::Status copy_on_device(void*, const void*, size_t, gpu::StreamId) override {
    return absl::OkStatus();
  }
  absl::Status launch_host_function(gpu::StreamId, std::function<void()>) override {
    return absl::InternalError("the GPU path must not run host functions");
  }
  absl::Status cast(const void*, DType, void*, DType, size_t, gpu::StreamId) override {
    return absl::OkStatus();
  }
  absl::Status scale(void*, DType, size_t, float, gpu::StreamId) override {
    return absl::OkStatus();
  }
  absl::Status squared_norm(const void*, DType, size_t, float*, int32_t*, gpu::StreamId) override {
    return absl::OkStatus();
  }
  absl::Status register_host_memory(void*, size_t) override { return absl::OkStatus(); }
  absl::Status unregister_host_memory(void*) override { return absl::OkStatus(); }
};

Gpt2Config tiny_config() {
  return Gpt2Config{
      .name = "cuda-tiny", .n_layer = 2, .n_head = 2, .n_embd = 16, .vocab_size = 32, .seq_len = 8};
}

TEST(Gpt2ModelGpuPathTest, NonHostDeviceTakesTheGpuPathAndReportsWhyItCannotRun) {
  const Gpt2Config cfg = tiny_config();
  CountingSource source(2 * 8, cfg.vocab_size);
  auto model = make_gpt2_model({.config = cfg, .micro_batch = 2, .seq_len = 8}, &source);
  ASSERT_TRUE(model.ok()) << model.status();
  NoMemoryDevice device;
  engine::LayerContext ctx{.device = &device, .stream = 1};
  ctx.params.assign((*model)->layer_params(1).size(), nullptr);
  // Without a GPU, setting up the path fails; with one, the call finds no
  // CUDA stream behind the device's stream to queue its kernels on.
  const absl::Status s = (*model)->forward(1, ctx);
  ASSERT_FALSE(s.ok());
  const bool have_gpu = !gpu::probe_cuda().devices.empty();
  EXPECT_NE(std::string(s.message()).find("gpt2 on a CUDA device"), std::string::npos) << s;
  if (have_gpu) EXPECT_NE(std::string(s.message()).find("no CUDA stream"), std::string::npos) << s;
}

struct ModelRun {
  double loss = 0;
  std::vector<std::vector<Floats>> grads;  // [layer][param]
};

// One forward and backward of `model` on `device` in fp32, as the engine
// drives it, from the model's initial parameters.
absl::StatusOr<ModelRun> run_model(engine::Model& model, gpu::Device& device) {
  STRATA_ASSIGN_OR_RETURN(gpu::StreamId stream, device.create_stream());
  const int layers = model.num_layers();
  std::vector<std::vector<void*>> params(layers), grads(layers);
  std::vector<void*> owned;
  auto alloc = [&](size_t bytes) -> absl::StatusOr<void*> {
    STRATA_ASSIGN_OR_RETURN(void* p, device.allocate(bytes));
    owned.push_back(p);
    return p;
  };
  ModelRun run;
  absl::Status status = [&]() -> absl::Status {
    for (int l = 0; l < layers; ++l) {
      const std::vector<engine::ParamSpec> specs = model.layer_params(l);
      for (size_t i = 0; i < specs.size(); ++i) {
        Floats host(specs[i].numel);
        model.init_param(l, static_cast<int>(i), host.data());
        STRATA_ASSIGN_OR_RETURN(void* p, alloc(host.size() * sizeof(float)));
        STRATA_ASSIGN_OR_RETURN(void* g, alloc(host.size() * sizeof(float)));
        STRATA_RETURN_IF_ERROR(
            device.copy_to_device(p, host.data(), host.size() * sizeof(float), stream));
        STRATA_RETURN_IF_ERROR(device.synchronize_stream(stream));
        params[l].push_back(p);
        grads[l].push_back(g);
      }
    }
    auto context = [&](int l) {
      engine::LayerContext ctx{.device = &device, .stream = stream, .dtype = DType::kFloat32};
      ctx.params.assign(params[l].begin(), params[l].end());
      ctx.grads = grads[l];
      return ctx;
    };
    for (int l = 0; l < layers; ++l) STRATA_RETURN_IF_ERROR(model.forward(l, context(l)));
    STRATA_RETURN_IF_ERROR(device.synchronize());
    run.loss = model.loss();
    for (int l = layers - 1; l >= 0; --l) STRATA_RETURN_IF_ERROR(model.backward(l, context(l)));
    STRATA_RETURN_IF_ERROR(device.synchronize());
    run.grads.resize(layers);
    for (int l = 0; l < layers; ++l) {
      const std::vector<engine::ParamSpec> specs = model.layer_params(l);
      for (size_t i = 0; i < specs.size(); ++i) {
        Floats host(specs[i].numel);
        STRATA_RETURN_IF_ERROR(
            device.copy_to_host(host.data(), grads[l][i], host.size() * sizeof(float), stream));
        STRATA_RETURN_IF_ERROR(device.synchronize_stream(stream));
        run.grads[l].push_back(std::move(host));
      }
    }
    return absl::OkStatus();
  }();
  for (void* p : owned) device.free(p);
  device.destroy_stream(stream);
  if (!status.ok()) return status;
  return run;
}

TEST(Gpt2ModelGpuPathTest, MatchesTheCpuPathOnAGpu) {
  const Gpt2Config cfg = tiny_config();
  const Gpt2ModelOptions options{.config = cfg, .micro_batch = 2, .seq_len = 8, .seed = 5};
  CountingSource source(2 * 8, cfg.vocab_size);

  // The CPU side runs everywhere, which keeps the harness itself tested.
  auto cpu_model = make_gpt2_model(options, &source);
  ASSERT_TRUE(cpu_model.ok()) << cpu_model.status();
  gpu::SimDevice sim;
  auto cpu = run_model(**cpu_model, sim);
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  ASSERT_GT(cpu->loss, 0.0);

  const gpu::CudaInfo info = gpu::probe_cuda();
  if (info.devices.empty()) GTEST_SKIP() << "no GPU: " << info.why_none;

  auto cuda_device = gpu::make_cuda_device(0);
  ASSERT_TRUE(cuda_device.ok()) << cuda_device.status();
  auto gpu_model = make_gpt2_model(options, &source);
  ASSERT_TRUE(gpu_model.ok()) << gpu_model.status();
  auto gpu = run_model(**gpu_model, **cuda_device);
  ASSERT_TRUE(gpu.ok()) << gpu.status();

  EXPECT_NEAR(gpu->loss, cpu->loss, 1e-4 * std::abs(cpu->loss));
  ASSERT_EQ(gpu->grads.size(), cpu->grads.size());
  for (size_t l = 0; l < cpu->grads.size(); ++l) {
    for (size_t i = 0; i < cpu->grads[l].size(); ++i) {
      // A chain of fp32 kernels summing in other orders: looser than one kernel.
      expect_close(gpu->grads[l][i], cpu->grads[l][i], 1e-3,
                   "layer " + std::to_string(l) + " grad " + std::to_string(i));
    }
  }
}

}  // namespace
}  // namespace strata::model
