// The checked, Status-returning side of model/cuda/gpt2_kernels.h: argument
// checks before anything is launched, then the raw launchers of launch.h.
#include "model/cuda/gpt2_kernels.h"

#include <cstdint>
#include <string>

#include "model/cuda/launch.h"
#include "model/cuda/status.h"

namespace strata::model::cuda {
namespace {

static_assert(static_cast<int>(DType::kFloat32) == launch::kF32 &&
                  static_cast<int>(DType::kFloat16) == launch::kF16 &&
                  static_cast<int>(DType::kBFloat16) == launch::kBF16,
              "launch.h's dtype codes must be DType's values");

using detail::bad_argument;

int code(DType t) { return static_cast<int>(t); }
cudaStream_t native(Stream s) { return static_cast<cudaStream_t>(s); }

absl::Status launched(cudaError_t err, const char* kernel) {
  return detail::cuda_status(err, kernel);
}

absl::Status check_count(const char* fn, int64_t n) {
  if (n < 0) return bad_argument(fn, "negative element count");
  return absl::OkStatus();
}

absl::Status check_encoder(const char* fn, const void* tokens, const void* dense, int64_t b,
                           int64_t t, int64_t c, int64_t v) {
  if (b <= 0 || t <= 0 || c <= 0 || v <= 0) {
    return bad_argument(fn, "B, T, C and V must be positive");
  }
  if (v > INT32_MAX) return bad_argument(fn, "V must fit in int32 token ids");
  if (tokens == nullptr || dense == nullptr) return bad_argument(fn, "null buffer");
  return absl::OkStatus();
}

absl::Status check_layernorm(const char* fn, int64_t n, int64_t c) {
  if (n <= 0 || c <= 0) return bad_argument(fn, "N and C must be positive");
  if ((n + launch::kLayerNormRowsPerBlock - 1) / launch::kLayerNormRowsPerBlock > INT32_MAX) {
    return bad_argument(fn, "too many rows for one launch");
  }
  return absl::OkStatus();
}

absl::Status check_attention(const char* fn, int64_t b, int64_t t, int64_t c, int64_t nh) {
  if (b <= 0 || t <= 0 || c <= 0 || nh <= 0) {
    return bad_argument(fn, "B, T, C and NH must be positive");
  }
  if (c % nh != 0) return bad_argument(fn, "C must be a multiple of NH");
  const int64_t hs = c / nh;
  if (hs % launch::kAttentionHeadMultiple != 0 || hs > launch::kAttentionMaxHead) {
    return bad_argument(fn, "head size C / NH = " + std::to_string(hs) +
                                " unsupported; it must be a multiple of " +
                                std::to_string(launch::kAttentionHeadMultiple) + " and at most " +
                                std::to_string(launch::kAttentionMaxHead));
  }
  const int64_t tiles = (t + launch::kAttentionTile - 1) / launch::kAttentionTile;
  if (b * nh * tiles > INT32_MAX) return bad_argument(fn, "B * NH * T too large for one launch");
  return absl::OkStatus();
}

absl::Status check_cross_entropy(const char* fn, const void* targets, int64_t n, int64_t v,
                                 int64_t vp) {
  if (n <= 0 || v <= 0 || vp < v) return bad_argument(fn, "need N > 0, V > 0 and Vp >= V");
  if (n > INT32_MAX) return bad_argument(fn, "too many rows for one launch");
  if (targets == nullptr) return bad_argument(fn, "targets is null");
  return absl::OkStatus();
}

}  // namespace

absl::Status gelu_forward(void* out, const void* inp, int64_t n, DType dtype, Stream stream) {
  if (absl::Status s = check_count("gelu_forward", n); !s.ok() || n == 0) return s;
  if (!out || !inp) return bad_argument("gelu_forward", "null buffer");
  return launched(launch::gelu_forward(out, inp, n, code(dtype), native(stream)),
                  "gelu_forward kernel");
}

absl::Status gelu_backward(void* dinp, const void* inp, const void* dout, int64_t n, DType dtype,
                           Stream stream) {
  if (absl::Status s = check_count("gelu_backward", n); !s.ok() || n == 0) return s;
  if (!dinp || !inp || !dout) return bad_argument("gelu_backward", "null buffer");
  return launched(launch::gelu_backward(dinp, inp, dout, n, code(dtype), native(stream)),
                  "gelu_backward kernel");
}

absl::Status residual_forward(void* out, const void* a, const void* b, int64_t n, DType dtype,
                              Stream stream) {
  if (absl::Status s = check_count("residual_forward", n); !s.ok() || n == 0) return s;
  if (!out || !a || !b) return bad_argument("residual_forward", "null buffer");
  return launched(launch::residual_forward(out, a, b, n, code(dtype), native(stream)),
                  "residual_forward kernel");
}

absl::Status residual_backward(void* da, void* db, const void* dout, int64_t n, DType dtype,
                               Stream stream) {
  if (absl::Status s = check_count("residual_backward", n); !s.ok() || n == 0) return s;
  if (da == nullptr && db == nullptr) return absl::OkStatus();
  if (dout == nullptr) return bad_argument("residual_backward", "dout is null");
  return launched(launch::residual_backward(da, db, dout, n, code(dtype), native(stream)),
                  "residual_backward kernel");
}

absl::Status cast_from_fp32(void* dst, DType dst_type, const float* src, int64_t n, Stream stream) {
  if (absl::Status s = check_count("cast_from_fp32", n); !s.ok() || n == 0) return s;
  if (!dst || !src) return bad_argument("cast_from_fp32", "null buffer");
  return launched(launch::cast_from_fp32(dst, src, n, code(dst_type), native(stream)),
                  "cast_from_fp32 kernel");
}

absl::Status encoder_forward(void* out, const int32_t* tokens, const void* wte, const void* wpe,
                             int64_t b, int64_t t, int64_t c, int64_t v, DType dtype,
                             Stream stream) {
  if (absl::Status s = check_encoder("encoder_forward", tokens, out, b, t, c, v); !s.ok()) {
    return s;
  }
  if (!wte || !wpe) return bad_argument("encoder_forward", "null buffer");
  return launched(
      launch::encoder_forward(out, tokens, wte, wpe, b, t, c, v, code(dtype), native(stream)),
      "encoder_forward kernel");
}

absl::Status encoder_backward(float* dwte, float* dwpe, const void* dout, const int32_t* tokens,
                              int64_t b, int64_t t, int64_t c, int64_t v, DType dtype,
                              Stream stream) {
  if (absl::Status s = check_encoder("encoder_backward", tokens, dout, b, t, c, v); !s.ok()) {
    return s;
  }
  return launched(
      launch::encoder_backward(dwte, dwpe, dout, tokens, b, t, c, v, code(dtype), native(stream)),
      "encoder_backward kernels");
}

absl::Status layernorm_forward(void* out, float* mean, float* rstd, const void* inp,
                               const void* weight, const void* bias, int64_t n, int64_t c,
                               DType dtype, Stream stream) {
  if (absl::Status s = check_layernorm("layernorm_forward", n, c); !s.ok()) return s;
  if (!out || !mean || !rstd || !inp || !weight || !bias) {
    return bad_argument("layernorm_forward", "null buffer");
  }
  return launched(launch::layernorm_forward(out, mean, rstd, inp, weight, bias, n, c, code(dtype),
                                            native(stream)),
                  "layernorm_forward kernel");
}

absl::Status layernorm_backward(void* dinp, float* dweight, float* dbias, const void* dout,
                                const void* inp, const void* weight, const float* mean,
                                const float* rstd, int64_t n, int64_t c, DType dtype,
                                Stream stream) {
  if (absl::Status s = check_layernorm("layernorm_backward", n, c); !s.ok()) return s;
  if (!dout || !inp || !weight || !mean || !rstd) {
    return bad_argument("layernorm_backward", "null input buffer");
  }
  return launched(launch::layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, n,
                                             c, code(dtype), native(stream)),
                  "layernorm_backward kernels");
}

