// strata._strata.OffloadOptimizer: engine::OffloadOptimizer for Python
// (strata.torch.OffloadOptimizer drives it from torch hooks).
//
// Tensors cross as nb::ndarray (DLPack), never copied: add_param binds the
// framework's param and a gradient buffer it owns by their data pointers
// (CPU tensors: ParamBinding::kHost; CUDA tensors: kDevice on a CudaDevice),
// and the wrapper keeps a reference to each for its own lifetime, so the
// memory strata writes in finish_step() cannot be freed under it. State
// reads return a new fp32 torch tensor that owns strata's buffer.
//
// The GIL is released in every call that does strata work (grad_ready,
// finish_step, state I/O, checkpoints), so backward hooks on other threads
// and Python code keep running. Errors become exceptions (status.h).
// Threading is the seam's: grad_ready from any thread, the rest from one.
//
// With a daemon session (daemon_session non-empty) the steps run in stratad
// (daemon::BindingClient): the local engine::OffloadOptimizer only keeps the
// registration; CPU tensors are copied to and from the session's shared
// memory, CUDA tensors through it on the optimizer's CUDA device (which pins
// it for DMA) exactly as in-process. report_overflow, write_state,
// set_optimizer_steps and set_group are requests to the session; the
// groups in force are the session's (group() reads them from the client).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "core/config/ds_config.h"
#include "core/dtype.h"
#include "daemon/binding_client.h"
#include "daemon/protocol.h"
#include "engine/offload_optimizer.h"
#include "gpu/device.h"
#include "gpu/sim_device.h"
#include "python/src/status.h"

namespace nb = nanobind;

