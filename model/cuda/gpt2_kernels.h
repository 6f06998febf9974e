// GPT-2's kernels on a CUDA GPU, with the semantics, shapes and layouts of
// the CPU kernels in model/cpu (read those headers for the maths; this one
// lists only what differs). Every function enqueues work on `stream` and
// returns as soon as it is queued; results are ready once the stream is
// synchronised, as with any CUDA launch.
//
// Dtypes. Activations, weights and their gradients that flow between layers
// (inp, out, dout, dinp, qkv, logits, weight, bias, wte, wpe) are in `dtype`
// (fp32, fp16 or bf16); all arithmetic is fp32 (matmuls: cuBLAS with fp32
// accumulation). Saved statistics (mean, rstd, lse, losses) are fp32, and
// so are parameter gradients (dweight, dbias, dwte, dwpe): they are
// accumulators, summed over rows in fp32, that the caller casts to the
// compute dtype (cast_from_fp32) once a layer is done. Backwards accumulate
// (+=) into their outputs like the CPU kernels, except cross_entropy_backward,
// which writes.
//
// Pointers are device memory on the device current to the calling thread
// (cudaSetDevice); `stream` is a cudaStream_t passed as void* (nullptr is
// the legacy default stream), so that code without CUDA headers can include
// this file.
//
// Determinism: no kernel uses floating-point atomics; every sum runs in a
// fixed order, so a result depends only on the inputs and the GPU model.
// Attention never stores a (T, T) matrix: it streams key (or query) tiles of
// 32 through shared memory with an online softmax; head size must be a
// multiple of 8 and at most 128.
//
// Errors: bad shapes, null required pointers or an unsupported head size are
// InvalidArgument before anything is launched; a failed launch or cuBLAS
// call is Internal (ResourceExhausted for allocation failures) naming the
// kernel. Token ids or targets outside the vocabulary (not ignore_index) are
// a programming error, as in model/cpu: the kernel traps, which poisons the
// CUDA context (the next synchronisation fails); validate data on the host.
// On a build without CUDA (STRATA_CUDA=OFF) every function returns
// Unimplemented (gpt2_kernels_none.cc). Layout: the .cu files hold kernels
// and raw launchers (launch.h), gpt2_kernels.cc the checks, matmul.cc cuBLAS,
// runtime.cc the stream and memory helpers.
//
// Threading: the functions may be called from any thread; a Blas handle is
// internally locked, one per device is enough.
//
//   STRATA_ASSIGN_OR_RETURN(auto blas, cuda::Blas::create());
//   STRATA_RETURN_IF_ERROR(cuda::layernorm_forward(ln1, mean, rstd, x, w, b, n, c, dt, s));
//   STRATA_RETURN_IF_ERROR(
//       cuda::matmul_forward(*blas, qkv, ln1, qkv_w, qkv_b, n, c, 3 * c, dt, s));
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/dtype.h"

namespace strata::model::cuda {

using Stream = void*;  // a cudaStream_t
using Event = void*;   // a cudaEvent_t

// A cuBLAS handle bound to the device current at create().
class Blas {
 public:
  static absl::StatusOr<std::unique_ptr<Blas>> create();
  virtual ~Blas() = default;

