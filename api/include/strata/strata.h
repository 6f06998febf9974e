/* strata's C API: the OffloadOptimizer seam for programs in C or any
 * language with a C FFI. The program runs forward and backward and owns its
 * 16-bit (or fp32) params and grads; strata owns the fp32 master weights,
 * the optimizer states (device, pinned host or NVMe, as the DeepSpeed
 * ds_config says) and the CPU optimizer. Link: CMake `find_package(strata)`
 * and `strata::strata`, or `pkg-config --cflags --libs strata`
 * (docs/c_api.md).
 *
 * A run:
 *   strata_optimizer* opt;
 *   if (strata_optimizer_create(json, NULL, &opt) != STRATA_STATUS_OK)
 *     fprintf(stderr, "%s\n", strata_last_error());
 *   strata_group_hparams hp;  strata_group_defaults(opt, &hp);
 *   int g;  strata_add_group(opt, &hp, &g);
 *   strata_param_desc d = {"w1", n, 0, g, STRATA_BINDING_HOST, w1, w1_grad};
 *   int p;  strata_add_param(opt, &d, &p);
 *   strata_finalize(opt);
 *   strata_set_value(opt, p, w1_init, n);            fp32 start values
 *   loop: strata_begin_step(opt, NAN, &scale);       NAN: the config's scale
 *         ...backward writes w1_grad (times scale)...; strata_grad_ready(opt, 0);
 *         strata_step_result r;  strata_finish_step(opt, &r);   w1 updated
 *   strata_optimizer_destroy(opt);
 *
 * Errors: every call returns a strata_status; STRATA_STATUS_OK (0) is
 * success. On failure strata_last_error() holds a one-line message saying
 * what was wrong and what to do; it is per thread and stays until the next
 * failing call on that thread. No call aborts on bad input: NULL handles or
 * pointers, zero sizes and calls out of order return an error code. A call
 * that fails changes nothing unless its comment says otherwise.
 *
 * Threading: one handle is used from one thread at a time, except
 * strata_grad_ready and strata_report_overflow, which any number of threads
 * may call at once (backward hooks) between begin_step and finish_step.
 * Different handles are independent.
 *
 * Ownership: strings and arrays passed in are copied or used only during
 * the call, except the param and grad memory of a binding, which must stay
 * valid until the optimizer is destroyed. Returned strings belong to the
 * library.
 *
 * The header is C11 and includes only C standard headers; it compiles as C++
 * too. */
#ifndef STRATA_STRATA_H_
#define STRATA_STRATA_H_

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "strata/version.h"

#if defined(_WIN32)
#define STRATA_API
#elif defined(__GNUC__) || defined(__clang__)
/* libstrata.so is built with -fvisibility=hidden: only these are exported. */
#define STRATA_API __attribute__((visibility("default")))
#else
#define STRATA_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Errors ---------------------------------------------------------------
 * The codes are absl::StatusCode's (and gRPC's), value for value. The ones a
 * caller sees in practice: INVALID_ARGUMENT (a bad config key, a NULL
 * pointer, a size that does not match), NOT_FOUND (a missing file),
 * FAILED_PRECONDITION (a call out of order, a version mismatch),
 * RESOURCE_EXHAUSTED (memory budgets), DATA_LOSS (a torn checkpoint),
 * INTERNAL (a bug: please report the message). */
typedef enum strata_status {
  STRATA_STATUS_OK = 0,
  STRATA_STATUS_CANCELLED = 1,
  STRATA_STATUS_UNKNOWN = 2,
  STRATA_STATUS_INVALID_ARGUMENT = 3,
  STRATA_STATUS_DEADLINE_EXCEEDED = 4,
  STRATA_STATUS_NOT_FOUND = 5,
  STRATA_STATUS_ALREADY_EXISTS = 6,
  STRATA_STATUS_PERMISSION_DENIED = 7,
  STRATA_STATUS_RESOURCE_EXHAUSTED = 8,
  STRATA_STATUS_FAILED_PRECONDITION = 9,
  STRATA_STATUS_ABORTED = 10,
  STRATA_STATUS_OUT_OF_RANGE = 11,
  STRATA_STATUS_UNIMPLEMENTED = 12,
  STRATA_STATUS_INTERNAL = 13,
  STRATA_STATUS_UNAVAILABLE = 14,
  STRATA_STATUS_DATA_LOSS = 15,
  STRATA_STATUS_UNAUTHENTICATED = 16
} strata_status;

