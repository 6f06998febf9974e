// strata._strata: the CPU optimizer step (cpu_adam::optimizer_step) for
// Python, and (offload_bindings.cc) the OffloadOptimizer seam. Arrays arrive as nb::ndarray through
// DLPack (torch tensors, numpy arrays) and are used in place: every argument is .noconvert(), so a
// tensor that does not fit (wrong device, not contiguous) is refused instead
// of being copied. The GIL is released while the step runs. A failed Status
// becomes a Python exception (status.h says which).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "core/dtype.h"
#include "cpu_adam/optimizer.h"
#include "python/src/status.h"

namespace nb = nanobind;

namespace strata::python {

void bind_offload_optimizer(nb::module_& m);  // offload_bindings.cc

namespace {

using CpuArray = nb::ndarray<nb::device::cpu, nb::c_contig>;

absl::StatusOr<DType> dtype_of(const CpuArray& a, const char* what) {
  const nb::dlpack::dtype d = a.dtype();
  if (d == nb::dtype<float>()) return DType::kFloat32;
  if (d.lanes == 1 && d.bits == 16) {
    if (d.code == static_cast<uint8_t>(nb::dlpack::dtype_code::Float)) return DType::kFloat16;
    if (d.code == static_cast<uint8_t>(nb::dlpack::dtype_code::Bfloat)) return DType::kBFloat16;
  }
  return absl::InvalidArgumentError(std::string(what) +
                                    " has an unsupported dtype: strata takes float32, "
                                    "float16 or bfloat16");
}

float* fp32_data(const CpuArray& a, const char* what) {
  if (a.dtype() != nb::dtype<float>()) {
    throw nb::value_error(
        (std::string(what) + " must be float32 (it holds fp32 master data)").c_str());
  }
  return static_cast<float*>(a.data());
}

void check_size(const CpuArray& a, size_t n, const char* what) {
  if (a.size() != n) {
    throw nb::value_error((std::string(what) + " has " + std::to_string(a.size()) +
                           " elements but param has " + std::to_string(n))
                              .c_str());
  }
}

// One fused step over one parameter: param (fp32 master) and the states
// updated in place, grad read, param_out (fp16/bf16) written if given.
void step(const std::string& optimizer, double lr, int64_t step_index, double beta1, double beta2,
          double eps, double weight_decay, bool bias_correction, double grad_scale, CpuArray param,
          std::optional<CpuArray> exp_avg, std::optional<CpuArray> exp_avg_sq, CpuArray grad,
          std::optional<CpuArray> param_out) {
  auto kind = cpu_adam::parse_optimizer(optimizer);
  if (!kind.ok()) raise_status(kind.status());
  const size_t n = param.size();
  cpu_adam::Buffers b{.n = n, .param = fp32_data(param, "param")};
  if (exp_avg) {
    check_size(*exp_avg, n, "exp_avg");
    b.exp_avg = fp32_data(*exp_avg, "exp_avg");
  }
  if (exp_avg_sq) {
    check_size(*exp_avg_sq, n, "exp_avg_sq");
    b.exp_avg_sq = fp32_data(*exp_avg_sq, "exp_avg_sq");
  }
  check_size(grad, n, "grad");
  auto grad_dtype = dtype_of(grad, "grad");
  if (!grad_dtype.ok()) raise_status(grad_dtype.status());
  b.grad = grad.data();
  b.grad_dtype = *grad_dtype;
  if (param_out) {
    check_size(*param_out, n, "param_out");
    auto out_dtype = dtype_of(*param_out, "param_out");
    if (!out_dtype.ok()) raise_status(out_dtype.status());
    if (*out_dtype == DType::kFloat32) {
      throw nb::value_error(
          "param_out must be float16 or bfloat16 (the fp32 param is updated in place)");
    }
    b.param_out = param_out->data();
    b.out_dtype = *out_dtype;
  }
  const cpu_adam::Hyperparams hp{.kind = *kind,
                                 .beta1 = beta1,
                                 .beta2 = beta2,
                                 .eps = eps,
                                 .weight_decay = weight_decay,
                                 .bias_correction = bias_correction};
  const cpu_adam::StepArgs args{.lr = lr, .step = step_index, .grad_scale = grad_scale};
  absl::Status status;
  {
    nb::gil_scoped_release release;
    status = cpu_adam::optimizer_step(hp, args, b);
  }
  if (!status.ok()) raise_status(status);
}

}  // namespace
}  // namespace strata::python

NB_MODULE(_strata, m) {
  using strata::python::step;
  strata::python::bind_offload_optimizer(m);
  namespace cpu_adam = strata::cpu_adam;
  m.doc() = "strata's native core: the fused SIMD CPU optimizer step";
  m.def("step", &step, nb::arg("optimizer"), nb::arg("lr"), nb::arg("step"), nb::arg("beta1"),
        nb::arg("beta2"), nb::arg("eps"), nb::arg("weight_decay"), nb::arg("bias_correction"),
        nb::arg("grad_scale"), nb::arg("param").noconvert(), nb::arg("exp_avg").noconvert().none(),
        nb::arg("exp_avg_sq").noconvert().none(), nb::arg("grad").noconvert(),
        nb::arg("param_out").noconvert().none(),
        "One fused optimizer step over one parameter, in place. optimizer: adam, adamw, "
        "adagrad or lion; param, exp_avg, exp_avg_sq: contiguous fp32 CPU arrays (absent "
        "states: None); grad: fp32, fp16 or bf16; param_out: None or an fp16/bf16 array that "
        "receives the new param. Releases the GIL.");
  m.def(
      "best_isa", [] { return std::string(cpu_adam::isa_name(cpu_adam::best_isa())); },
      "The SIMD instruction set the optimizer step uses on this CPU.");
}
