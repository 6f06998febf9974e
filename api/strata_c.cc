// The C API (api/include/strata/strata.h) over engine::OffloadOptimizer.
//
// Every entry point runs its body through `guarded`, which turns a Status
// and any C++ exception into a strata_status plus the thread's last-error
// message, so nothing unwinds into C. Checks the engine would make with
// STRATA_CHECK (an abort: unknown group or param indices, calls before
// finalize) are made here first and returned as codes: a C caller's bad
// input must never end its process.
#include "strata/strata.h"

#include <tbb/task_arena.h>

#include <cmath>
#include <cstring>
#include <exception>
#include <memory>
#include <new>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/config/ds_config.h"
#include "core/file_util.h"
#include "core/log.h"
#include "core/status.h"
#include "daemon/binding_client.h"
#include "daemon/remote_optimizer.h"
#include "engine/offload_optimizer.h"
#include "gpu/device.h"
#include "gpu/sim_device.h"

struct strata_optimizer {
  // Declared before `opt` so they outlive it (members die in reverse order).
  std::unique_ptr<strata::gpu::Device> device;
  std::unique_ptr<tbb::task_arena> arena;
  std::unique_ptr<strata::engine::OffloadOptimizer> opt;
  bool host_only = true;  // STRATA_DEVICE_HOST: device bindings are refused
  bool finalized = false;
  // options.daemon_session: `opt` only keeps the registration (never
  // finalized); the steps run in stratad through `remote`.
  struct Daemon {
    std::string socket, session, config_json;
    bool use_schedule = true, allow_buffered_io = false;
    // The session, kept in step with the program's params and grads.
    std::unique_ptr<strata::daemon::BindingClient> client;
  };
  std::unique_ptr<Daemon> daemon;
  // strata_device_alloc's memory not yet freed: freed last, once nothing
  // strata runs can still copy into it.
  std::set<void*> device_memory;

  ~strata_optimizer() {
    daemon.reset();
    opt.reset();
    for (void* p : device_memory) device->free(p);
  }
};

namespace {

using strata::engine::OffloadOptimizer;

thread_local std::string t_last_error;

strata_status to_c(absl::StatusCode code) {
  const int v = static_cast<int>(code);
  return v >= 0 && v <= STRATA_STATUS_UNAUTHENTICATED ? static_cast<strata_status>(v)
                                                      : STRATA_STATUS_UNKNOWN;
}

strata_status fail(const char* call, strata_status code, absl::string_view message) {
  t_last_error = absl::StrCat(call, ": ", message);
  return code;
}

// Runs `body` (returning absl::Status); no exception leaves it.
template <typename Body>
strata_status guarded(const char* call, Body&& body) noexcept {
  try {
    const absl::Status status = body();
    if (status.ok()) return STRATA_STATUS_OK;
    return fail(call, to_c(status.code()), status.message());
  } catch (const std::bad_alloc&) {
    return fail(call, STRATA_STATUS_RESOURCE_EXHAUSTED, "out of host memory");
  } catch (const std::exception& e) {
    return fail(
        call, STRATA_STATUS_INTERNAL,
        absl::StrCat("unexpected C++ exception (a strata bug; please report it): ", e.what()));
  } catch (...) {
    return fail(call, STRATA_STATUS_INTERNAL,
                "unexpected exception (a strata bug; please report it)");
  }
}

absl::Status null_arg(const char* name) {
  return absl::InvalidArgumentError(absl::StrCat(name, " is NULL"));
}

#define STRATA_C_REQUIRE(ptr) \
  if ((ptr) == nullptr) return null_arg(#ptr)

absl::Status require_finalized(const strata_optimizer* h, bool want) {
  if (h->finalized == want) return absl::OkStatus();
  return absl::FailedPreconditionError(want ? "call strata_finalize first"
                                            : "registration is over (strata_finalize was called)");
}

absl::Status check_param(const strata_optimizer* h, int param) {
  STRATA_RETURN_IF_ERROR(require_finalized(h, true));
  const int n = h->opt->num_params();
  if (param < 0 || param >= n) {
    return absl::InvalidArgumentError(
        absl::StrFormat("param %d does not exist (%d registered: 0..%d)", param, n, n - 1));
  }
  return absl::OkStatus();
}

absl::Status check_group(const strata_optimizer* h, int group) {
  const int n = h->opt->num_groups();
  if (group < 0 || group >= n) {
    return absl::InvalidArgumentError(
        absl::StrFormat("group %d does not exist (%d added with strata_add_group)", group, n));
  }
  return absl::OkStatus();
}

absl::Status check_count(const strata_optimizer* h, int param, size_t count) {
  const uint64_t numel = h->opt->param(param).numel;
  if (count != numel) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "count %u does not match param '%s' (%u values)", count, h->opt->param(param).name, numel));
  }
  return absl::OkStatus();
}