namespace strata::python {
namespace {

using AnyArray = nb::ndarray<nb::c_contig>;
using Fp32Cpu = nb::ndarray<float, nb::device::cpu, nb::c_contig>;
using Fp32Tensor = nb::ndarray<nb::pytorch, float, nb::ndim<1>>;

absl::StatusOr<DType> dtype_of(const AnyArray& a) {
  const nb::dlpack::dtype d = a.dtype();
  if (d == nb::dtype<float>()) return DType::kFloat32;
  if (d.lanes == 1 && d.bits == 16) {
    if (d.code == static_cast<uint8_t>(nb::dlpack::dtype_code::Float)) return DType::kFloat16;
    if (d.code == static_cast<uint8_t>(nb::dlpack::dtype_code::Bfloat)) return DType::kBFloat16;
  }
  return absl::InvalidArgumentError(
      "unsupported dtype: strata takes float32, float16 or bfloat16 tensors");
}

absl::StatusOr<engine::StateKind> parse_state_kind(const std::string& name) {
  if (name == "master") return engine::StateKind::kMaster;
  if (name == "exp_avg") return engine::StateKind::kExpAvg;
  if (name == "exp_avg_sq") return engine::StateKind::kExpAvgSq;
  if (name == "grad_accum") return engine::StateKind::kGradAccum;
  return absl::InvalidArgumentError("unknown state '" + name +
                                    "': one of master, exp_avg, exp_avg_sq, grad_accum");
}

// A 1-D fp32 torch tensor that owns `values` (moved, not copied).
Fp32Tensor to_tensor(std::vector<float> values) {
  auto* owned = new std::vector<float>(std::move(values));
  nb::capsule owner(owned, [](void* p) noexcept { delete static_cast<std::vector<float>*>(p); });
  const size_t shape[1] = {owned->size()};
  return Fp32Tensor(owned->data(), 1, shape, owner);
}

engine::GroupHyperparams make_group(double lr, double beta1, double beta2, double eps,
                                    double weight_decay, bool bias_correction) {
  return {.lr = lr,
          .beta1 = beta1,
          .beta2 = beta2,
          .eps = eps,
          .weight_decay = weight_decay,
          .bias_correction = bias_correction};
}

nb::dict group_dict(const engine::GroupHyperparams& hp) {
  nb::dict d;
  d["lr"] = hp.lr;
  d["beta1"] = hp.beta1;
  d["beta2"] = hp.beta2;
  d["eps"] = hp.eps;
  d["weight_decay"] = hp.weight_decay;
  d["bias_correction"] = hp.bias_correction;
  return d;
}

nb::dict result_dict(const engine::OptimizerStepResult& r) {
  nb::dict d;
  d["step"] = r.step;
  d["loss_scale"] = r.loss_scale;
  d["skipped"] = r.skipped;
  d["overflow"] = r.overflow;
  d["grad_norm"] = r.grad_norm;
  d["clip_coef"] = r.clip_coef;
  d["lr"] = r.lr;
  d["speculative_buckets"] = r.speculative_buckets;
  d["rolled_back_buckets"] = r.rolled_back_buckets;
  d["grad_seconds"] = r.grad_seconds;
  d["optimizer_seconds"] = r.optimizer_seconds;
  return d;
}

// The parsed config and its warnings; one parser (core/config) for every caller.
config::DsConfig parse_config(const std::string& json_text, const std::string& source,
                              std::vector<std::string>* warnings) {
  return value_or_raise(config::parse_ds_config(json_text, source, warnings));
}

class PyOffloadOptimizer {
 public:
  // device: "cpu" (params and grads in host memory; a SimDevice stands in
  // for the accelerator the seam expects) or "cuda:N".
  PyOffloadOptimizer(const std::string& config_json, const std::string& source,
                     const std::string& device, bool use_schedule, bool allow_buffered_io,
                     const std::string& speculation, const std::string& daemon_socket,
                     const std::string& daemon_session) {
    const config::DsConfig cfg = parse_config(config_json, source, &warnings_);
    if (!daemon_session.empty()) {
      check(daemon::check_session_name(daemon_session));
      remote_options_ =
          daemon::RemoteOptions{.socket_path = daemon_socket, .session = daemon_session};
      spec_.config_json = config_json;
      spec_.use_schedule = use_schedule;
      spec_.allow_buffered_io = allow_buffered_io;
    }
    if (device == "cpu") {
      // Nothing of a CPU model lives on this device: the seam's placement
      // counts the framework's params as device-side, so its capacity is no
      // limit, and neither copies nor synchronisations take modelled time
      // (there is no GPU whose costs to charge).
      device_ = std::make_unique<gpu::SimDevice>(gpu::host_mode_options(uint64_t{1} << 50));
      device_is_cuda_ = false;
    } else if (device.rfind("cuda", 0) == 0) {
      int ordinal = 0;
      if (device.size() > 5 && device[4] == ':') ordinal = std::stoi(device.substr(5));
      device_ = value_or_raise(gpu::make_cuda_device(ordinal));
      device_is_cuda_ = true;
    } else {
      throw nb::value_error(("device '" + device + "': strata takes 'cpu' or 'cuda:N'").c_str());
    }
    engine::OffloadOptimizerOptions o;
    o.allow_buffered_io = allow_buffered_io;
    o.use_schedule = use_schedule;
    if (speculation == "auto") {
      o.speculation = engine::SpeculationPolicy::kAuto;
    } else if (speculation == "always") {
      o.speculation = engine::SpeculationPolicy::kAlways;
    } else if (speculation == "never") {
      o.speculation = engine::SpeculationPolicy::kNever;
    } else {
      throw nb::value_error(
          ("speculation '" + speculation + "': one of auto, always, never").c_str());
    }
    spec_.speculation = o.speculation;
    opt_ = value_or_raise(engine::OffloadOptimizer::create(cfg, device_.get(), std::move(o)));
  }

  int add_group(double lr, double beta1, double beta2, double eps, double weight_decay,
                bool bias_correction) {
    return opt_->add_group(make_group(lr, beta1, beta2, eps, weight_decay, bias_correction));
  }