/* The message of the last call on this thread that failed ("" if none has).
 * Valid until the next failing call on this thread. Never NULL. */
STRATA_API const char* strata_last_error(void);

/* The code's name, e.g. "INVALID_ARGUMENT"; "UNKNOWN_STATUS" for values
 * outside the enum. Never NULL. */
STRATA_API const char* strata_status_name(strata_status status);

/* ---- Version ------------------------------------------------------------
 * STRATA_VERSION_MAJOR / _MINOR / _PATCH (strata/version.h) are the version
 * of the header compiled against; strata_version() is the library's. */

/* The library's version, "MAJOR.MINOR.PATCH". Never NULL. */
STRATA_API const char* strata_version(void);

/* STRATA_STATUS_OK when the library can serve a program built against
 * header version major.minor: the same major (the SONAME's) and a minor at
 * least as new. Otherwise FAILED_PRECONDITION naming both versions. Call it
 * as STRATA_CHECK_VERSION() at start-up. */
STRATA_API strata_status strata_check_version(int major, int minor);
#define STRATA_CHECK_VERSION() strata_check_version(STRATA_VERSION_MAJOR, STRATA_VERSION_MINOR)

/* ---- Creating an optimizer ---------------------------------------------- */

typedef struct strata_optimizer strata_optimizer; /* opaque */

typedef enum strata_device_kind {
  /* No accelerator: params and grads are host memory (STRATA_BINDING_HOST).
   * strata's device tier is then emulated in host memory. */
  STRATA_DEVICE_HOST = 0,
  /* CUDA device cuda_ordinal (a build with CUDA and a GPU; else
   * FAILED_PRECONDITION saying why). Bindings may be host or device. */
  STRATA_DEVICE_CUDA = 1,
  /* A simulated accelerator (no GPU needed), to test a program's
   * device-binding path, in-process or through stratad, on any machine:
   * device memory is host memory (host_device_bytes of it; 0: 1 GiB) that
   * the program takes with strata_device_alloc and reads and writes
   * directly; strata's copies to and from it take the time a PCIe Gen5
   * link would. Bindings may be host or device. */
  STRATA_DEVICE_SIM = 2
} strata_device_kind;

typedef struct strata_options {
  strata_device_kind device; /* default STRATA_DEVICE_HOST */
  int cuda_ordinal;          /* STRATA_DEVICE_CUDA: which GPU; default 0 */
  /* STRATA_DEVICE_HOST / STRATA_DEVICE_SIM: bytes of the emulated device
   * memory; 0: 1 GiB. */
  uint64_t host_device_bytes;
  /* Device bytes strata may use for its tier; 0: what the device has free. */
  uint64_t device_budget_bytes;
  /* Host bytes for the host tier; 0: what the placement needs. */
  uint64_t host_budget_bytes;
  /* Optimizer threads; 0: every core. */
  int num_threads;
  /* true: the config's "scheduler" sets every group's lr each step; false:
   * groups keep the lr given to add_group / set_group (the program runs its
   * own schedule). Default true. */
  bool use_schedule;
  /* Accept NVMe folders on filesystems without O_DIRECT (tmpfs, overlayfs),
   * at the page cache's speed. Default false. */
  bool allow_buffered_io;
  /* Non-NULL: the optimizer runs in stratad (docs/daemon.md) as the session
   * of this name (1-64 of [A-Za-z0-9._-]) instead of in this process;
   * strata_finalize attaches to it: a new name creates the session, an
   * existing one with the same params and config resumes it where its last
   * completed step left it (the params' values are then copied into the
   * program's param memory). Both bindings: grad_ready copies the bucket's
   * gradients into the session's shared memory (device bindings: on
   * strata's stream, waiting for that copy only; the program may reuse its
   * buffers once grad_ready returns) and finish_step copies the updated
   * params back (host bindings before it returns, device bindings
   * asynchronously: strata_wait_params); set_value and load_state copy them
   * before they return. With device bindings the shared memory is pinned
   * (cudaHostRegister) while the optimizer lives. The values are bit for
   * bit the in-process ones, report_overflow, set_group and write_state
   * included (each is one request to stratad; set_group's values stay
   * with the session, so a program that attaches to it again reads them
   * with get_group). Default NULL. */
  const char* daemon_session;
  /* stratad's socket; NULL: $XDG_RUNTIME_DIR/strata/stratad.sock, else
   * /run/strata/stratad.sock. Default NULL. */
  const char* daemon_socket;
} strata_options;