absl::Status check_hparams(const strata_group_hparams& hp) {
  if (!std::isfinite(hp.lr) || hp.lr < 0) {
    return absl::InvalidArgumentError(absl::StrCat("lr must be finite and >= 0 (got ", hp.lr, ")"));
  }
  if (!(hp.beta1 >= 0 && hp.beta1 < 1) || !(hp.beta2 >= 0 && hp.beta2 < 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("betas must be in [0, 1) (got ", hp.beta1, ", ", hp.beta2, ")"));
  }
  if (!(hp.eps > 0) || !std::isfinite(hp.eps)) {
    return absl::InvalidArgumentError(absl::StrCat("eps must be > 0 (got ", hp.eps, ")"));
  }
  if (!std::isfinite(hp.weight_decay)) {
    return absl::InvalidArgumentError(
        absl::StrCat("weight_decay must be finite (got ", hp.weight_decay, ")"));
  }
  return absl::OkStatus();
}

strata::engine::GroupHyperparams to_cc(const strata_group_hparams& hp) {
  return {.lr = hp.lr,
          .beta1 = hp.beta1,
          .beta2 = hp.beta2,
          .eps = hp.eps,
          .weight_decay = hp.weight_decay,
          .bias_correction = hp.bias_correction};
}

strata_group_hparams to_c(const strata::engine::GroupHyperparams& hp) {
  return {.lr = hp.lr,
          .beta1 = hp.beta1,
          .beta2 = hp.beta2,
          .eps = hp.eps,
          .weight_decay = hp.weight_decay,
          .bias_correction = hp.bias_correction};
}

absl::StatusOr<strata::engine::StateKind> to_cc(strata_state_kind kind) {
  using strata::engine::StateKind;
  switch (kind) {
    case STRATA_STATE_MASTER:
      return StateKind::kMaster;
    case STRATA_STATE_EXP_AVG:
      return StateKind::kExpAvg;
    case STRATA_STATE_EXP_AVG_SQ:
      return StateKind::kExpAvgSq;
    case STRATA_STATE_GRAD_ACCUM:
      return StateKind::kGradAccum;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown strata_state_kind ", int{kind}));
}

strata_options default_options() {
  strata_options o;
  std::memset(&o, 0, sizeof o);
  o.device = STRATA_DEVICE_HOST;
  o.use_schedule = true;
  return o;
}

// The device the optimizer runs on. Host mode: a SimDevice whose copies are
// plain memcpys (no modelled PCIe time: nothing crosses a bus).
absl::StatusOr<std::unique_ptr<strata::gpu::Device>> make_device(const strata_options& o) {
  switch (o.device) {
    case STRATA_DEVICE_HOST: {
      return std::make_unique<strata::gpu::SimDevice>(
          o.host_device_bytes != 0 ? strata::gpu::host_mode_options(o.host_device_bytes)
                                   : strata::gpu::host_mode_options());
    }
    case STRATA_DEVICE_SIM: {
      // A GPU's model (modelled link time and CUDA costs), not host mode:
      // the program's device-binding path pays what it would on a GPU.
      strata::gpu::SimDeviceOptions sim;
      sim.capacity_bytes = o.host_device_bytes != 0 ? o.host_device_bytes : uint64_t{1} << 30;
      return std::make_unique<strata::gpu::SimDevice>(sim);
    }
    case STRATA_DEVICE_CUDA:
      if (o.cuda_ordinal < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("options.cuda_ordinal must be >= 0 (got ", o.cuda_ordinal, ")"));
      }
      return strata::gpu::make_cuda_device(o.cuda_ordinal);
  }
  return absl::InvalidArgumentError(absl::StrCat("options.device: unknown strata_device_kind ",
                                                 int{o.device},
                                                 " (STRATA_DEVICE_HOST, STRATA_DEVICE_CUDA or "
                                                 "STRATA_DEVICE_SIM)"));
}