  // param and grad: contiguous tensors of the optimizer's compute dtype with
  // the same number of elements, both on the CPU (kHost) or both on this
  // optimizer's CUDA device (kDevice).
  int add_param(const std::string& name, int bucket, int group, AnyArray param, AnyArray grad) {
    const bool cuda = param.device_type() == nb::device::cuda::value;
    if (!cuda && param.device_type() != nb::device::cpu::value) {
      throw nb::value_error((name + ": strata takes CPU or CUDA tensors").c_str());
    }
    if (grad.device_type() != param.device_type() || grad.device_id() != param.device_id()) {
      throw nb::value_error((name + ": the gradient buffer is not on the param's device").c_str());
    }
    if (cuda != device_is_cuda_) {
      throw nb::value_error(
          (name +
           (cuda ? ": a CUDA param, but this optimizer was created for CPU params"
                 : ": a CPU param, but this optimizer was created for CUDA params") +
           "; keep every param of one optimizer on one device")
              .c_str());
    }
    const DType want = opt_->compute_dtype();
    for (const AnyArray* a : {&param, &grad}) {
      const absl::StatusOr<DType> got = dtype_of(*a);
      if (!got.ok() || *got != want) {
        throw nb::type_error((name + (a == &param ? ": param" : ": gradient buffer") + " is not " +
                              std::string(dtype_name(want)) +
                              ", the optimizer's compute dtype (one dtype per optimizer)")
                                 .c_str());
      }
    }
    if (param.size() != grad.size()) {
      throw nb::value_error((name + ": param has " + std::to_string(param.size()) +
                             " elements, its gradient buffer " + std::to_string(grad.size()))
                                .c_str());
    }
    engine::ParamDesc d{
        .name = name,
        .numel = param.size(),
        .bucket = bucket,
        .group = group,
        .binding = cuda ? engine::ParamBinding::kDevice : engine::ParamBinding::kHost,
        .param = param.data(),
        .grad = grad.data()};
    const int handle = value_or_raise(opt_->add_param(d));
    keep_alive_.push_back(std::move(param));
    keep_alive_.push_back(std::move(grad));
    return handle;
  }

  void finalize() {
    if (remote_options_) {
      absl::StatusOr<std::unique_ptr<daemon::BindingClient>> c;
      {
        nb::gil_scoped_release release;
        c = daemon::BindingClient::attach(*remote_options_, spec_, *opt_, device_.get());
      }
      client_ = value_or_raise(std::move(c));
      return;
    }
    release_and_check([&] { return opt_->finalize(); });
  }

  // Through stratad: whether attach created the session (or found one whose
  // values were never all given), so the caller gives every value; false
  // when it resumed one (the params already hold its values). In-process:
  // always true.
  bool needs_values() const { return client_ == nullptr || client_->created(); }

  void set_value(int p, Fp32Cpu value) {
    check_handle(p);
    if (value.size() != opt_->param(p).numel) {
      throw nb::value_error((opt_->param(p).name + ": set_value got " +
                             std::to_string(value.size()) + " values for " +
                             std::to_string(opt_->param(p).numel) + " elements")
                                .c_str());
    }
    const float* v = value.data();
    if (client_) return release_and_check([&] { return client_->set_value(p, v); });
    release_and_check([&] { return opt_->set_value(p, v); });
  }

  double begin_step(std::optional<double> loss_scale) {
    if (client_) {
      absl::StatusOr<double> s;
      {
        nb::gil_scoped_release release;
        s = client_->begin_step(loss_scale);
      }
      if (s.ok() && opt_->loss_scaler() != nullptr) remote_loss_scale_ = *s;
      return value_or_raise(std::move(s));
    }
    return value_or_raise(opt_->begin_step(loss_scale));
  }

  void grad_ready(int bucket) {
    if (client_) return release_and_check([&] { return client_->grad_ready(bucket); });
    release_and_check([&] { return opt_->grad_ready(bucket); });
  }

  void wait_grads() {
    if (client_) return release_and_check([&] { return client_->wait_grads(); });
    release_and_check([&] { return opt_->wait_grads(); });
  }

  void report_overflow() {
    if (client_) return release_and_check([&] { return client_->report_overflow(); });
    opt_->report_overflow();
  }