/* Fills *options with the defaults above. */
STRATA_API strata_status strata_options_init(strata_options* options);

/* A new optimizer from ds_config JSON text (DeepSpeed's format, as
 * docs/ds_config.md describes; a config error names the key path).
 * options may be NULL (the defaults). On success *out is a handle to free
 * with strata_optimizer_destroy; on failure *out is NULL. */
STRATA_API strata_status strata_optimizer_create(const char* ds_config_json,
                                                 const strata_options* options,
                                                 strata_optimizer** out);
/* As strata_optimizer_create, reading the JSON from a file (NOT_FOUND if
 * it is missing). */
STRATA_API strata_status strata_optimizer_create_from_file(const char* ds_config_path,
                                                           const strata_options* options,
                                                           strata_optimizer** out);
/* Frees everything the optimizer holds (its swap files and the device
 * memory strata_device_alloc gave and was not freed included). NULL is a
 * no-op. Never fails. */
STRATA_API void strata_optimizer_destroy(strata_optimizer* opt);

/* Device memory of the optimizer's device, e.g. for STRATA_BINDING_DEVICE
 * params and grads: cudaMalloc on STRATA_DEVICE_CUDA, host memory the
 * program may use directly on STRATA_DEVICE_SIM; STRATA_DEVICE_HOST has
 * none (FAILED_PRECONDITION). Like cudaMalloc it waits for the device's
 * work: take memory before training, not in a step. RESOURCE_EXHAUSTED
 * when the device is full. strata_device_free frees it, and
 * strata_optimizer_destroy frees what is left. */
STRATA_API strata_status strata_device_alloc(strata_optimizer* opt, size_t bytes, void** out);
/* Frees what strata_device_alloc returned on this optimizer (anything
 * else is INVALID_ARGUMENT); NULL is a no-op. Waits for the device's work,
 * as cudaFree does. */
STRATA_API strata_status strata_device_free(strata_optimizer* opt, void* ptr);

/* ---- Registration (before strata_finalize) ------------------------------ */

/* One hyper-parameter group (torch's param_groups). The optimizer kind is
 * the config's; these may differ per group and change between steps. */
typedef struct strata_group_hparams {
  double lr;
  double beta1;
  double beta2;
  double eps;
  double weight_decay;
  bool bias_correction;
} strata_group_hparams;

/* The config's optimizer params (lr, betas, eps, weight_decay,
 * bias_correction) as a group. */
STRATA_API strata_status strata_group_defaults(const strata_optimizer* opt,
                                               strata_group_hparams* out);

/* Adds a group; *out_group is its index (0, 1, ...). */
STRATA_API strata_status strata_add_group(strata_optimizer* opt, const strata_group_hparams* hp,
                                          int* out_group);