absl::Status create(absl::StatusOr<strata::config::DsConfig> parsed, const strata_options* options,
                    std::string config_json, strata_optimizer** out) {
  STRATA_RETURN_IF_ERROR(parsed.status());
  const strata_options o = options != nullptr ? *options : default_options();
  if (o.num_threads < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("options.num_threads must be >= 0 (got ", o.num_threads, ")"));
  }
  auto h = std::make_unique<strata_optimizer>();
  h->host_only = o.device == STRATA_DEVICE_HOST;
  STRATA_ASSIGN_OR_RETURN(h->device, make_device(o));
  strata::engine::OffloadOptimizerOptions eo;
  eo.device_budget_bytes = o.device_budget_bytes;
  eo.host_budget_bytes = o.host_budget_bytes;
  eo.allow_buffered_io = o.allow_buffered_io;
  eo.use_schedule = o.use_schedule;
  if (o.num_threads > 0) {
    h->arena = std::make_unique<tbb::task_arena>(o.num_threads);
    eo.exec.arena = h->arena.get();
  }
  STRATA_ASSIGN_OR_RETURN(h->opt,
                          OffloadOptimizer::create(*parsed, h->device.get(), std::move(eo)));
  if (o.daemon_session != nullptr) {
    STRATA_RETURN_IF_ERROR(strata::daemon::check_session_name(o.daemon_session),
                           "options.daemon_session");
    h->daemon = std::make_unique<strata_optimizer::Daemon>();
    h->daemon->session = o.daemon_session;
    if (o.daemon_socket != nullptr) h->daemon->socket = o.daemon_socket;
    h->daemon->config_json = std::move(config_json);
    h->daemon->use_schedule = o.use_schedule;
    h->daemon->allow_buffered_io = o.allow_buffered_io;
  }
  *out = h.release();
  return absl::OkStatus();
}

void log_warnings(const std::vector<std::string>& warnings) {
  for (const std::string& w : warnings) strata::log::get("api")->warn("{}", w);
}

absl::Status attach_daemon(strata_optimizer* h) {
  strata::daemon::SessionSpec spec;
  spec.config_json = h->daemon->config_json;
  spec.use_schedule = h->daemon->use_schedule;
  spec.allow_buffered_io = h->daemon->allow_buffered_io;
  STRATA_ASSIGN_OR_RETURN(h->daemon->client,
                          strata::daemon::BindingClient::attach(
                              {.socket_path = h->daemon->socket, .session = h->daemon->session},
                              spec, *h->opt, h->device.get()));
  return absl::OkStatus();
}

}  // namespace

