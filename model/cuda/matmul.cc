// Dense layers on cuBLAS (cublasGemmEx, fp32 accumulation); the bias
// broadcast and the bias gradient are small kernels in elementwise.cu.
//
// cuBLAS is column-major; a row-major (R, K) matrix is a column-major
// (K, R) one with leading dimension K. So, with x (N, C), W (OC, C) and
// y (N, OC) row-major:
//   y^T (OC, N)   = W (OC, C)      . x^T (C, N)     -> gemm(T, N, OC, N, C)
//   dx^T (C, N)  += W^T (C, OC)    . dy^T (OC, N)   -> gemm(N, N, C, N, OC)
//   dW^T (C, OC) += x^T (C, N)     . dy (N, OC)     -> gemm(N, T, C, OC, N)
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <climits>
#include <mutex>
#include <string>
#include <type_traits>

#include "model/cuda/gpt2_kernels.h"
#include "model/cuda/launch.h"
#include "model/cuda/status.h"

namespace strata::model::cuda {
namespace {

// cuBLAS is opened on first use rather than linked: a process that never
// runs the GPU path (every CPU run, every other strata command) then does
// not map libcublas/libcublasLt, which costs ~140 MB resident at start-up.
#define STRATA_CUBLAS_STR2(x) #x
#define STRATA_CUBLAS_STR(x) STRATA_CUBLAS_STR2(x)
#define STRATA_CUBLAS_MAJOR STRATA_CUBLAS_STR(CUBLAS_VER_MAJOR)

struct CublasApi {
  decltype(&cublasCreate_v2) create = nullptr;
  decltype(&cublasDestroy_v2) destroy = nullptr;
  decltype(&cublasSetStream_v2) set_stream = nullptr;
  decltype(&cublasSetMathMode) set_math_mode = nullptr;
  // Spelled out: the header overloads cublasGemmEx for C++.
  cublasStatus_t (*gemm_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                            const void*, const void*, cudaDataType, int, const void*, cudaDataType,
                            int, const void*, void*, cudaDataType, int, cublasComputeType_t,
                            cublasGemmAlgo_t) = nullptr;
  decltype(&cublasGetStatusName) status_name = nullptr;
  decltype(&cublasGetStatusString) status_string = nullptr;
};

absl::StatusOr<const CublasApi*> cublas_api() {
  static const absl::StatusOr<CublasApi> api = []() -> absl::StatusOr<CublasApi> {
    std::string tried;
    void* lib = nullptr;
    for (const char* name : {"libcublas.so." STRATA_CUBLAS_MAJOR, "libcublas.so"}) {
      lib = ::dlopen(name, RTLD_NOW | RTLD_LOCAL);
      if (lib != nullptr) break;
      const char* err = ::dlerror();
      tried += std::string(tried.empty() ? "" : "; ") + (err != nullptr ? err : name);
    }
    if (lib == nullptr) {
      return absl::FailedPreconditionError(
          "cuBLAS is not loadable (" + tried +
          "); install the CUDA toolkit's cuBLAS or add its lib folder to LD_LIBRARY_PATH");
    }
    CublasApi a;
    auto bind = [&](auto& fn, const char* symbol) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(::dlsym(lib, symbol));
      return fn != nullptr;
    };
    for (bool ok :
         {bind(a.create, "cublasCreate_v2"), bind(a.destroy, "cublasDestroy_v2"),
          bind(a.set_stream, "cublasSetStream_v2"), bind(a.set_math_mode, "cublasSetMathMode"),
          bind(a.gemm_ex, "cublasGemmEx"), bind(a.status_name, "cublasGetStatusName"),
          bind(a.status_string, "cublasGetStatusString")}) {
      if (!ok) {
        return absl::FailedPreconditionError(
            "the cuBLAS found lacks an entry point strata needs; install "
            "cuBLAS " STRATA_CUBLAS_MAJOR);
      }
    }
    return a;
  }();
  if (!api.ok()) return api.status();
  return &*api;
}

absl::Status blas_status(const CublasApi& api, cublasStatus_t st, const char* what) {
  if (st == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  std::string msg = std::string("cuda::") + what + ": " + api.status_name(st) + " (" +
                    api.status_string(st) + ")";
  if (st == CUBLAS_STATUS_ALLOC_FAILED) return absl::ResourceExhaustedError(msg);
  if (st == CUBLAS_STATUS_NOT_INITIALIZED) {
    return absl::FailedPreconditionError(msg + "; is a GPU present and its driver loaded?");
  }
  return absl::InternalError(msg);
}

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::kFloat16:
      return CUDA_R_16F;
    case DType::kBFloat16:
      return CUDA_R_16BF;
    default:
      return CUDA_R_32F;
  }
}

class CublasBlas final : public Blas {
 public:
  CublasBlas(const CublasApi& api, cublasHandle_t h) : api_(api), handle_(h) {}
  ~CublasBlas() override { api_.destroy(handle_); }

