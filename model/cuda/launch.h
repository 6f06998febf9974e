// The raw kernel launchers behind model/cuda/gpt2_kernels.h, one per kernel
// family .cu file. Each enqueues on `stream` and returns the launch error,
// checked right after every launch (cudaGetLastError), and nothing else:
// argument checks and the conversion to absl::Status live in
// gpt2_kernels.cc, so the .cu files include no absl headers (nvcc parses
// them once per file, several seconds each). Shapes must already be valid.
//
// dtype is DType's value (core/dtype.h; gpt2_kernels.cc checks they match).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace strata::model::cuda::launch {

inline constexpr int kF32 = 0, kF16 = 1, kBF16 = 2;

// Attention: a head is split over 8 lanes and at most 128 wide.
inline constexpr int kAttentionHeadMultiple = 8;
inline constexpr int kAttentionMaxHead = 128;
inline constexpr int kAttentionTile = 32;  // query rows (or keys) per block
// LayerNorm row kernels: rows per block.
inline constexpr int kLayerNormRowsPerBlock = 8;

// elementwise.cu
cudaError_t gelu_forward(void* out, const void* inp, int64_t n, int dtype, cudaStream_t stream);
cudaError_t gelu_backward(void* dinp, const void* inp, const void* dout, int64_t n, int dtype,
                          cudaStream_t stream);
cudaError_t residual_forward(void* out, const void* a, const void* b, int64_t n, int dtype,
                             cudaStream_t stream);
cudaError_t residual_backward(void* da, void* db, const void* dout, int64_t n, int dtype,
                              cudaStream_t stream);
cudaError_t encoder_forward(void* out, const int32_t* tokens, const void* wte, const void* wpe,
                            int64_t b, int64_t t, int64_t c, int64_t v, int dtype,
                            cudaStream_t stream);
cudaError_t encoder_backward(float* dwte, float* dwpe, const void* dout, const int32_t* tokens,
                             int64_t b, int64_t t, int64_t c, int64_t v, int dtype,
                             cudaStream_t stream);
cudaError_t cast_from_fp32(void* dst, const float* src, int64_t n, int dtype, cudaStream_t stream);
// out (N, OC) = bias broadcast over rows; dbias (OC, fp32) += column sums of dout (N, OC).
cudaError_t broadcast_bias(void* out, const void* bias, int64_t n, int64_t oc, int dtype,
                           cudaStream_t stream);
cudaError_t column_sums(float* dbias, const void* dout, int64_t n, int64_t oc, int dtype,
                        cudaStream_t stream);

// layernorm.cu
cudaError_t layernorm_forward(void* out, float* mean, float* rstd, const void* inp,
                              const void* weight, const void* bias, int64_t n, int64_t c, int dtype,
                              cudaStream_t stream);
cudaError_t layernorm_backward(void* dinp, float* dweight, float* dbias, const void* dout,
                               const void* inp, const void* weight, const float* mean,
                               const float* rstd, int64_t n, int64_t c, int dtype,
                               cudaStream_t stream);

// attention.cu
cudaError_t attention_forward(void* out, float* lse, const void* qkv, int64_t b, int64_t t,
                              int64_t c, int64_t nh, int dtype, cudaStream_t stream);
cudaError_t attention_backward(void* dqkv, const void* dout, const void* qkv, const void* out,
                               const float* lse, int64_t b, int64_t t, int64_t c, int64_t nh,
                               int dtype, cudaStream_t stream);

// cross_entropy.cu
cudaError_t cross_entropy_forward(float* losses, float* lse, float* mean_loss, const void* logits,
                                  const int32_t* targets, int64_t n, int64_t v, int64_t vp,
                                  int32_t ignore_index, int dtype, cudaStream_t stream);
cudaError_t cross_entropy_backward(void* dlogits, const void* logits, const float* lse,
                                   const int32_t* targets, int64_t n, int64_t v, int64_t vp,
                                   float dloss, int32_t ignore_index, int dtype,
                                   cudaStream_t stream);

}  // namespace strata::model::cuda::launch