extern "C" {

const char* strata_last_error(void) { return t_last_error.c_str(); }

const char* strata_status_name(strata_status status) {
  switch (status) {
    case STRATA_STATUS_OK:
      return "OK";
    case STRATA_STATUS_CANCELLED:
      return "CANCELLED";
    case STRATA_STATUS_UNKNOWN:
      return "UNKNOWN";
    case STRATA_STATUS_INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case STRATA_STATUS_DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case STRATA_STATUS_NOT_FOUND:
      return "NOT_FOUND";
    case STRATA_STATUS_ALREADY_EXISTS:
      return "ALREADY_EXISTS";
    case STRATA_STATUS_PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case STRATA_STATUS_RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case STRATA_STATUS_FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case STRATA_STATUS_ABORTED:
      return "ABORTED";
    case STRATA_STATUS_OUT_OF_RANGE:
      return "OUT_OF_RANGE";
    case STRATA_STATUS_UNIMPLEMENTED:
      return "UNIMPLEMENTED";
    case STRATA_STATUS_INTERNAL:
      return "INTERNAL";
    case STRATA_STATUS_UNAVAILABLE:
      return "UNAVAILABLE";
    case STRATA_STATUS_DATA_LOSS:
      return "DATA_LOSS";
    case STRATA_STATUS_UNAUTHENTICATED:
      return "UNAUTHENTICATED";
  }
  return "UNKNOWN_STATUS";
}

const char* strata_version(void) { return STRATA_VERSION_STRING; }

strata_status strata_check_version(int major, int minor) {
  if (major == STRATA_VERSION_MAJOR && minor >= 0 && minor <= STRATA_VERSION_MINOR) {
    return STRATA_STATUS_OK;
  }
  return fail("strata_check_version", STRATA_STATUS_FAILED_PRECONDITION,
              absl::StrFormat("the program was built against strata %d.%d but the library is %s; "
                              "rebuild it against this version or install strata %d.%d or newer "
                              "with major version %d",
                              major, minor, STRATA_VERSION_STRING, major, minor, major));
}

strata_status strata_options_init(strata_options* options) {
  return guarded(__func__, [&] {
    STRATA_C_REQUIRE(options);
    *options = default_options();
    return absl::OkStatus();
  });
}

strata_status strata_optimizer_create(const char* ds_config_json, const strata_options* options,
                                      strata_optimizer** out) {
  return guarded(__func__, [&] {
    STRATA_C_REQUIRE(out);
    *out = nullptr;
    STRATA_C_REQUIRE(ds_config_json);
    std::vector<std::string> warnings;
    auto parsed = strata::config::parse_ds_config(ds_config_json, "ds_config", &warnings);
    log_warnings(warnings);
    return create(std::move(parsed), options, ds_config_json, out);
  });
}

strata_status strata_optimizer_create_from_file(const char* ds_config_path,
                                                const strata_options* options,
                                                strata_optimizer** out) {
  return guarded(__func__, [&] {
    STRATA_C_REQUIRE(out);
    *out = nullptr;
    STRATA_C_REQUIRE(ds_config_path);
    std::vector<std::string> warnings;
    auto parsed = strata::config::load_ds_config(ds_config_path, &warnings);
    log_warnings(warnings);
    std::string text;
    if (parsed.ok() && options != nullptr && options->daemon_session != nullptr) {
      STRATA_ASSIGN_OR_RETURN(text, strata::read_file(ds_config_path));
    }
    return create(std::move(parsed), options, std::move(text), out);
  });
}

void strata_optimizer_destroy(strata_optimizer* opt) {
  // A destructor that throws (a swap file that cannot be removed) must not
  // reach C; the message is kept for a caller that looks.
  (void)guarded(__func__, [&] {
    delete opt;
    return absl::OkStatus();
  });
}

strata_status strata_device_alloc(strata_optimizer* opt, size_t bytes, void** out) {
  return guarded(__func__, [&] {
    STRATA_C_REQUIRE(out);
    *out = nullptr;
    STRATA_C_REQUIRE(opt);
    if (opt->host_only) {
      return absl::FailedPreconditionError(
          "STRATA_DEVICE_HOST has no device memory; create the optimizer with "
          "STRATA_DEVICE_CUDA or STRATA_DEVICE_SIM");
    }
    if (bytes == 0) return absl::InvalidArgumentError("bytes is 0");
    STRATA_ASSIGN_OR_RETURN(*out, opt->device->allocate(bytes));
    opt->device_memory.insert(*out);
    return absl::OkStatus();
  });
}

strata_status strata_device_free(strata_optimizer* opt, void* ptr) {
  return guarded(__func__, [&] {
    STRATA_C_REQUIRE(opt);
    if (ptr == nullptr) return absl::OkStatus();
    if (opt->device_memory.erase(ptr) == 0) {
      return absl::InvalidArgumentError(
          "ptr was not returned by strata_device_alloc on this optimizer (or is freed already)");
    }
    opt->device->free(ptr);
    return absl::OkStatus();
  });
}

strata_status strata_group_defaults(const strata_optimizer* opt, strata_group_hparams* out) {
  return guarded(__func__, [&] {
    STRATA_C_REQUIRE(opt);
    STRATA_C_REQUIRE(out);
    *out = to_c(opt->opt->default_group());
    return absl::OkStatus();
  });
}

strata_status strata_add_group(strata_optimizer* opt, const strata_group_hparams* hp,
                               int* out_group) {
  return guarded(__func__, [&] {
    STRATA_C_REQUIRE(opt);
    STRATA_C_REQUIRE(hp);
    STRATA_C_REQUIRE(out_group);
    STRATA_RETURN_IF_ERROR(require_finalized(opt, false));
    STRATA_RETURN_IF_ERROR(check_hparams(*hp));
    *out_group = opt->opt->add_group(to_cc(*hp));
    return absl::OkStatus();
  });
}

strata_status strata_add_param(strata_optimizer* opt, const strata_param_desc* desc,
                               int* out_param) {
  return guarded(__func__, [&] {
    STRATA_C_REQUIRE(opt);
    STRATA_C_REQUIRE(desc);
    STRATA_C_REQUIRE(out_param);
    STRATA_RETURN_IF_ERROR(require_finalized(opt, false));
    if (desc->name == nullptr || desc->name[0] == '\0') {
      return absl::InvalidArgumentError("desc->name is NULL or empty; every param needs a name");
    }
    const std::string where = absl::StrCat("param '", desc->name, "'");
    if (desc->numel == 0) return absl::InvalidArgumentError(absl::StrCat(where, ": numel is 0"));
    if (desc->bucket < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": bucket must be >= 0 (got ", desc->bucket, ")"));
    }
    STRATA_RETURN_IF_ERROR(check_group(opt, desc->group), where);
    strata::engine::ParamDesc d;
    switch (desc->binding) {
      case STRATA_BINDING_HOST:
        d.binding = strata::engine::ParamBinding::kHost;
        break;
      case STRATA_BINDING_DEVICE:
        if (opt->host_only) {
          return absl::InvalidArgumentError(absl::StrCat(
              where,
              ": STRATA_BINDING_DEVICE needs an optimizer created with STRATA_DEVICE_CUDA (or "
              "STRATA_DEVICE_SIM)"));
        }
        d.binding = strata::engine::ParamBinding::kDevice;
        break;
      default:
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": unknown binding ", int{desc->binding},
                         " (STRATA_BINDING_HOST or STRATA_BINDING_DEVICE)"));
    }
    if (desc->param == nullptr || desc->grad == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": param and grad must both point at numel values"));
    }
    d.name = desc->name;
    d.numel = desc->numel;
    d.bucket = desc->bucket;
    d.group = desc->group;
    d.param = desc->param;
    d.grad = desc->grad;
    STRATA_ASSIGN_OR_RETURN(*out_param, opt->opt->add_param(d));
    return absl::OkStatus();
  });
}