  nb::dict finish_step() {
    absl::StatusOr<engine::OptimizerStepResult> r;
    {
      nb::gil_scoped_release release;
      r = client_ ? client_->finish_step() : opt_->finish_step();
    }
    return result_dict(value_or_raise(std::move(r)));
  }

  // Abandons the step in flight; raises only when the undo itself failed
  // (abort_step hands `why` back, annotated with what went wrong).
  void abort_step(const std::string& why) {
    absl::Status s;
    {
      nb::gil_scoped_release release;
      s = client_ ? client_->remote().abort_step(absl::AbortedError(why))
                  : opt_->abort_step(absl::AbortedError(why));
    }
    if (!s.ok() && s.message() != why) raise_status(s);
  }

  // kDevice buckets: blocks until the updated params are back on the device.
  void wait_params_ready(int bucket) {
    const std::optional<gpu::EventId> e =
        client_ ? client_->params_ready(bucket) : opt_->params_ready(bucket);
    if (!e) return;
    release_and_check([&] { return device_->synchronize_event(*e); });
  }

  void set_group(int g, double lr, double beta1, double beta2, double eps, double weight_decay,
                 bool bias_correction) {
    const engine::GroupHyperparams hp =
        make_group(lr, beta1, beta2, eps, weight_decay, bias_correction);
    if (client_) {
      // torch re-reads param_groups each step: only a change costs a request.
      daemon::RemoteOptimizer& r = client_->remote();
      if (g < 0 || g >= r.num_groups()) check(opt_->set_group(g, hp));  // its error
      const engine::GroupHyperparams& now = r.group(g);
      if (now.lr != hp.lr || now.beta1 != hp.beta1 || now.beta2 != hp.beta2 || now.eps != hp.eps ||
          now.weight_decay != hp.weight_decay || now.bias_correction != hp.bias_correction) {
        release_and_check([&] { return r.set_group(g, hp); });
      }
      return;
    }
    check(opt_->set_group(g, hp));
  }

  nb::dict group(int g) const {
    if (client_ && g >= 0 && g < client_->remote().num_groups()) {
      return group_dict(client_->remote().group(g));
    }
    return group_dict(opt_->group(g));
  }

  void set_optimizer_steps(int64_t steps) {
    if (client_)
      return release_and_check([&] { return client_->remote().set_optimizer_steps(steps); });
    check(opt_->set_optimizer_steps(steps));
  }

  Fp32Tensor read_state(int p, const std::string& kind) {
    check_handle(p);
    const engine::StateKind k = value_or_raise(parse_state_kind(kind));
    absl::StatusOr<std::vector<float>> v;
    {
      nb::gil_scoped_release release;
      v = client_ ? client_->remote().read_state(p, k) : opt_->read_state(p, k);
    }
    return to_tensor(value_or_raise(std::move(v)));
  }

  void write_state(int p, const std::string& kind, Fp32Cpu values) {
    check_handle(p);
    const engine::StateKind k = value_or_raise(parse_state_kind(kind));
    if (values.size() != opt_->param(p).numel) {
      throw nb::value_error((opt_->param(p).name + ": " + kind + " has " +
                             std::to_string(values.size()) + " values, the param " +
                             std::to_string(opt_->param(p).numel))
                                .c_str());
    }
    const float* v = values.data();
    release_and_check([&] {
      return client_ ? client_->remote().write_state(p, k, v) : opt_->write_state(p, k, v);
    });
  }

  Fp32Tensor read_param(int p) {
    check_handle(p);
    absl::StatusOr<std::vector<float>> v;
    {
      nb::gil_scoped_release release;
      if (client_) {
        v = client_->read_param(p);
      } else {
        v = opt_->read_param(p);
      }
    }
    return to_tensor(value_or_raise(std::move(v)));
  }

  void save_state(const std::string& dir, const std::string& user_meta_json) {
    nlohmann::json meta =
        nlohmann::json::parse(user_meta_json, nullptr, /*allow_exceptions=*/false);
    if (meta.is_discarded()) throw nb::value_error("save_state: user metadata is not valid JSON");
    release_and_check([&] {
      return client_ ? client_->remote().save_state(dir, meta) : opt_->save_state(dir, meta);
    });
  }