typedef enum strata_binding {
  /* Program host memory: finish_step reads the gradient from `grad` and
   * writes the updated param to `param`. */
  STRATA_BINDING_HOST = 1,
  /* Memory on the optimizer's device (STRATA_DEVICE_CUDA or
   * STRATA_DEVICE_SIM), in this process or through stratad
   * (daemon_session): the gradient is copied out at grad_ready, so it must
   * be complete on the device by then (synchronise the stream that wrote
   * it); the updated param is copied back asynchronously:
   * strata_wait_params says when it landed. */
  STRATA_BINDING_DEVICE = 2
} strata_binding;

/* One parameter. param and grad hold numel values of the optimizer's
 * compute dtype (strata_compute_dtype: fp16 / bf16 from the config's
 * "fp16" / "bf16" sections, else fp32). */
typedef struct strata_param_desc {
  const char* name; /* unique within its bucket; checkpoints and messages use it */
  uint64_t numel;   /* > 0 */
  int bucket;       /* the unit grad_ready reports: 0 .. the largest used */
  int group;        /* from strata_add_group */
  strata_binding binding;
  void* param;
  const void* grad;
} strata_param_desc;

/* Registers a param; *out_param is its handle (0, 1, ...). A name used
 * twice in a bucket, numel 0, a negative bucket, an unknown group or NULL
 * pointers are INVALID_ARGUMENT. */
STRATA_API strata_status strata_add_param(strata_optimizer* opt, const strata_param_desc* desc,
                                          int* out_param);

/* Places every tensor (device / host / NVMe as the config says) and creates
 * the swap files. Registration ends here; give every param its value with
 * strata_set_value before the first step. */
STRATA_API strata_status strata_finalize(strata_optimizer* opt);

typedef enum strata_dtype {
  STRATA_DTYPE_FLOAT32 = 0,
  STRATA_DTYPE_FLOAT16 = 1,
  STRATA_DTYPE_BFLOAT16 = 2
} strata_dtype;

/* The dtype of every param and grad binding. */
STRATA_API strata_status strata_compute_dtype(const strata_optimizer* opt, strata_dtype* out);

/* ---- After strata_finalize ---------------------------------------------- */

/* A param's starting value in fp32 (count == its numel): the master weight
 * becomes it, the optimizer states zero, and the bound param the value
 * rounded to the compute dtype. */
STRATA_API strata_status strata_set_value(strata_optimizer* opt, int param, const float* values,
                                          size_t count);

/* Starts a step. loss_scale: NAN for the config's (fp16 dynamic scaling; 1
 * otherwise), or the scale the program multiplies its loss by itself (its own
 * scaler; not with a config whose fp16 section scales: INVALID_ARGUMENT).
 * With the program's scale an inf / NaN gradient skips the step. *out_scale
 * (may be NULL) receives the scale in use: multiply the loss by it. */
STRATA_API strata_status strata_begin_step(strata_optimizer* opt, double loss_scale,
                                           double* out_scale);

/* The bucket's gradients are written: once per micro-batch per bucket
 * (gradient_accumulation_steps times a step; the micro-batches are summed in
 * fp32), in any order, from any thread. A bucket not reported in a step is
 * not stepped. The grad memory is read after this returns (on strata's
 * worker, overlapped with the rest of backward): leave it unchanged until
 * strata_wait_grads or strata_finish_step returns. Outside
 * begin_step..finish_step: FAILED_PRECONDITION. */
STRATA_API strata_status strata_grad_ready(strata_optimizer* opt, int bucket);

/* Blocks until every gradient reported so far has been read, so the program
 * may overwrite its grad memory (before the next micro-batch's backward). */
STRATA_API strata_status strata_wait_grads(strata_optimizer* opt);

/* The framework saw an inf / NaN gradient itself: this step is skipped. */
STRATA_API strata_status strata_report_overflow(strata_optimizer* opt);