strata_status strata_finalize(strata_optimizer* opt) {
  return guarded(__func__, [&] {
    STRATA_C_REQUIRE(opt);
    STRATA_RETURN_IF_ERROR(require_finalized(opt, false));
    if (opt->opt->num_params() == 0) {
      return absl::FailedPreconditionError("no params registered (strata_add_param)");
    }
    if (opt->daemon != nullptr) {
      STRATA_RETURN_IF_ERROR(attach_daemon(opt));
    } else {
      STRATA_RETURN_IF_ERROR(opt->opt->finalize());
    }
    opt->finalized = true;
    return absl::OkStatus();
  });
}

strata_status strata_compute_dtype(const strata_optimizer* opt, strata_dtype* out) {
  return guarded(__func__, [&] {
    STRATA_C_REQUIRE(opt);
    STRATA_C_REQUIRE(out);
    switch (opt->opt->compute_dtype()) {
      case strata::DType::kFloat32:
        *out = STRATA_DTYPE_FLOAT32;
        break;
      case strata::DType::kFloat16:
        *out = STRATA_DTYPE_FLOAT16;
        break;
      case strata::DType::kBFloat16:
        *out = STRATA_DTYPE_BFLOAT16;
        break;
    }
    return absl::OkStatus();
  });
}

strata_status strata_set_value(strata_optimizer* opt, int param, const float* values,
                               size_t count) {
  return guarded(__func__, [&] {
    STRATA_C_REQUIRE(opt);
    STRATA_RETURN_IF_ERROR(check_param(opt, param));
    STRATA_C_REQUIRE(values);
    STRATA_RETURN_IF_ERROR(check_count(opt, param, count));
    if (opt->daemon != nullptr) {
      return opt->daemon->client->set_value(param, values);
    }
    return opt->opt->set_value(param, values);
  });
}