  // C = op(A) op(B) + beta C with A and B in `in_type`; fp32 compute and scalars.
  absl::Status gemm(cudaStream_t stream, cublasOperation_t op_a, cublasOperation_t op_b, int64_t m,
                    int64_t n, int64_t k, const void* a, int64_t lda, const void* b, int64_t ldb,
                    DType in_type, float beta, void* c, cudaDataType_t c_type, int64_t ldc,
                    const char* what) {
    for (int64_t d : {m, n, k, lda, ldb, ldc}) {
      if (d > INT_MAX) return detail::bad_argument(what, "a dimension exceeds cuBLAS's 32-bit int");
    }
    const float alpha = 1.0f;
    // The handle holds the stream: set it and use it under one lock.
    std::lock_guard lock(mu_);
    if (absl::Status s = blas_status(api_, api_.set_stream(handle_, stream), "cublasSetStream");
        !s.ok()) {
      return s;
    }
    return blas_status(
        api_,
        api_.gemm_ex(handle_, op_a, op_b, static_cast<int>(m), static_cast<int>(n),
                     static_cast<int>(k), &alpha, a, cuda_type(in_type), static_cast<int>(lda), b,
                     cuda_type(in_type), static_cast<int>(ldb), &beta, c, c_type,
                     static_cast<int>(ldc), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
        what);
  }

 private:
  const CublasApi& api_;
  std::mutex mu_;
  cublasHandle_t handle_;
};

absl::Status check_shape(const char* fn, int64_t n, int64_t c, int64_t oc) {
  if (n <= 0 || c <= 0 || oc <= 0) return detail::bad_argument(fn, "N, C and OC must be positive");
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Blas>> Blas::create() {
  auto api = cublas_api();
  if (!api.ok()) return api.status();
  const CublasApi& b = **api;
  cublasHandle_t h = nullptr;
  if (absl::Status s = blas_status(b, b.create(&h), "cublasCreate"); !s.ok()) return s;
  // Pure fp32 for fp32 inputs (no TF32), so fp32 results match the CPU's.
  if (absl::Status s = blas_status(b, b.set_math_mode(h, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
      !s.ok()) {
    b.destroy(h);
    return s;
  }
  return std::unique_ptr<Blas>(new CublasBlas(b, h));
}

absl::Status matmul_forward(Blas& blas, void* out, const void* inp, const void* weight,
                            const void* bias, int64_t n, int64_t c, int64_t oc, DType dtype,
                            Stream stream) {
  if (absl::Status s = check_shape("matmul_forward", n, c, oc); !s.ok()) return s;
  if (!out || !inp || !weight) return detail::bad_argument("matmul_forward", "null buffer");
  if (out == inp) return detail::bad_argument("matmul_forward", "out must not alias inp");
  auto cs = static_cast<cudaStream_t>(stream);
  float beta = 0.0f;
  if (bias != nullptr) {
    if (absl::Status s = detail::cuda_status(
            launch::broadcast_bias(out, bias, n, oc, static_cast<int>(dtype), cs),
            "matmul_forward bias kernel");
        !s.ok()) {
      return s;
    }
    beta = 1.0f;
  }
  return static_cast<CublasBlas&>(blas).gemm(cs, CUBLAS_OP_T, CUBLAS_OP_N, oc, n, c, weight, c, inp,
                                             c, dtype, beta, out, cuda_type(dtype), oc,
                                             "matmul_forward gemm");
}

absl::Status matmul_backward(Blas& blas, void* dinp, float* dweight, float* dbias, const void* dout,
                             const void* inp, const void* weight, int64_t n, int64_t c, int64_t oc,
                             DType dtype, Stream stream) {
  if (absl::Status s = check_shape("matmul_backward", n, c, oc); !s.ok()) return s;
  if (!dout || !inp || !weight) return detail::bad_argument("matmul_backward", "null input");
  auto& b = static_cast<CublasBlas&>(blas);
  auto cs = static_cast<cudaStream_t>(stream);
  if (dinp != nullptr) {
    if (absl::Status s = b.gemm(cs, CUBLAS_OP_N, CUBLAS_OP_N, c, n, oc, weight, c, dout, oc, dtype,
                                1.0f, dinp, cuda_type(dtype), c, "matmul_backward dinp gemm");
        !s.ok()) {
      return s;
    }
  }
  if (dweight != nullptr) {
    // fp16/bf16 inputs with an fp32 output: cuBLAS sums the N rows in fp32
    // and adds into the fp32 gradient without rounding to the dtype.
    if (absl::Status s = b.gemm(cs, CUBLAS_OP_N, CUBLAS_OP_T, c, oc, n, inp, c, dout, oc, dtype,
                                1.0f, dweight, CUDA_R_32F, c, "matmul_backward dweight gemm");
        !s.ok()) {
      return s;
    }
  }
  if (dbias != nullptr) {
    return detail::cuda_status(launch::column_sums(dbias, dout, n, oc, static_cast<int>(dtype), cs),
                               "matmul_backward dbias kernel");
  }
  return absl::OkStatus();
}

}  // namespace strata::model::cuda