absl::Status attention_forward(void* out, float* lse, const void* qkv, int64_t b, int64_t t,
                               int64_t c, int64_t nh, DType dtype, Stream stream) {
  if (absl::Status s = check_attention("attention_forward", b, t, c, nh); !s.ok()) return s;
  if (!out || !lse || !qkv) return bad_argument("attention_forward", "null buffer");
  return launched(
      launch::attention_forward(out, lse, qkv, b, t, c, nh, code(dtype), native(stream)),
      "attention_forward kernel");
}

absl::Status attention_backward(void* dqkv, const void* dout, const void* qkv, const void* out,
                                const float* lse, int64_t b, int64_t t, int64_t c, int64_t nh,
                                DType dtype, Stream stream) {
  if (absl::Status s = check_attention("attention_backward", b, t, c, nh); !s.ok()) return s;
  if (!dqkv || !dout || !qkv || !out || !lse) {
    return bad_argument("attention_backward", "null buffer");
  }
  return launched(launch::attention_backward(dqkv, dout, qkv, out, lse, b, t, c, nh, code(dtype),
                                             native(stream)),
                  "attention_backward kernels");
}

absl::Status cross_entropy_forward(float* losses, float* lse, float* mean_loss, const void* logits,
                                   const int32_t* targets, int64_t n, int64_t v, int64_t vp,
                                   DType dtype, Stream stream, int32_t ignore_index) {
  if (absl::Status s = check_cross_entropy("cross_entropy_forward", targets, n, v, vp); !s.ok()) {
    return s;
  }
  if (!losses || !lse || !logits) return bad_argument("cross_entropy_forward", "null buffer");
  return launched(launch::cross_entropy_forward(losses, lse, mean_loss, logits, targets, n, v, vp,
                                                ignore_index, code(dtype), native(stream)),
                  "cross_entropy_forward kernels");
}

absl::Status cross_entropy_backward(void* dlogits, const void* logits, const float* lse,
                                    const int32_t* targets, int64_t n, int64_t v, int64_t vp,
                                    float dloss, DType dtype, Stream stream, int32_t ignore_index) {
  if (absl::Status s = check_cross_entropy("cross_entropy_backward", targets, n, v, vp); !s.ok()) {
    return s;
  }
  if (!dlogits || !logits || !lse) return bad_argument("cross_entropy_backward", "null buffer");
  return launched(launch::cross_entropy_backward(dlogits, logits, lse, targets, n, v, vp, dloss,
                                                 ignore_index, code(dtype), native(stream)),
                  "cross_entropy_backward kernel");
}

}  // namespace strata::model::cuda