strata_status strata_begin_step(strata_optimizer* opt, double loss_scale, double* out_scale) {
  return guarded(__func__, [&] {
    STRATA_C_REQUIRE(opt);
    STRATA_RETURN_IF_ERROR(require_finalized(opt, true));
    std::optional<double> scale;
    if (!std::isnan(loss_scale)) {
      if (!(loss_scale > 0) || std::isinf(loss_scale)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "loss_scale must be finite and > 0, or NAN for the config's (got ", loss_scale, ")"));
      }
      scale = loss_scale;
    }
    STRATA_ASSIGN_OR_RETURN(const double used, opt->daemon != nullptr
                                                   ? opt->daemon->client->begin_step(scale)
                                                   : opt->opt->begin_step(scale));
    if (out_scale != nullptr) *out_scale = used;
    return absl::OkStatus();
  });
}

strata_status strata_grad_ready(strata_optimizer* opt, int bucket) {
  return guarded(__func__, [&] {
    STRATA_C_REQUIRE(opt);
    STRATA_RETURN_IF_ERROR(require_finalized(opt, true));
    const int n = opt->daemon != nullptr ? opt->daemon->client->remote().num_buckets()
                                         : opt->opt->num_buckets();
    if (bucket < 0 || bucket >= n) {
      return absl::InvalidArgumentError(
          absl::StrFormat("bucket %d does not exist (%d buckets: 0..%d)", bucket, n, n - 1));
    }
    if (opt->daemon != nullptr) return opt->daemon->client->grad_ready(bucket);
    return opt->opt->grad_ready(bucket);
  });
}

strata_status strata_wait_grads(strata_optimizer* opt) {
  return guarded(__func__, [&] {
    STRATA_C_REQUIRE(opt);
    STRATA_RETURN_IF_ERROR(require_finalized(opt, true));
    if (opt->daemon != nullptr) return opt->daemon->client->wait_grads();
    return opt->opt->wait_grads();
  });
}

strata_status strata_report_overflow(strata_optimizer* opt) {
  return guarded(__func__, [&] {
    STRATA_C_REQUIRE(opt);
    STRATA_RETURN_IF_ERROR(require_finalized(opt, true));
    if (opt->daemon != nullptr) return opt->daemon->client->report_overflow();
    opt->opt->report_overflow();
    return absl::OkStatus();
  });
}

