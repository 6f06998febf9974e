// model/cuda/gpt2_kernels.h for builds configured with -DSTRATA_CUDA=OFF:
// every kernel reports that this build has no CUDA.
#include "model/cuda/gpt2_kernels.h"

#include <string>

namespace strata::model::cuda {
namespace {

absl::Status no_cuda(const char* fn) {
  return absl::UnimplementedError(std::string("cuda::") + fn +
                                  ": this build of strata has no CUDA support (STRATA_CUDA=OFF); "
                                  "rebuild on a machine with nvcc to run the GPU kernels");
}

}  // namespace

absl::StatusOr<std::unique_ptr<Blas>> Blas::create() { return no_cuda("Blas::create"); }

absl::Status matmul_forward(Blas&, void*, const void*, const void*, const void*, int64_t, int64_t,
                            int64_t, DType, Stream) {
  return no_cuda("matmul_forward");
}
absl::Status matmul_backward(Blas&, void*, float*, float*, const void*, const void*, const void*,
                             int64_t, int64_t, int64_t, DType, Stream) {
  return no_cuda("matmul_backward");
}
absl::Status layernorm_forward(void*, float*, float*, const void*, const void*, const void*,
                               int64_t, int64_t, DType, Stream) {
  return no_cuda("layernorm_forward");
}
absl::Status layernorm_backward(void*, float*, float*, const void*, const void*, const void*,
                                const float*, const float*, int64_t, int64_t, DType, Stream) {
  return no_cuda("layernorm_backward");
}
absl::Status gelu_forward(void*, const void*, int64_t, DType, Stream) {
  return no_cuda("gelu_forward");
}
absl::Status gelu_backward(void*, const void*, const void*, int64_t, DType, Stream) {
  return no_cuda("gelu_backward");
}
absl::Status residual_forward(void*, const void*, const void*, int64_t, DType, Stream) {
  return no_cuda("residual_forward");
}
absl::Status residual_backward(void*, void*, const void*, int64_t, DType, Stream) {
  return no_cuda("residual_backward");
}
absl::Status encoder_forward(void*, const int32_t*, const void*, const void*, int64_t, int64_t,
                             int64_t, int64_t, DType, Stream) {
  return no_cuda("encoder_forward");
}
absl::Status encoder_backward(float*, float*, const void*, const int32_t*, int64_t, int64_t,
                              int64_t, int64_t, DType, Stream) {
  return no_cuda("encoder_backward");
}
absl::Status attention_forward(void*, float*, const void*, int64_t, int64_t, int64_t, int64_t,
                               DType, Stream) {
  return no_cuda("attention_forward");
}
absl::Status attention_backward(void*, const void*, const void*, const void*, const float*, int64_t,
                                int64_t, int64_t, int64_t, DType, Stream) {
  return no_cuda("attention_backward");
}
absl::Status cross_entropy_forward(float*, float*, float*, const void*, const int32_t*, int64_t,
                                   int64_t, int64_t, DType, Stream, int32_t) {
  return no_cuda("cross_entropy_forward");
}
absl::Status cross_entropy_backward(void*, const void*, const float*, const int32_t*, int64_t,
                                    int64_t, int64_t, float, DType, Stream, int32_t) {
  return no_cuda("cross_entropy_backward");
}

absl::StatusOr<Stream> create_stream() { return no_cuda("create_stream"); }
absl::Status destroy_stream(Stream) { return no_cuda("destroy_stream"); }
absl::Status synchronize(Stream) { return no_cuda("synchronize"); }
absl::Status synchronize_device() { return no_cuda("synchronize_device"); }
absl::StatusOr<Event> create_event() { return no_cuda("create_event"); }
absl::Status destroy_event(Event) { return no_cuda("destroy_event"); }
absl::Status record_event(Event, Stream) { return no_cuda("record_event"); }
absl::Status synchronize_event(Event) { return no_cuda("synchronize_event"); }
absl::StatusOr<void*> allocate(size_t) { return no_cuda("allocate"); }
void free(void*) {}
absl::StatusOr<void*> allocate_host(size_t) { return no_cuda("allocate_host"); }
void free_host(void*) {}
absl::Status zero(void*, size_t, Stream) { return no_cuda("zero"); }
absl::Status copy(void*, const void*, size_t, Stream) { return no_cuda("copy"); }
absl::Status cast_from_fp32(void*, DType, const float*, int64_t, Stream) {
  return no_cuda("cast_from_fp32");
}

}  // namespace strata::model::cuda