typedef struct strata_step_result {
  int64_t step;      /* 1-based count of finished steps, skipped ones included */
  double loss_scale; /* the scale this step's gradients carried */
  bool skipped;      /* nothing was applied (overflow) */
  bool overflow;     /* some gradient was inf or NaN */
  double grad_norm;  /* global L2 norm, unscaled, before clipping (inf on overflow) */
  double clip_coef;  /* the gradient was divided by this (1: no clipping) */
  double lr;         /* group 0's rate applied (or that would have been) */
} strata_step_result;

/* Ends the step: the norm, overflow and clip decision, and the update of
 * every param (written to host bindings before it returns; device bindings
 * see strata_wait_params). *out may be NULL. A failure (an inf / NaN
 * gradient in fp32 or bf16 with the config's scale, "loss scale already at
 * minimum", I/O) changes nothing: speculative updates are undone, the
 * counters restored, and the program may run the step again. The exception:
 * an I/O failure after the update had written params it cannot undo; then
 * steps and saves are refused (FAILED_PRECONDITION, saying so) until
 * strata_load_state. */
STRATA_API strata_status strata_finish_step(strata_optimizer* opt, strata_step_result* out);

/* Abandons the step in flight (the program's forward or backward failed):
 * speculative updates are undone and the step is not counted. No step in
 * flight: a no-op. An error means the undo failed; the message says whether
 * a checkpoint must be loaded. */
STRATA_API strata_status strata_abort_step(strata_optimizer* opt);

/* Blocks until the bucket's device-bound params hold the last update
 * (returns at once for host bindings). */
STRATA_API strata_status strata_wait_params(strata_optimizer* opt, int bucket);

/* Between steps: a group's hyper-parameters (with use_schedule the
 * config's schedule sets lr, and OneCycle's betas, each step). */
STRATA_API strata_status strata_set_group(strata_optimizer* opt, int group,
                                          const strata_group_hparams* hp);
STRATA_API strata_status strata_get_group(const strata_optimizer* opt, int group,
                                          strata_group_hparams* out);

/* Which fp32 tensor of a param read_state / write_state address. */
typedef enum strata_state_kind {
  STRATA_STATE_MASTER = 0,
  STRATA_STATE_EXP_AVG = 1,
  STRATA_STATE_EXP_AVG_SQ = 2,
  STRATA_STATE_GRAD_ACCUM = 3
} strata_state_kind;

/* Copies a param's state (count == its numel floats) out of / into strata,
 * wherever it is homed. Between steps. */
STRATA_API strata_status strata_read_state(strata_optimizer* opt, int param, strata_state_kind kind,
                                           float* out, size_t count);
STRATA_API strata_status strata_write_state(strata_optimizer* opt, int param,
                                            strata_state_kind kind, const float* values,
                                            size_t count);

/* Checkpoints in strata's format (`strata ckpt info DIR` reads them).
 * user_meta_json: a JSON object stored with it, or NULL. A save interrupted
 * at any point leaves a loadable checkpoint (DIR, or DIR.old which load falls
 * back to); it replaces only a checkpoint strata wrote. load checks
 * everything (format, the param table against this optimizer's, checksums)
 * before it changes anything; with weights_only it loads the master weights
 * and params only, e.g. from a run with another optimizer or ZeRO stage.
 * Between steps. */
STRATA_API strata_status strata_save_state(strata_optimizer* opt, const char* dir,
                                           const char* user_meta_json);
STRATA_API strata_status strata_load_state(strata_optimizer* opt, const char* dir,
                                           bool weights_only);

/* Counts: registered params and buckets, finished steps (skipped ones
 * included) and applied optimizer steps (the Adam step). */
STRATA_API strata_status strata_num_params(const strata_optimizer* opt, int* out);
STRATA_API strata_status strata_num_buckets(const strata_optimizer* opt, int* out);
STRATA_API strata_status strata_steps(const strata_optimizer* opt, int64_t* out_steps,
                                      int64_t* out_optimizer_steps);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* STRATA_STRATA_H_ */