strata_status strata_finish_step(strata_optimizer* opt, strata_step_result* out) {
  return guarded(__func__, [&] {
    STRATA_C_REQUIRE(opt);
    STRATA_RETURN_IF_ERROR(require_finalized(opt, true));
    STRATA_ASSIGN_OR_RETURN(
        const strata::engine::OptimizerStepResult r,
        opt->daemon != nullptr ? opt->daemon->client->finish_step() : opt->opt->finish_step());
    if (out != nullptr) {
      *out = {.step = r.step,
              .loss_scale = r.loss_scale,
              .skipped = r.skipped,
              .overflow = r.overflow,
              .grad_norm = r.grad_norm,
              .clip_coef = r.clip_coef,
              .lr = r.lr};
    }
    return absl::OkStatus();
  });
}

strata_status strata_abort_step(strata_optimizer* opt) {
  return guarded(__func__, [&] {
    STRATA_C_REQUIRE(opt);
    STRATA_RETURN_IF_ERROR(require_finalized(opt, true));
    // abort_step returns the reason it is given, with what the undo added:
    // the reason alone means the undo went well (or no step was in flight).
    const absl::Status why = absl::CancelledError("the program abandoned the step");
    absl::Status status = opt->daemon != nullptr ? opt->daemon->client->remote().abort_step(why)
                                                 : opt->opt->abort_step(why);
    return status == why ? absl::OkStatus() : status;
  });
}

strata_status strata_wait_params(strata_optimizer* opt, int bucket) {
  return guarded(__func__, [&] {
    STRATA_C_REQUIRE(opt);
    STRATA_RETURN_IF_ERROR(require_finalized(opt, true));
    const int n = opt->opt->num_buckets();
    if (bucket < 0 || bucket >= n) {
      return absl::InvalidArgumentError(
          absl::StrFormat("bucket %d does not exist (%d buckets: 0..%d)", bucket, n, n - 1));
    }
    const std::optional<strata::gpu::EventId> event =
        opt->daemon != nullptr ? opt->daemon->client->params_ready(bucket)
                               : opt->opt->params_ready(bucket);
    if (!event.has_value()) return absl::OkStatus();
    return opt->device->synchronize_event(*event);
  });
}

strata_status strata_set_group(strata_optimizer* opt, int group, const strata_group_hparams* hp) {
  return guarded(__func__, [&] {
    STRATA_C_REQUIRE(opt);
    STRATA_C_REQUIRE(hp);
    STRATA_RETURN_IF_ERROR(check_group(opt, group));
    STRATA_RETURN_IF_ERROR(check_hparams(*hp));
    if (opt->daemon != nullptr && opt->finalized) {
      // The session holds the groups in force; the registration only the
      // ones it was created with (its fingerprint).
      return opt->daemon->client->remote().set_group(group, to_cc(*hp));
    }
    return opt->opt->set_group(group, to_cc(*hp));
  });
}

strata_status strata_get_group(const strata_optimizer* opt, int group, strata_group_hparams* out) {
  return guarded(__func__, [&] {
    STRATA_C_REQUIRE(opt);
    STRATA_C_REQUIRE(out);
    STRATA_RETURN_IF_ERROR(check_group(opt, group));
    *out =
        to_c(opt->daemon != nullptr && opt->finalized ? opt->daemon->client->remote().group(group)
                                                      : opt->opt->group(group));
    return absl::OkStatus();
  });
}

strata_status strata_read_state(strata_optimizer* opt, int param, strata_state_kind kind,
                                float* out, size_t count) {
  return guarded(__func__, [&] {
    STRATA_C_REQUIRE(opt);
    STRATA_RETURN_IF_ERROR(check_param(opt, param));
    STRATA_C_REQUIRE(out);
    STRATA_RETURN_IF_ERROR(check_count(opt, param, count));
    STRATA_ASSIGN_OR_RETURN(const strata::engine::StateKind k, to_cc(kind));
    STRATA_ASSIGN_OR_RETURN(const std::vector<float> values,
                            opt->daemon != nullptr
                                ? opt->daemon->client->remote().read_state(param, k)
                                : opt->opt->read_state(param, k));
    if (values.size() != count) {
      return absl::InternalError(
          absl::StrFormat("read_state returned %u values for %u", values.size(), count));
    }
    std::memcpy(out, values.data(), count * sizeof(float));
    return absl::OkStatus();
  });
}