  void load_state(const std::string& dir, bool weights_only) {
    release_and_check([&] {
      return client_ ? client_->load_state(dir, weights_only) : opt_->load_state(dir, weights_only);
    });
  }

  void check_partly_stepped() const { check(opt_->partly_stepped()); }

  int num_params() const { return opt_->num_params(); }
  int num_buckets() const { return opt_->num_buckets(); }
  std::string compute_dtype() const { return std::string(dtype_name(opt_->compute_dtype())); }
  int64_t optimizer_steps() const {
    return client_ ? client_->remote().optimizer_steps() : opt_->optimizer_steps();
  }
  int64_t steps() const { return client_ ? client_->remote().steps() : opt_->steps(); }
  // The config's fp16 loss scaler's current scale; None without one.
  std::optional<double> config_loss_scale() const {
    const engine::LossScaler* s = opt_->loss_scaler();
    if (s == nullptr) return std::nullopt;
    if (client_) {
      // The session's scaler: the last finish_step's next scale (a skipped
      // step backed it off), else the last begin_step's.
      return client_->remote().next_loss_scale().value_or(remote_loss_scale_.value_or(s->scale()));
    }
    return s->scale();
  }
  std::string optimizer_tier() const {
    if (client_) return std::string(offload::tier_name(offload::Tier::kHost));
    return offload::tier_name(opt_->optimizer_tier());
  }
  const std::vector<std::string>& warnings() const { return warnings_; }

 private:
  template <typename F>
  void release_and_check(F&& f) {
    absl::Status s;
    {
      nb::gil_scoped_release release;
      s = f();
    }
    check(s);
  }

  void check_handle(int p) const {
    if (p < 0 || p >= opt_->num_params()) {
      throw nb::index_error(("param handle " + std::to_string(p) + " out of range (" +
                             std::to_string(opt_->num_params()) + " params)")
                                .c_str());
    }
  }