 protected:
  Blas() = default;
};

// out (N, OC) = inp (N, C) @ weight (OC, C)^T + bias (OC, nullable).
absl::Status matmul_forward(Blas& blas, void* out, const void* inp, const void* weight,
                            const void* bias, int64_t n, int64_t c, int64_t oc, DType dtype,
                            Stream stream);
// dinp (N, C, dtype) += dout @ weight; dweight (OC, C, fp32) += dout^T @ inp;
// dbias (OC, fp32) += column sums of dout. Any output may be null.
absl::Status matmul_backward(Blas& blas, void* dinp, float* dweight, float* dbias, const void* dout,
                             const void* inp, const void* weight, int64_t n, int64_t c, int64_t oc,
                             DType dtype, Stream stream);

absl::Status layernorm_forward(void* out, float* mean, float* rstd, const void* inp,
                               const void* weight, const void* bias, int64_t n, int64_t c,
                               DType dtype, Stream stream);
// dinp (dtype, nullable) += ...; dweight, dbias (fp32, nullable) += ...
absl::Status layernorm_backward(void* dinp, float* dweight, float* dbias, const void* dout,
                                const void* inp, const void* weight, const float* mean,
                                const float* rstd, int64_t n, int64_t c, DType dtype,
                                Stream stream);

// out may alias inp.
absl::Status gelu_forward(void* out, const void* inp, int64_t n, DType dtype, Stream stream);
absl::Status gelu_backward(void* dinp, const void* inp, const void* dout, int64_t n, DType dtype,
                           Stream stream);

// out may alias a or b; da and db may be null.
absl::Status residual_forward(void* out, const void* a, const void* b, int64_t n, DType dtype,
                              Stream stream);
absl::Status residual_backward(void* da, void* db, const void* dout, int64_t n, DType dtype,
                               Stream stream);

// tokens: (B, T) int32 in device memory.
absl::Status encoder_forward(void* out, const int32_t* tokens, const void* wte, const void* wpe,
                             int64_t b, int64_t t, int64_t c, int64_t v, DType dtype,
                             Stream stream);
// dwte (V, C) and dwpe (max_T, C) are fp32, either may be null.
absl::Status encoder_backward(float* dwte, float* dwpe, const void* dout, const int32_t* tokens,
                              int64_t b, int64_t t, int64_t c, int64_t v, DType dtype,
                              Stream stream);

// qkv (B, T, 3C) and out (B, T, C) in dtype; lse (B, NH, T) fp32.
absl::Status attention_forward(void* out, float* lse, const void* qkv, int64_t b, int64_t t,
                               int64_t c, int64_t nh, DType dtype, Stream stream);
absl::Status attention_backward(void* dqkv, const void* dout, const void* qkv, const void* out,
                                const float* lse, int64_t b, int64_t t, int64_t c, int64_t nh,
                                DType dtype, Stream stream);

// Writes losses (N) and lse (N); when mean_loss (one device float) is not
// null, also the mean loss over counted rows (0 when none count), summed in
// row order in double as on the CPU.
absl::Status cross_entropy_forward(float* losses, float* lse, float* mean_loss, const void* logits,
                                   const int32_t* targets, int64_t n, int64_t v, int64_t vp,
                                   DType dtype, Stream stream, int32_t ignore_index = -1);
// Writes dlogits (N, Vp, dtype; may be logits itself). Each row block
// counts the non-ignored targets itself (N int32 reads), which keeps the
// kernel free of scratch memory.
absl::Status cross_entropy_backward(void* dlogits, const void* logits, const float* lse,
                                    const int32_t* targets, int64_t n, int64_t v, int64_t vp,
                                    float dloss, DType dtype, Stream stream,
                                    int32_t ignore_index = -1);

// Stream and memory helpers, so that callers need no CUDA headers. All act
// on the device current to the calling thread.
// A new non-blocking stream; destroy it with destroy_stream.
absl::StatusOr<Stream> create_stream();
absl::Status destroy_stream(Stream stream);
// Blocks until the work queued on `stream` has finished; reports its errors.
absl::Status synchronize(Stream stream);
// Blocks until all work on the current GPU has finished (teardown).
absl::Status synchronize_device();
// Events (cudaEventDisableTiming): record after the work queued so far on
// `stream`; synchronize_event blocks until that work is done (at once for
// an event never recorded).
absl::StatusOr<Event> create_event();
absl::Status destroy_event(Event event);
absl::Status record_event(Event event, Stream stream);
absl::Status synchronize_event(Event event);
// Device memory (cudaMalloc); free(nullptr) is a no-op.
absl::StatusOr<void*> allocate(size_t bytes);
void free(void* ptr);
// Pinned host memory (cudaMallocHost), which async copies read without a
// staging wait; free_host(nullptr) is a no-op.
absl::StatusOr<void*> allocate_host(size_t bytes);
void free_host(void* ptr);
// Async memset to 0 of `bytes` bytes of device memory.
absl::Status zero(void* ptr, size_t bytes, Stream stream);
// Async copy in any direction (unified addressing). A pageable host buffer
// must stay alive until the stream is synchronised.
absl::Status copy(void* dst, const void* src, size_t bytes, Stream stream);
// dst[i] = src[i] converted to dst_type (round to nearest even).
absl::Status cast_from_fp32(void* dst, DType dst_type, const float* src, int64_t n, Stream stream);

}  // namespace strata::model::cuda