strata_status strata_write_state(strata_optimizer* opt, int param, strata_state_kind kind,
                                 const float* values, size_t count) {
  return guarded(__func__, [&] {
    STRATA_C_REQUIRE(opt);
    STRATA_RETURN_IF_ERROR(check_param(opt, param));
    STRATA_C_REQUIRE(values);
    STRATA_RETURN_IF_ERROR(check_count(opt, param, count));
    STRATA_ASSIGN_OR_RETURN(const strata::engine::StateKind k, to_cc(kind));
    if (opt->daemon != nullptr) return opt->daemon->client->remote().write_state(param, k, values);
    return opt->opt->write_state(param, k, values);
  });
}

strata_status strata_save_state(strata_optimizer* opt, const char* dir,
                                const char* user_meta_json) {
  return guarded(__func__, [&] {
    STRATA_C_REQUIRE(opt);
    STRATA_C_REQUIRE(dir);
    if (dir[0] == '\0') return absl::InvalidArgumentError("dir is empty");
    STRATA_RETURN_IF_ERROR(require_finalized(opt, true));
    nlohmann::json meta = nlohmann::json::object();
    if (user_meta_json != nullptr) {
      meta = nlohmann::json::parse(user_meta_json, nullptr, /*allow_exceptions=*/false);
      if (meta.is_discarded() || !meta.is_object()) {
        return absl::InvalidArgumentError("user_meta_json must be a JSON object (or NULL)");
      }
    }
    if (opt->daemon != nullptr) return opt->daemon->client->remote().save_state(dir, meta);
    return opt->opt->save_state(dir, meta);
  });
}

strata_status strata_load_state(strata_optimizer* opt, const char* dir, bool weights_only) {
  return guarded(__func__, [&] {
    STRATA_C_REQUIRE(opt);
    STRATA_C_REQUIRE(dir);
    if (dir[0] == '\0') return absl::InvalidArgumentError("dir is empty");
    STRATA_RETURN_IF_ERROR(require_finalized(opt, true));
    if (opt->daemon != nullptr) {
      STRATA_RETURN_IF_ERROR(opt->daemon->client->load_state(dir, weights_only));
      return absl::OkStatus();
    }
    return opt->opt->load_state(dir, weights_only);
  });
}

strata_status strata_num_params(const strata_optimizer* opt, int* out) {
  return guarded(__func__, [&] {
    STRATA_C_REQUIRE(opt);
    STRATA_C_REQUIRE(out);
    *out = opt->opt->num_params();
    return absl::OkStatus();
  });
}

strata_status strata_num_buckets(const strata_optimizer* opt, int* out) {
  return guarded(__func__, [&] {
    STRATA_C_REQUIRE(opt);
    STRATA_C_REQUIRE(out);
    *out = opt->daemon != nullptr && opt->finalized ? opt->daemon->client->remote().num_buckets()
                                                    : opt->opt->num_buckets();
    return absl::OkStatus();
  });
}

strata_status strata_steps(const strata_optimizer* opt, int64_t* out_steps,
                           int64_t* out_optimizer_steps) {
  return guarded(__func__, [&] {
    STRATA_C_REQUIRE(opt);
    if (opt->daemon != nullptr && opt->finalized) {
      if (out_steps != nullptr) *out_steps = opt->daemon->client->remote().steps();
      if (out_optimizer_steps != nullptr) {
        *out_optimizer_steps = opt->daemon->client->remote().optimizer_steps();
      }
      return absl::OkStatus();
    }
    if (out_steps != nullptr) *out_steps = opt->opt->steps();
    if (out_optimizer_steps != nullptr) *out_optimizer_steps = opt->opt->optimizer_steps();
    return absl::OkStatus();
  });
}

}  // extern "C"