  // Declaration order is destruction order reversed: the optimizer goes
  // first, then the tensors it wrote to, then the device it ran on.
  std::unique_ptr<gpu::Device> device_;
  bool device_is_cuda_ = false;
  std::vector<AnyArray> keep_alive_;
  std::vector<std::string> warnings_;
  std::unique_ptr<engine::OffloadOptimizer> opt_;
  // Through stratad: the session and the client (it reads opt_'s registration).
  std::optional<daemon::RemoteOptions> remote_options_;
  daemon::SessionSpec spec_;
  std::unique_ptr<daemon::BindingClient> client_;
  std::optional<double> remote_loss_scale_;
};

}  // namespace

void bind_offload_optimizer(nb::module_& m) {
  m.def(
      "resolve_ds_config",
      [](const std::string& json_text, const std::string& source) {
        std::vector<std::string> warnings;
        const config::DsConfig cfg = parse_config(json_text, source, &warnings);
        return std::make_pair(config::to_json(cfg).dump(), warnings);
      },
      nb::arg("json_text"), nb::arg("source") = "ds_config",
      "Parses and validates ds_config JSON text (core/config's one parser); returns the "
      "resolved config as JSON text (every default filled in) and the list of warnings.");

  nb::class_<PyOffloadOptimizer>(
      m, "OffloadOptimizer",
      "engine::OffloadOptimizer: strata owns the fp32 master weights, the optimizer states "
      "(host memory or NVMe) and the CPU optimizer; the framework hands it gradients. "
      "strata.torch.OffloadOptimizer is the torch-facing class built on it.")
      .def(nb::init<const std::string&, const std::string&, const std::string&, bool, bool,
                    const std::string&, const std::string&, const std::string&>(),
           nb::arg("config_json"), nb::arg("source") = "ds_config", nb::arg("device") = "cpu",
           nb::arg("use_schedule") = false, nb::arg("allow_buffered_io") = false,
           nb::arg("speculation") = "auto", nb::arg("daemon_socket") = "",
           nb::arg("daemon_session") = "",
           "daemon_session non-empty: the steps run in stratad's session of that name "
           "(daemon_socket, or the default socket when empty).")
      .def("add_group", &PyOffloadOptimizer::add_group, nb::arg("lr"), nb::arg("beta1"),
           nb::arg("beta2"), nb::arg("eps"), nb::arg("weight_decay"), nb::arg("bias_correction"))
      .def("add_param", &PyOffloadOptimizer::add_param, nb::arg("name"), nb::arg("bucket"),
           nb::arg("group"), nb::arg("param").noconvert(), nb::arg("grad").noconvert(),
           "Binds a param and its gradient buffer in place (CPU: host binding; CUDA: device "
           "binding); keeps both alive. Returns the param's handle.")
      .def("finalize", &PyOffloadOptimizer::finalize)
      .def_prop_ro("needs_values", &PyOffloadOptimizer::needs_values)
      .def("set_value", &PyOffloadOptimizer::set_value, nb::arg("param"),
           nb::arg("value").noconvert())
      .def("begin_step", &PyOffloadOptimizer::begin_step, nb::arg("loss_scale").none() = nb::none())
      .def("grad_ready", &PyOffloadOptimizer::grad_ready, nb::arg("bucket"),
           "The bucket's gradient buffers hold this micro-batch's gradient; releases the GIL.")
      .def("wait_grads", &PyOffloadOptimizer::wait_grads,
           "Blocks until every gradient handed over so far has been read (the buffers may be "
           "rewritten); releases the GIL.")
      .def("report_overflow", &PyOffloadOptimizer::report_overflow)
      .def("finish_step", &PyOffloadOptimizer::finish_step)
      .def("abort_step", &PyOffloadOptimizer::abort_step, nb::arg("why"))
      .def("wait_params_ready", &PyOffloadOptimizer::wait_params_ready, nb::arg("bucket"))
      .def("set_group", &PyOffloadOptimizer::set_group, nb::arg("group"), nb::arg("lr"),
           nb::arg("beta1"), nb::arg("beta2"), nb::arg("eps"), nb::arg("weight_decay"),
           nb::arg("bias_correction"))
      .def("group", &PyOffloadOptimizer::group, nb::arg("group"))
      .def("set_optimizer_steps", &PyOffloadOptimizer::set_optimizer_steps, nb::arg("steps"),
           "Between steps: the Adam step count that goes with states written by write_state.")
      .def("read_state", &PyOffloadOptimizer::read_state, nb::arg("param"), nb::arg("kind"))
      .def("write_state", &PyOffloadOptimizer::write_state, nb::arg("param"), nb::arg("kind"),
           nb::arg("values").noconvert())
      .def("read_param", &PyOffloadOptimizer::read_param, nb::arg("param"))
      .def("save_state", &PyOffloadOptimizer::save_state, nb::arg("dir"),
           nb::arg("user_meta_json") = "{}")
      .def("load_state", &PyOffloadOptimizer::load_state, nb::arg("dir"),
           nb::arg("weights_only") = false)
      .def("check_partly_stepped", &PyOffloadOptimizer::check_partly_stepped)
      .def_prop_ro("num_params", &PyOffloadOptimizer::num_params)
      .def_prop_ro("num_buckets", &PyOffloadOptimizer::num_buckets)
      .def_prop_ro("compute_dtype", &PyOffloadOptimizer::compute_dtype)
      .def_prop_ro("optimizer_steps", &PyOffloadOptimizer::optimizer_steps)
      .def_prop_ro("steps", &PyOffloadOptimizer::steps)
      .def_prop_ro("config_loss_scale", &PyOffloadOptimizer::config_loss_scale)
      .def_prop_ro("optimizer_tier", &PyOffloadOptimizer::optimizer_tier)
      .def_prop_ro("warnings", &PyOffloadOptimizer::warnings);
}

}  // namespace strata::python
