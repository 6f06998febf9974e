// OffloadOptimizer's step: begin_step, grad_ready (accumulation, the
// speculative step), finish_step (the decision, rollback, the decided or
// delayed update, publishing to framework bindings) and the undo of a
// failed step. Registration, placement and state are in
// offload_optimizer.cc; the contract in offload_optimizer.h.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "dist/communicator.h"
#include "engine/offload_optimizer_impl.h"
#include "offload/pin.h"

namespace strata::engine {
namespace {

using offload::Access;
using offload::TensorView;
using offload::Tier;

// Adds the scope's wall time to *total on exit.
class AddElapsed {
 public:
  explicit AddElapsed(std::atomic<int64_t>* total_ns)
      : total_(total_ns), t0_(std::chrono::steady_clock::now()) {}
  ~AddElapsed() {
    total_->fetch_add(
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0_)
            .count());
  }
  AddElapsed(const AddElapsed&) = delete;
  AddElapsed& operator=(const AddElapsed&) = delete;

 private:
  std::atomic<int64_t>* total_;
  std::chrono::steady_clock::time_point t0_;
};

using offload::Pin;

}  // namespace

// ---------------------------------------------------------------------------
// The step.

OffloadOptimizer::Impl::StepArgs OffloadOptimizer::Impl::step_args(double grad_scale,
                                                                   int64_t step) const {
  StepArgs a;
  a.grad_scale = grad_scale;
  a.step = step;
  const auto betas = options.use_schedule ? schedule->betas() : std::nullopt;
  for (const GroupHyperparams& g : groups) {
    cpu_adam::Hyperparams hp;
    hp.kind = kind;
    hp.beta1 = g.beta1;
    hp.beta2 = g.beta2;
    hp.eps = g.eps;
    hp.weight_decay = g.weight_decay;
    hp.bias_correction = g.bias_correction;
    if (betas) {
      // OneCycle's cycled momentum, as DeepSpeed sets the optimizer's betas.
      hp.beta1 = (*betas)[0];
      hp.beta2 = (*betas)[1];
    }
    a.hp.push_back(hp);
    a.lr.push_back(options.use_schedule ? schedule->lr() : g.lr);
  }
  return a;
}

OffloadOptimizer::Impl::Counters OffloadOptimizer::Impl::counters() const {
  Counters c{.steps = steps,
             .micro_batches = micro_batches,
             .adam_step = adam_step,
             .schedule_iteration = schedule->iteration()};
  if (scaler != nullptr) c.scaler = scaler->state();
  return c;
}

absl::StatusOr<double> OffloadOptimizer::begin_step(std::optional<double> loss_scale) {
  Impl& m = *impl_;
  if (!m.finalized) {
    return absl::FailedPreconditionError("begin_step: the optimizer is not finalized");
  }
  if (m.in_step) {
    return absl::FailedPreconditionError(
        "begin_step: a step is in flight; call finish_step or abort_step first");
  }
  STRATA_RETURN_IF_ERROR(m.partly_stepped_status);
  if (loss_scale.has_value()) {
    if (m.scaler != nullptr) {
      return absl::InvalidArgumentError(
          "begin_step: the config's fp16 section has a loss scaler; an external loss scale "
          "needs fp16 without it (or bf16 / fp32)");
    }
    if (!(*loss_scale > 0) || !std::isfinite(*loss_scale)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "begin_step: the loss scale must be finite and above 0 (got ", *loss_scale, ")"));
    }
  }
  // The previous step's kDevice param copies read the store's copies, which
  // this step's optimizer may write again.
  if (m.has_device_bindings) STRATA_RETURN_IF_ERROR(m.device->synchronize_stream(m.stream));
  m.before = m.counters();
  m.unsaved_writes = 0;
  m.early_rollbacks = 0;
  m.stats_before = m.store->stats();
  ++m.steps;
  m.external_scale = loss_scale;
  m.loss_scale = loss_scale ? *loss_scale : m.scaler != nullptr ? m.scaler->scale() : 1.0;
  m.spec_args = m.step_args(1.0 / (m.loss_scale * m.grad_divisor()), m.adam_step + 1);
  m.store->begin_step();
  m.overflow.store(false);
  std::fill(m.calls.begin(), m.calls.end(), 0);
  std::fill(m.stats_calls.begin(), m.stats_calls.end(), 0);
  std::fill(m.pending_call.begin(), m.pending_call.end(), 0);
  std::fill(m.reductions.begin(), m.reductions.end(), 0);
  std::fill(m.grad_events.begin(), m.grad_events.end(), std::nullopt);
  std::fill(m.grad_stats.begin(), m.grad_stats.end(), cpu_adam::GradStats{});
  if (m.spec != nullptr) m.spec->begin_step(m.last_host_seconds, m.last_backward_seconds);
  m.step_start = m.last_grad = std::chrono::steady_clock::now();
  m.backward_reported = false;
  if (m.params_sliced) {
    // The last finished step's acquires are this step's expected order.
    m.drop_prefetched();
    m.prefetch_error = absl::OkStatus();
    m.gather_recording.clear();
    m.gather_pos = 0;
    m.gather_on_trace = !m.gather_trace.empty();
  }
  m.in_step = true;
  if (m.dp()) {
    // Round 0 (the first micro-batch) opens: the reduction thread waits for
    // its buckets.
    std::lock_guard lock(m.grad_mu);
    std::fill(m.reported_round.begin(), m.reported_round.end(), -1);
    m.dp_open = 0;
    m.dp_closed = m.dp_done = -1;
    m.dp_aborting = m.dp_abort_told = false;
    m.dp_error = absl::OkStatus();
    m.dp_overflow_agreed = false;
    m.dp_cv.notify_all();
  }
  return m.loss_scale;
}

absl::Status OffloadOptimizer::grad_ready(int bucket, std::optional<gpu::EventId> grad_written) {
  Impl& m = *impl_;
  if (!m.in_step) {
    return absl::FailedPreconditionError(
        absl::StrCat("grad_ready(", bucket, ") outside a step; call begin_step first"));
  }
  if (m.finish_half) {
    return absl::FailedPreconditionError(
        absl::StrCat("grad_ready(", bucket, ") after finish_step_local; call finish_step_global"));
  }
  if (bucket < 0 || bucket >= static_cast<int>(m.buckets.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat("grad_ready: no bucket ", bucket, " (", m.buckets.size(), " buckets)"));
  }
  std::lock_guard lock(m.grad_mu);
  m.last_grad = std::chrono::steady_clock::now();
  if (m.overflow.load()) return absl::OkStatus();  // nothing more leaves the device
  if (m.dp()) {
    // The reduction thread takes it from here (descending bucket order).
    if (m.reported_round[bucket] == m.dp_open) {
      return absl::FailedPreconditionError(absl::StrCat(
          "grad_ready(", bucket, ") twice without wait_grads() in between: with ", m.world,
          " data-parallel ranks a bucket's gradient is reduced once per micro-batch; call "
          "wait_grads() between micro-batches"));
    }
    ++m.calls[bucket];
    m.grad_events[bucket] = grad_written;
    m.reported_round[bucket] = m.dp_open;
    m.dp_cv.notify_all();
    return absl::OkStatus();
  }
  const int call = ++m.calls[bucket];
  if (m.worker != nullptr) {
    m.worker->submit(
        [&m, bucket, call, grad_written] { return m.bucket_done(bucket, call, grad_written); });
    return absl::OkStatus();
  }
  return m.bucket_done(bucket, call, grad_written);
}

absl::Status OffloadOptimizer::wait_grads() {
  Impl& m = *impl_;
  if (m.finish_half) {
    return absl::FailedPreconditionError(
        "wait_grads after finish_step_local; call finish_step_global");
  }
  STRATA_RETURN_IF_ERROR(m.drain_worker());
  if (m.dp() && m.in_step) return m.dp_close_round(/*open_next=*/true);
  // The framework may now overwrite its gradients: a last micro-batch the
  // fused pass would read from there goes into grad32 first (only a bucket
  // reported more often than gradient_accumulation_steps has one).
  for (int b = 0; m.in_step && b < static_cast<int>(m.buckets.size()); ++b) {
    STRATA_RETURN_IF_ERROR(m.materialize_bucket(b), absl::StrCat("bucket ", b));
  }
  return absl::OkStatus();
}

void OffloadOptimizer::report_overflow() { impl_->overflow.store(true); }
bool OffloadOptimizer::overflowed() const { return impl_->overflow.load(); }

void OffloadOptimizer::set_backward_seconds(double seconds) {
  impl_->last_backward_seconds = seconds;
  impl_->backward_reported = true;
}

absl::Status OffloadOptimizer::Impl::accumulate_bucket(int bucket, bool first,
                                                       std::optional<gpu::EventId> event) {
  bool waited = false;
  for (ParamHandle h : buckets[bucket]) {
    const ParamRec& p = params[h];
    const uint64_t n = p.desc.numel;
    Pin acc(store.get(), p.grad32, opt_tier);
    if (p.desc.binding == ParamBinding::kStore) {
      // Reading the grad on the host makes the store copy the device's back (D2H).
      Pin g(store.get(), p.grad, opt_tier);
      STRATA_ASSIGN_OR_RETURN(TensorView gv, g.acquire(Access::kRead));
      STRATA_ASSIGN_OR_RETURN(TensorView av,
                              acc.acquire(first ? Access::kWrite : Access::kReadWrite));
      STRATA_RETURN_IF_ERROR(cpu_adam::accumulate_grad(static_cast<float*>(av.data), gv.data, dtype,
                                                       n, first, options.exec));
      STRATA_RETURN_IF_ERROR(g.release(false));
      STRATA_RETURN_IF_ERROR(acc.release(true));
      continue;
    }
    const void* src = p.desc.grad;
    if (p.desc.binding == ParamBinding::kDevice) {
      if (event.has_value() && !waited) {
        STRATA_RETURN_IF_ERROR(device->wait_event(stream, *event),
                               absl::StrCat("bucket ", bucket, ": waiting for its gradient"));
        waited = true;
      }
      STRATA_RETURN_IF_ERROR(
          device->copy_to_host(staging.data(), p.desc.grad, n * dtype_size(dtype), stream),
          absl::StrCat("copying the gradient of ", p.desc.name));
      STRATA_RETURN_IF_ERROR(device->synchronize_stream(stream),
                             absl::StrCat("copying the gradient of ", p.desc.name));
      src = staging.data();
    }
    STRATA_ASSIGN_OR_RETURN(TensorView av,
                            acc.acquire(first ? Access::kWrite : Access::kReadWrite));
    STRATA_RETURN_IF_ERROR(cpu_adam::accumulate_grad(static_cast<float*>(av.data), src, dtype, n,
                                                     first, options.exec));
    STRATA_RETURN_IF_ERROR(acc.release(true));
  }
  return absl::OkStatus();
}

bool OffloadOptimizer::Impl::can_fuse(int bucket) const {
  return options.fuse_gradient_pass && !dpu && !bucket_has_device[bucket];
}

absl::Status OffloadOptimizer::Impl::with_grad(
    const ParamRec& p, int pending,
    const std::function<absl::Status(const cpu_adam::Buffers&)>& body) {
  // The rank's slice (the whole param with one rank; across ranks nothing is
  // pending: the fused pass is off).
  cpu_adam::Buffers g{.n = p.slice.numel};
  Pin acc(store.get(), p.grad32, opt_tier);
  if (pending != 1) {
    STRATA_ASSIGN_OR_RETURN(TensorView av, acc.acquire(Access::kRead));
    g.grad = av.data;
    g.grad_dtype = DType::kFloat32;
  }
  std::optional<Pin> src;
  if (pending != 0) {
    g.grad_accum = static_cast<const float*>(g.grad);
    g.grad_dtype = dtype;
    if (p.desc.binding == ParamBinding::kStore) {
      // Reading the grad on the host makes the store copy the device's back
      // (D2H) unless its host copy is still there.
      src.emplace(store.get(), p.grad, opt_tier);
      STRATA_ASSIGN_OR_RETURN(TensorView gv, src->acquire(Access::kRead));
      g.grad = gv.data;
    } else {
      g.grad = p.desc.grad;  // kHost (can_fuse excludes kDevice)
    }
  }
  STRATA_RETURN_IF_ERROR(body(g));
  if (src.has_value()) STRATA_RETURN_IF_ERROR(src->release(false));
  if (pending != 1) STRATA_RETURN_IF_ERROR(acc.release(false));
  return absl::OkStatus();
}

absl::Status OffloadOptimizer::Impl::materialize_bucket(int bucket) {
  const int pending = pending_call[bucket];
  if (pending == 0) return absl::OkStatus();
  const AddElapsed timed(&grad_ns);
  for (ParamHandle h : buckets[bucket]) {
    const ParamRec& p = params[h];
    Pin acc(store.get(), p.grad32, opt_tier);
    STRATA_ASSIGN_OR_RETURN(TensorView av,
                            acc.acquire(pending == 1 ? Access::kWrite : Access::kReadWrite));
    STRATA_RETURN_IF_ERROR(with_grad(p, pending, [&](const cpu_adam::Buffers& g) {
      return cpu_adam::accumulate_grad(static_cast<float*>(av.data), g.grad, g.grad_dtype,
                                       p.desc.numel, pending == 1, options.exec);
    }));
    STRATA_RETURN_IF_ERROR(acc.release(true));
  }
  pending_call[bucket] = 0;
  return absl::OkStatus();
}

absl::Status OffloadOptimizer::Impl::stats_bucket(int bucket, int call) {
  cpu_adam::GradStats total;
  for (ParamHandle h : buckets[bucket]) {
    const ParamRec& p = params[h];
    if (p.slice.numel == 0) continue;
    STRATA_RETURN_IF_ERROR(
        with_grad(p, pending_call[bucket], [&](const cpu_adam::Buffers& g) -> absl::Status {
          STRATA_ASSIGN_OR_RETURN(
              cpu_adam::GradStats gs,
              cpu_adam::grad_stats(g.grad, g.grad_dtype, g.n, options.exec, g.grad_accum));
          total.sum_squares += gs.sum_squares;
          total.nonfinite = total.nonfinite || gs.nonfinite;
          return absl::OkStatus();
        }));
  }
  grad_stats[bucket] = total;
  stats_calls[bucket] = call;
  return absl::OkStatus();
}

absl::Status OffloadOptimizer::Impl::bucket_done(int bucket, int call,
                                                 std::optional<gpu::EventId> event) {
  if (overflow.load()) return absl::OkStatus();  // nothing more leaves the device
  const bool last = call == gas;
  if (last && can_fuse(bucket)) {
    // The last micro-batch stays in its source (the framework keeps it until
    // wait_grads or finish_step): one pass reads it with grad32, the
    // statistics and, speculating, the step itself.
    pending_call[bucket] = call;
    if (spec != nullptr && spec->reserve(bucket)) {
      cpu_adam::GradStats stats;
      STRATA_RETURN_IF_ERROR(step_bucket(bucket, spec_args, StepTarget::kSpeculative, &stats),
                             "speculative step");
      spec->mark_stepped(bucket);
      grad_stats[bucket] = stats;
      stats_calls[bucket] = call;
    } else {
      const AddElapsed timed(&grad_ns);
      STRATA_RETURN_IF_ERROR(stats_bucket(bucket, call));
    }
    // A non-finite gradient stepped speculatively is undone by the decision.
    if (grad_stats[bucket].nonfinite) overflow.store(true);
    return absl::OkStatus();
  }
  {
    const AddElapsed timed(&grad_ns);
    STRATA_RETURN_IF_ERROR(accumulate_bucket(bucket, call == 1, event));
    if (call >= gas) STRATA_RETURN_IF_ERROR(stats_bucket(bucket, call));
  }
  if (call < gas) return absl::OkStatus();
  if (grad_stats[bucket].nonfinite) overflow.store(true);
  if (!last) {
    // More gradient after the bucket's speculative step: it is undone here
    // and the bucket stepped once the step is decided.
    if (spec != nullptr && spec->stepped(bucket)) {
      STRATA_RETURN_IF_ERROR(restore_bucket(bucket), "undoing a speculative step");
      spec->mark_restored(bucket);
      ++early_rollbacks;
    }
    return absl::OkStatus();
  }
  if (spec == nullptr || overflow.load()) return absl::OkStatus();
  // Speculative step, when its rollback copies fit (the others wait for the
  // end of backward).
  if (!spec->reserve(bucket)) return absl::OkStatus();
  STRATA_RETURN_IF_ERROR(step_bucket(bucket, spec_args, StepTarget::kSpeculative),
                         "speculative step");
  spec->mark_stepped(bucket);
  return absl::OkStatus();
}

absl::Status OffloadOptimizer::Impl::step_bucket(int bucket, const StepArgs& args,
                                                 StepTarget target, cpu_adam::GradStats* stats) {
  const AddElapsed timed(&optimizer_ns);
  const std::vector<ParamHandle>& ps = buckets[bucket];
  if (stats != nullptr) *stats = {};
  // Gathered on the device (stage 1/2): the updated slices go into the
  // part gather_bucket sends, not into the params (homed on the device; or
  // a host copy, writing which would first bring the device's newer copy
  // back, whole, D2H).
  const bool to_part =
      target == StepTarget::kParam && !dp_gather_device.empty() && dp_gather_device[bucket] != 0;
  const BucketLayout gl = to_part ? bucket_layout(bucket, 0) : BucketLayout{};
  for (int i = 0; i < static_cast<int>(ps.size()); ++i) {
    const ParamRec& p = params[ps[i]];
    // The rank's slice of the param (the whole param with one rank).
    const uint64_t n = p.slice.numel;
    if (n == 0) continue;
    Pin master(store.get(), p.master, opt_tier);
    Pin m(store.get(), p.exp_avg, opt_tier);
    Pin v(store.get(), p.exp_avg_sq, opt_tier);
    Pin out(store.get(), target == StepTarget::kParamNext ? p.param_next : p.param, opt_tier);
    STRATA_ASSIGN_OR_RETURN(TensorView pv, master.acquire(Access::kReadWrite));
    STRATA_ASSIGN_OR_RETURN(TensorView mv, m.acquire(Access::kReadWrite));
    STRATA_ASSIGN_OR_RETURN(TensorView vv, v.acquire(Access::kReadWrite));
    void* out_slice = nullptr;
    if (to_part) {
      out_slice =
          dp_param_part.data() + (gl.pos[i * world + rank] - gl.pos[rank]) * dtype_size(dtype);
    } else {
      STRATA_ASSIGN_OR_RETURN(TensorView ov, out.acquire(Access::kWrite));
      // The slice's place in the whole compute param.
      out_slice =
          static_cast<uint8_t*>(ov.data) + (p.slice.offset - p.param_lo()) * dtype_size(dtype);
    }
    // The speculative step writes its rollback copy in the same pass; a
    // state the kind leaves alone is copied here.
    float* slot = target == StepTarget::kSpeculative ? spec->save_slot(bucket, i) : nullptr;
    if (slot != nullptr && kind == cpu_adam::OptimizerKind::kAdagrad) {
      std::memcpy(slot + n, mv.data, n * sizeof(float));
      optimizer_bytes += n * 2 * sizeof(float);
    }
    if (slot != nullptr && kind == cpu_adam::OptimizerKind::kLion) {
      std::memcpy(slot + 2 * n, vv.data, n * sizeof(float));
      optimizer_bytes += n * 2 * sizeof(float);
    }
    const bool fp32 = dtype == DType::kFloat32;
    const cpu_adam::Hyperparams& hp = args.hp[p.desc.group];
    const cpu_adam::StepArgs sa{
        .lr = args.lr[p.desc.group], .step = args.step, .grad_scale = args.grad_scale};
    auto run = [&](const cpu_adam::Buffers& grad) -> absl::Status {
      cpu_adam::Buffers b = grad;
      b.param = static_cast<float*>(pv.data);
      b.exp_avg = static_cast<float*>(mv.data);
      b.exp_avg_sq = static_cast<float*>(vv.data);
      b.param_out = fp32 ? nullptr : out_slice;
      b.out_dtype = fp32 ? DType::kFloat16 : dtype;
      if (slot != nullptr) {
        b.save_param = slot;
        b.save_exp_avg = slot + n;
        b.save_exp_avg_sq = slot + 2 * n;
      }
      optimizer_bytes += cpu_adam::step_bytes(hp.kind, b);
      // The kernel writes everything or nothing (its errors are argument
      // checks), so once it returns the copy is whole.
      if (stats == nullptr) {
        STRATA_RETURN_IF_ERROR(cpu_adam::optimizer_step(hp, sa, b, options.exec));
      } else {
        STRATA_ASSIGN_OR_RETURN(cpu_adam::GradStats gs,
                                cpu_adam::optimizer_step_with_stats(hp, sa, b, options.exec));
        stats->sum_squares += gs.sum_squares;
        stats->nonfinite = stats->nonfinite || gs.nonfinite;
      }
      if (slot != nullptr) spec->mark_saved(bucket, i);
      return absl::OkStatus();
    };
    STRATA_RETURN_IF_ERROR(with_grad(p, pending_call[bucket], run),
                           absl::StrCat("optimizer step of ", store->spec(p.master).name));
    if (target == StepTarget::kParam && (spec == nullptr || i >= spec->saved_params(bucket))) {
      ++unsaved_writes;
    }
    if (fp32) {
      std::memcpy(out_slice, pv.data, n * sizeof(float));
      optimizer_bytes += n * 2 * sizeof(float);
    }
    STRATA_RETURN_IF_ERROR(master.release(true));
    STRATA_RETURN_IF_ERROR(m.release(true));
    STRATA_RETURN_IF_ERROR(v.release(true));
    // Dirtying the host copy drops the stale device copy; the next forward
    // loads the new one (H2D).
    if (!to_part) STRATA_RETURN_IF_ERROR(out.release(true));
    if (target == StepTarget::kParamNext) ++next_done[bucket];
  }
  return absl::OkStatus();
}

absl::Status OffloadOptimizer::Impl::restore_bucket(int bucket) {
  const AddElapsed timed(&optimizer_ns);
  const std::vector<ParamHandle>& ps = buckets[bucket];
  for (int i = 0; i < spec->saved_params(bucket); ++i) {
    const ParamRec& p = params[ps[i]];
    Pin master(store.get(), p.master, opt_tier);
    Pin m(store.get(), p.exp_avg, opt_tier);
    Pin v(store.get(), p.exp_avg_sq, opt_tier);
    Pin out(store.get(), p.param, opt_tier);
    STRATA_ASSIGN_OR_RETURN(TensorView pv, master.acquire(Access::kWrite));
    STRATA_ASSIGN_OR_RETURN(TensorView mv, m.acquire(Access::kWrite));
    STRATA_ASSIGN_OR_RETURN(TensorView vv, v.acquire(Access::kWrite));
    STRATA_ASSIGN_OR_RETURN(TensorView ov, out.acquire(Access::kWrite));
    spec->restore(bucket, i, static_cast<float*>(pv.data), static_cast<float*>(mv.data),
                  static_cast<float*>(vv.data));
    // The compute param is always the master rounded to nearest even (the
    // optimizer writes it so, and so do initialisation and checkpoints).
    round_master(static_cast<const float*>(pv.data), ov.data, dtype, p.desc.numel);
    // The copies read, the three tensors written, the master re-read for the copy out.
    optimizer_bytes += p.desc.numel * (3 * 2 * sizeof(float) + sizeof(float) + dtype_size(dtype));
    for (Pin* pin : {&master, &m, &v, &out}) STRATA_RETURN_IF_ERROR(pin->release(true));
  }
  return absl::OkStatus();
}

absl::Status OffloadOptimizer::Impl::publish_bucket(int bucket) {
  bool any = false;
  for (ParamHandle h : buckets[bucket]) {
    const ParamRec& p = params[h];
    if (p.desc.binding == ParamBinding::kStore) continue;
    Pin out(store.get(), p.param, opt_tier);
    STRATA_ASSIGN_OR_RETURN(TensorView ov, out.acquire(Access::kRead));
    const uint64_t bytes = p.desc.numel * dtype_size(dtype);
    // The framework's copy cannot be put back: a failure after this counts
    // as a partly stepped update.
    ++unsaved_writes;
    if (p.desc.binding == ParamBinding::kHost) {
      std::memcpy(p.desc.param, ov.data, bytes);
    } else {
      // The store's copy is the param's home on the optimizer's tier and
      // stays in place; begin_step waits for the copy before rewriting it.
      STRATA_RETURN_IF_ERROR(device->copy_to_device(p.desc.param, ov.data, bytes, stream),
                             absl::StrCat("copying param ", p.desc.name, " to the device"));
      any = true;
    }
    STRATA_RETURN_IF_ERROR(out.release(false));
  }
  if (any) STRATA_RETURN_IF_ERROR(device->record_event(bucket_events[bucket], stream));
  return absl::OkStatus();
}

bool OffloadOptimizer::Impl::update_complete() const {
  for (size_t b = 0; b < buckets.size(); ++b) {
    if (next_done[b] != static_cast<int>(buckets[b].size())) return false;
  }
  return true;
}

absl::Status OffloadOptimizer::Impl::swap_in_update() {
  if (!update_pending) return absl::OkStatus();
  update_pending = false;
  // Only what the update wrote goes in: after a failed update the params it
  // did not reach keep their values (param_next holds an older update's, or
  // nothing yet).
  for (size_t b = 0; b < buckets.size(); ++b) {
    const int done = next_done[b];
    next_done[b] = 0;
    for (int i = 0; i < done; ++i) {
      const ParamRec& p = params[buckets[b][i]];
      // Both on the host (or both on the device): the store swaps the two
      // buffers instead of a copy the step would wait for (28 ms of a
      // 170 ms gpt2-xl-shaped step in bench step at 150 TFLOPS).
      const offload::TensorSpec& ps = store->spec(p.param);
      const offload::TensorSpec& ns = store->spec(p.param_next);
      if (ps.home == ns.home && ps.home != Tier::kNvme && ps.numel == ns.numel) {
        STRATA_RETURN_IF_ERROR(store->exchange(p.param, p.param_next));
        continue;
      }
      Pin next(store.get(), p.param_next, opt_tier);
      Pin param(store.get(), p.param, opt_tier);
      STRATA_ASSIGN_OR_RETURN(TensorView nv, next.acquire(Access::kRead));
      STRATA_ASSIGN_OR_RETURN(TensorView pv, param.acquire(Access::kWrite));
      // On the optimizer's threads: the step waits for this copy.
      const size_t esize = dtype_size(dtype);
      auto* dst = static_cast<char*>(pv.data);
      const auto* src = static_cast<const char*>(nv.data);
      cpu_adam::first_touch(p.desc.numel, options.exec, [&](size_t begin, size_t end) {
        std::memcpy(dst + begin * esize, src + begin * esize, (end - begin) * esize);
      });
      STRATA_RETURN_IF_ERROR(next.release(false));
      // Dirty: the device copy is stale; the next forward loads this one.
      STRATA_RETURN_IF_ERROR(param.release(true));
    }
  }
  return absl::OkStatus();
}

absl::Status OffloadOptimizer::Impl::drain_worker() {
  if (worker == nullptr) return absl::OkStatus();
  absl::Status drained = worker->drain();
  if (update_pending && !update_complete()) {
    // The delayed update failed (its error came out of this drain or an
    // earlier one): what it wrote goes in now, and nothing stays pending.
    if (absl::Status s = swap_in_update(); !s.ok()) {
      return annotate(drained, absl::StrCat("then swapping in what it wrote: ", s.message()));
    }
  }
  return drained;
}

absl::Status OffloadOptimizer::Impl::finish_pending_update() {
  STRATA_RETURN_IF_ERROR(drain_worker(), "the delayed update");
  return swap_in_update();
}

// `status` with `note` (a sentence of its own) after its message: the
// failure reads first, what it left behind after it, and the message stays
// a complete sentence whatever a caller puts before it.
static absl::Status with_note(const absl::Status& status, absl::string_view note) {
  return absl::Status(status.code(), absl::StrCat(status.message(), "; ", note));
}

absl::Status OffloadOptimizer::Impl::undo_step(absl::Status status) {
  finish_half = false;
  if (dp()) {
    // The round in flight ends with the other ranks told (they fail the
    // step too, rather than wait for this rank until their timeout).
    std::unique_lock lock(grad_mu);
    dp_aborting = true;
    if (dp_open >= 0) {
      // The round in flight ends: its buckets not reduced yet carry the news.
      dp_end_round(lock);
      // All of them went before it (a forward failed, or a backward after
      // its last grad_ready): the next round's agreement carries it, which
      // the others hold at their next wait_grads or at finish_step. An
      // error already seen needs no telling: it was the news of another
      // rank, or the communicator failed.
      if (!dp_abort_told && dp_error.ok()) {
        ++dp_open;
        dp_end_round(lock);
      }
      dp_open = dp_done = -1;
    }
  }
  // The worker may still hold this step's jobs, which use the store; a
  // delayed update of the step before that succeeded stays pending.
  if (absl::Status s = drain_worker(); !s.ok() && s != status) {
    status = with_note(status, absl::StrCat("the worker failed too: ", s.message()));
  }
  // Every bucket with copies is restored: stepped speculatively, stepped
  // again after the decision, or failed half way through.
  for (int b = 0; spec != nullptr && b < static_cast<int>(buckets.size()); ++b) {
    if (!spec->has_copies(b)) continue;
    if (absl::Status s = restore_bucket(b); !s.ok()) {
      status = with_note(status, absl::StrCat("restoring layer ", b,
                                              " failed too, so its weights are left partly "
                                              "updated (load a checkpoint): ",
                                              s.message()));
    }
  }
  if (unsaved_writes > 0) {
    // Those params cannot be put back: stepping again would apply this
    // update to them twice, saving would store half a step.
    partly_stepped_status = absl::FailedPreconditionError(absl::StrCat(
        "step ", before.steps + 1, " failed after it had updated ", unsaved_writes,
        " param(s) with no copy to undo them (", status.message(),
        "); the weights are partly stepped: load the last checkpoint (strata train --resume) "
        "to continue"));
    status = with_note(status, absl::StrCat(unsaved_writes,
                                            " param(s) were already updated with no copy to undo "
                                            "them: load the last checkpoint to continue"));
  }
  if (params_sliced) drop_prefetched();
  steps = before.steps;
  micro_batches = before.micro_batches;
  adam_step = before.adam_step;
  schedule->set_iteration(before.schedule_iteration);
  if (scaler != nullptr) scaler->restore(before.scaler);
  store->end_step();
  in_step = false;
  return status;
}

// ---------------------------------------------------------------------------
// Data parallel: the reduction and the gather (contract in
// offload_optimizer.h, "Data parallel"). Reductions run on the reduction
// thread in descending bucket order, gathers on the step's thread in
// ascending order after it, so every rank issues the same collectives in
// the same order whatever order its grad_ready calls came in.

void OffloadOptimizer::Impl::dp_loop() {
  const int num_buckets = static_cast<int>(buckets.size());
  std::unique_lock lock(grad_mu);
  for (;;) {
    dp_wait_bucket = kDpIdle;
    dp_cv.notify_all();
    dp_cv.wait(lock,
               [&] { return dp_stop || (dp_open >= 0 && dp_open > dp_done && !dp_comm_held); });
    dp_wait_bucket = kDpBusy;
    if (dp_stop) return;
    const int round = dp_open;
    absl::Status status = dp_error;  // after an error the communicator is unusable
    if (status.ok() && round > 0) {
      const bool aborting = dp_aborting;
      lock.unlock();
      status = dp_agree(aborting);
      lock.lock();
      if (aborting) dp_abort_told = true;
    }
    for (int b = num_buckets - 1; b >= 0 && status.ok(); --b) {
      if (buckets[b].empty()) continue;
      dp_wait_bucket = b;
      dp_cv.notify_all();
      dp_cv.wait(lock, [&] {
        return dp_stop || ((reported_round[b] == round || dp_closed >= round) && !dp_comm_held);
      });
      dp_wait_bucket = kDpBusy;
      if (dp_stop) return;
      // Every rank saw the agreed overflow: none reduces more this step.
      if (dp_overflow_agreed.load()) break;
      const bool have = reported_round[b] == round;
      const bool aborting = dp_aborting;
      lock.unlock();
      status = dp_bucket(b, have, overflow.load(), aborting);
      lock.lock();
      if (aborting) dp_abort_told = true;
    }
    if (!status.ok() && dp_error.ok()) dp_error = status;
    dp_done = round;
    dp_cv.notify_all();
  }
}

absl::Status OffloadOptimizer::Impl::dp_bucket(int bucket, bool have, bool local_overflow,
                                               bool aborting) {
  const AddElapsed timed(&grad_ns);
  // The agreement travels with the gradient: three floats after each
  // rank's part, summed like it and so seen alike by every rank.
  float flags[kDpFlags] = {have ? 1.0f : 0.0f, local_overflow ? 1.0f : 0.0f,
                           aborting ? 1.0f : 0.0f};
  STRATA_RETURN_IF_ERROR(
      reduce_bucket(bucket, have, reductions[bucket] == 0, flags),
      absl::StrCat("reducing the gradients of bucket ", bucket, " across ", world, " ranks"));
  if (flags[2] != 0) return dp_abandoned();
  if (flags[1] != 0) {
    overflow.store(true);
    dp_overflow_agreed.store(true);
  } else if (flags[0] != 0) {
    ++reductions[bucket];
  }
  return absl::OkStatus();
}

bool OffloadOptimizer::Impl::dp_thread_blocked() const {
  if (dp_stop || dp_wait_bucket == kDpIdle) return dp_stop || !(dp_open >= 0 && dp_open > dp_done);
  if (dp_wait_bucket == kDpBusy) return false;
  return reported_round[dp_wait_bucket] != dp_open && dp_closed < dp_open;
}

OffloadOptimizer::Impl::DpCommTurn::DpCommTurn(Impl* m)
    : m_(m->dp_thread.joinable() ? m : nullptr) {
  if (m_ == nullptr) return;
  std::unique_lock lock(m_->grad_mu);
  m_->dp_cv.wait(lock, [&] { return m_->dp_thread_blocked(); });
  m_->dp_comm_held = true;
}

OffloadOptimizer::Impl::DpCommTurn::~DpCommTurn() {
  if (m_ == nullptr) return;
  std::lock_guard lock(m_->grad_mu);
  m_->dp_comm_held = false;
  m_->dp_cv.notify_all();
}

absl::Status OffloadOptimizer::Impl::dp_agree(bool aborting) {
  double flag[1] = {aborting ? 1.0 : 0.0};
  STRATA_RETURN_IF_ERROR(
      comm->all_reduce_host(flag, dist::ReduceOp::kSum),
      absl::StrCat("agreeing on the step's next micro-batch across ", world, " ranks"));
  if (flag[0] != 0) return dp_abandoned();
  return absl::OkStatus();
}

void OffloadOptimizer::Impl::dp_end_round(std::unique_lock<std::mutex>& lock) {
  dp_closed = dp_open;
  dp_cv.notify_all();
  dp_cv.wait(lock, [&] { return dp_done >= dp_closed; });
}

absl::Status OffloadOptimizer::Impl::dp_close_round(bool open_next) {
  std::unique_lock lock(grad_mu);
  if (dp_open < 0) return absl::OkStatus();  // no round open (between steps)
  dp_end_round(lock);
  if (open_next && dp_error.ok()) {
    ++dp_open;
    dp_cv.notify_all();
  } else if (!open_next) {
    dp_open = dp_done = -1;  // the thread idles until the next step
  }
  return dp_error;
}

void OffloadOptimizer::Impl::dp_stop_thread() {
  if (!dp_thread.joinable()) return;
  {
    std::lock_guard lock(grad_mu);
    dp_stop = true;
    dp_cv.notify_all();
  }
  dp_thread.join();
}

// A bucket's elements in rank-major order: part q holds slice q of every
// param of the bucket, in bucket order, so one reduce_scatter (or
// all_gather) with per-rank counts moves the whole bucket.
OffloadOptimizer::Impl::BucketLayout OffloadOptimizer::Impl::bucket_layout(int bucket,
                                                                           int extra) const {
  const std::vector<ParamHandle>& ps = buckets[bucket];
  // Unsplit (stage 0): one part, every param whole, that every rank reads.
  const int parts = partitioned() ? world : 1;
  BucketLayout l;
  l.counts.assign(parts, 0);
  l.pos.assign(ps.size() * parts, 0);
  l.extra.assign(parts, 0);
  uint64_t at = 0;
  for (int q = 0; q < parts; ++q) {
    for (size_t i = 0; i < ps.size(); ++i) {
      l.pos[i * parts + q] = at;
      const uint64_t n = partition_slice(params[ps[i]].desc.numel, q, parts).numel;
      l.counts[q] += n;
      at += n;
    }
    l.extra[q] = at;
    l.counts[q] += extra;
    at += extra;
  }
  l.total = at;
  return l;
}

absl::Status OffloadOptimizer::Impl::reduce_bucket(int bucket, bool have, bool first,
                                                   float* flags) {
  const std::vector<ParamHandle>& ps = buckets[bucket];
  const BucketLayout l = bucket_layout(bucket, kDpFlags);
  if (dp_bucket_device[bucket]) {
    STRATA_RETURN_IF_ERROR(reduce_bucket_on_device(bucket, have, flags));
    return accumulate_reduced(bucket, dp_part.data(), first, flags);
  }
  // The parts of the layout and this rank's (one part, 0, at stage 0).
  const int parts = partitioned() ? world : 1;
  const int own = partitioned() ? rank : 0;
  dp_whole.resize(l.total);
  if (!have) std::fill(dp_whole.begin(), dp_whole.end(), 0.0f);  // this rank adds nothing
  for (int q = 0; q < parts; ++q) std::copy(flags, flags + kDpFlags, &dp_whole[l.extra[q]]);
  bool waited = false;
  const uint64_t esize = dtype_size(dtype);
  for (size_t i = 0; have && i < ps.size(); ++i) {
    const ParamRec& p = params[ps[i]];
    // The gradient where the framework left it, each slice converted to
    // fp32 into its place.
    auto pack = [&](const void* grad) -> absl::Status {
      for (int q = 0; q < parts; ++q) {
        const ParamSlice sl = partition_slice(p.desc.numel, q, parts);
        if (sl.numel == 0) continue;
        STRATA_RETURN_IF_ERROR(
            cpu_adam::accumulate_grad(dp_whole.data() + l.pos[i * parts + q],
                                      static_cast<const uint8_t*>(grad) + sl.offset * esize, dtype,
                                      sl.numel, true, options.exec));
      }
      return absl::OkStatus();
    };
    if (p.desc.binding == ParamBinding::kStore) {
      // Reading the grad on the host makes the store copy the device's back (D2H).
      Pin g(store.get(), p.grad, opt_tier);
      STRATA_ASSIGN_OR_RETURN(TensorView gv, g.acquire(Access::kRead));
      STRATA_RETURN_IF_ERROR(pack(gv.data), p.desc.name);
      STRATA_RETURN_IF_ERROR(g.release(false));
    } else if (p.desc.binding == ParamBinding::kHost) {
      STRATA_RETURN_IF_ERROR(pack(p.desc.grad), p.desc.name);
    } else {
      if (grad_events[bucket].has_value() && !waited) {
        STRATA_RETURN_IF_ERROR(device->wait_event(stream, *grad_events[bucket]),
                               "waiting for the gradient");
        waited = true;
      }
      STRATA_RETURN_IF_ERROR(
          device->copy_to_host(staging.data(), p.desc.grad, p.desc.numel * esize, stream),
          absl::StrCat("copying the gradient of ", p.desc.name));
      STRATA_RETURN_IF_ERROR(device->synchronize_stream(stream));
      STRATA_RETURN_IF_ERROR(pack(staging.data()), p.desc.name);
    }
  }
  // Summed in fp32 (the mean's 1/world is in the optimizer's divisor).
  const float* mine = nullptr;
  if (config.zero.stage >= 2) {
    dp_part.resize(std::max<uint64_t>(1, l.counts[rank]));
    STRATA_RETURN_IF_ERROR(comm->reduce_scatter(dp_whole.data(), dp_part.data(), l.counts,
                                                DType::kFloat32, dist::ReduceOp::kSum));
    mine = dp_part.data();
  } else {
    STRATA_RETURN_IF_ERROR(
        comm->all_reduce(dp_whole.data(), l.total, DType::kFloat32, dist::ReduceOp::kSum));
    mine = dp_whole.data() + (own == 0 ? 0 : l.extra[own - 1] + kDpFlags);  // part `own`
  }
  return accumulate_reduced(bucket, mine, first, flags);
}

// This rank's part of a reduced bucket (its slices, then the flags' sums)
// into grad32.
absl::Status OffloadOptimizer::Impl::accumulate_reduced(int bucket, const float* mine, bool first,
                                                        float* flags) {
  const std::vector<ParamHandle>& ps = buckets[bucket];
  const BucketLayout l = bucket_layout(bucket, kDpFlags);
  const int own = partitioned() ? rank : 0;  // one part, 0, at stage 0
  const float* summed = mine + (l.counts[own] - kDpFlags);
  std::copy(summed, summed + kDpFlags, flags);
  // Nobody had this bucket's gradient, or an overflow stops the step.
  if (flags[0] == 0 || flags[1] != 0 || flags[2] != 0) return absl::OkStatus();
  uint64_t at = 0;
  for (ParamHandle h : ps) {
    const ParamRec& p = params[h];
    if (p.slice.numel == 0) continue;
    Pin acc(store.get(), p.grad32, opt_tier);
    STRATA_ASSIGN_OR_RETURN(TensorView av,
                            acc.acquire(first ? Access::kWrite : Access::kReadWrite));
    STRATA_RETURN_IF_ERROR(cpu_adam::accumulate_grad(static_cast<float*>(av.data), mine + at,
                                                     DType::kFloat32, p.slice.numel, first,
                                                     options.exec));
    STRATA_RETURN_IF_ERROR(acc.release(true));
    at += p.slice.numel;
  }
  return absl::OkStatus();
}

absl::Status OffloadOptimizer::Impl::reduce_bucket_on_device(int bucket, bool have,
                                                             const float* flags) {
  const std::vector<ParamHandle>& ps = buckets[bucket];
  const BucketLayout l = bucket_layout(bucket, kDpFlags);
  const uint64_t esize = dtype_size(dtype);
  auto* whole = static_cast<float*>(dp_dev_whole);
  // The gradients stay pinned on the device until the casts that read them are done.
  std::vector<Pin> pins;
  pins.reserve(ps.size());
  for (size_t i = 0; have && i < ps.size(); ++i) {
    const ParamRec& p = params[ps[i]];
    pins.emplace_back(store.get(), p.grad, Tier::kDevice);
    STRATA_ASSIGN_OR_RETURN(TensorView gv, pins.back().acquire(Access::kRead), p.desc.name);
    for (int q = 0; q < world; ++q) {
      const ParamSlice sl = partition_slice(p.desc.numel, q, world);
      if (sl.numel == 0) continue;
      // Each slice widened to fp32 into its place (exact, as the host path's conversion).
      STRATA_RETURN_IF_ERROR(
          device->cast(static_cast<const uint8_t*>(gv.data) + sl.offset * esize, dtype,
                       whole + l.pos[i * world + q], DType::kFloat32, sl.numel, dp_stream),
          absl::StrCat("packing the gradient of ", p.desc.name));
    }
  }
  STRATA_RETURN_IF_ERROR(device->synchronize_stream(dp_stream));
  for (Pin& pin : pins) STRATA_RETURN_IF_ERROR(pin.release(false));
  // Consumed: the device copies are never written back over PCIe (the
  // next micro-batch's backward overwrites them where they are). Grads
  // homed on the device (Placement::grad_home) have no copy below.
  for (size_t i = 0; have && i < ps.size(); ++i) {
    const offload::TensorId g = params[ps[i]].grad;
    if (store->spec(g).home == Tier::kDevice) continue;
    STRATA_RETURN_IF_ERROR(store->abandon_changes(g, Tier::kDevice));
  }
  // The device's memory is host memory (dp_comm_on_device): the host
  // writes the zeros of a missing gradient (rare: a bucket another rank
  // reported) and the flags itself, and reads the flags' sums back. A
  // device that only times its copies (move_data = false, bench step)
  // would not carry them, and on a real link they are a memset and bytes.
  if (!have) std::fill(whole, whole + l.total, 0.0f);
  for (int q = 0; q < world; ++q) std::copy(flags, flags + kDpFlags, whole + l.extra[q]);
  STRATA_RETURN_IF_ERROR(
      comm->reduce_scatter(whole, dp_dev_part, l.counts, DType::kFloat32, dist::ReduceOp::kSum));
  // Only this rank's part of the gradients crosses PCIe, in fp32 (exact)
  // or in communication_data_type's 16 bits: the fp32 sum rounded once on
  // the device (as DeepSpeed's reduction in that dtype rounds it), half the
  // bytes, widened again on the host.
  const uint64_t grads = l.counts[rank] - kDpFlags;
  dp_part.resize(l.counts[rank]);
  if (grads > 0 && dp_wire == DType::kFloat32) {
    STRATA_RETURN_IF_ERROR(
        device->copy_to_host(dp_part.data(), dp_dev_part, grads * sizeof(float), dp_stream));
    STRATA_RETURN_IF_ERROR(device->synchronize_stream(dp_stream));
    dp_d2h_bytes += grads * sizeof(float);
  } else if (grads > 0) {
    STRATA_RETURN_IF_ERROR(
        device->cast(dp_dev_part, DType::kFloat32, dp_dev_part16, dp_wire, grads, dp_stream));
    dp_part16.resize(grads);
    STRATA_RETURN_IF_ERROR(
        device->copy_to_host(dp_part16.data(), dp_dev_part16, grads * sizeof(uint16_t), dp_stream));
    STRATA_RETURN_IF_ERROR(device->synchronize_stream(dp_stream));
    dp_d2h_bytes += grads * sizeof(uint16_t);
    if (dp_wire == DType::kFloat16) {
      convert_fp16_to_fp32(dp_part16.data(), dp_part.data(), grads);
    } else {
      convert_bf16_to_fp32(dp_part16.data(), dp_part.data(), grads);
    }
  }
  const float* summed = static_cast<const float*>(dp_dev_part) + grads;
  std::copy(summed, summed + kDpFlags, dp_part.data() + grads);
  return absl::OkStatus();
}

void OffloadOptimizer::Impl::drop_prefetched() {
  if (prefetched_bucket < 0) return;
  // A prefetch's own work is done (gather_full_params waited for it); a
  // bucket kept for its next use may still be read by the framework's.
  device->synchronize_stream(stream).IgnoreError();
  give_back_slot(&prefetched);
  prefetched_bucket = -1;
}

int OffloadOptimizer::Impl::next_on_trace() const {
  if (!in_step || !gather_on_trace || gather_pos >= gather_trace.size()) return -1;
  return gather_trace[gather_pos];
}

// Every rank's slices of the bucket's params into `packed` (device memory,
// rank-major): on the device where the communicator can use its memory
// (each slice H2D through the store; dp_comm_on_device), else on the host
// (Gloo beside a real device: host memory stays 1/N, the whole bucket goes
// H2D).
absl::Status OffloadOptimizer::Impl::pack_and_gather_slices(int bucket, const BucketLayout& l,
                                                            uint8_t* packed) {
  const std::vector<ParamHandle>& ps = buckets[bucket];
  const uint64_t esize = dtype_size(dtype);
  const DType wire = dtype == DType::kFloat32 ? DType::kFloat32 : DType::kFloat16;
  const std::string across = absl::StrCat("across ", world, " ranks");
  const gpu::StreamId stream = gather_stream;  // not the framework's (gather_full_params)
  if (!dp_comm_on_device()) {
    dp_bytes.resize(l.total * esize);
    for (size_t i = 0; i < ps.size(); ++i) {
      const ParamRec& p = params[ps[i]];
      Pin pin(store.get(), p.param, Tier::kHost);
      STRATA_ASSIGN_OR_RETURN(TensorView v, pin.acquire(Access::kRead), p.desc.name);
      std::memcpy(dp_bytes.data() + l.pos[i * world + rank] * esize, v.data, p.slice.numel * esize);
      STRATA_RETURN_IF_ERROR(pin.release(false));
    }
    {
      const DpCommTurn turn(this);
      STRATA_RETURN_IF_ERROR(
          comm->all_gather(dp_bytes.data() + l.pos[rank] * esize, dp_bytes.data(), l.counts, wire),
          across);
    }
    STRATA_RETURN_IF_ERROR(
        device->copy_to_device(packed, dp_bytes.data(), l.total * esize, stream));
    dp_h2d_bytes += l.total * esize;
    return absl::OkStatus();
  }
  std::vector<Pin> pins;
  pins.reserve(ps.size());
  for (size_t i = 0; i < ps.size(); ++i) {
    const ParamRec& p = params[ps[i]];
    pins.emplace_back(store.get(), p.param, Tier::kDevice);
    STRATA_ASSIGN_OR_RETURN(TensorView v, pins.back().acquire(Access::kRead), p.desc.name);
    if (p.slice.numel == 0) continue;
    STRATA_RETURN_IF_ERROR(device->copy_on_device(packed + l.pos[i * world + rank] * esize, v.data,
                                                  p.slice.numel * esize, stream));
  }
  STRATA_RETURN_IF_ERROR(device->synchronize_stream(stream));
  for (Pin& pin : pins) STRATA_RETURN_IF_ERROR(pin.release(false));
  const DpCommTurn turn(this);
  return annotate(comm->all_gather(packed + l.pos[rank] * esize, packed, l.counts, wire), across);
}

// The bucket's whole params on the device: each slice (through the store:
// H2D of the slice only) into its place in the rank-major layout, the
// all_gather on the device's memory, then each param made contiguous.
absl::Status OffloadOptimizer::Impl::gather_full_params(int bucket,
                                                        std::vector<void*>* whole_params) {
  const std::vector<ParamHandle>& ps = buckets[bucket];
  const BucketLayout l = bucket_layout(bucket, 0);
  const uint64_t esize = dtype_size(dtype);
  const gpu::StreamId stream = gather_stream;
  if (ps.empty()) return absl::OkStatus();
  if (gather_packed == nullptr) {
    STRATA_ASSIGN_OR_RETURN(gather_packed, device->allocate(gather_packed_bytes));
  }
  auto* packed = static_cast<uint8_t*>(gather_packed);
  STRATA_ASSIGN_OR_RETURN(void* slot, take_gather_slot());
  std::vector<void*>& out = *whole_params;
  absl::Status st = [&]() -> absl::Status {
    STRATA_RETURN_IF_ERROR(pack_and_gather_slices(bucket, l, packed));
    uint64_t at = 0;
    for (size_t i = 0; i < ps.size(); ++i) {
      const ParamRec& p = params[ps[i]];
      void* whole = static_cast<uint8_t*>(slot) + at;
      at += offload::DevicePool::block_bytes(p.desc.numel * esize);
      out.push_back(whole);
      for (int q = 0; q < world; ++q) {
        const ParamSlice sl = partition_slice(p.desc.numel, q, world);
        if (sl.numel == 0) continue;
        STRATA_RETURN_IF_ERROR(device->copy_on_device(
            static_cast<uint8_t*>(whole) + sl.offset * esize, packed + l.pos[i * world + q] * esize,
            sl.numel * esize, stream));
      }
    }
    return device->synchronize_stream(stream);
  }();
  if (!st.ok()) {
    out.clear();
    gather_slots_free.push_back(slot);
  }
  return st;
}

absl::StatusOr<void*> OffloadOptimizer::Impl::take_gather_slot() {
  if (!gather_slots_free.empty()) {
    void* slot = gather_slots_free.back();
    gather_slots_free.pop_back();
    return slot;
  }
  STRATA_ASSIGN_OR_RETURN(void* slot, device->allocate(gather_slot_bytes),
                          "device memory for a bucket's gathered params");
  gather_slots_all.push_back(slot);
  return slot;
}

void OffloadOptimizer::Impl::give_back_slot(std::vector<void*>* whole_params) {
  if (!whole_params->empty()) gather_slots_free.push_back(whole_params->front());
  whole_params->clear();
}

// The rank's updated slices (step_bucket wrote them into dp_param_part)
// H2D into their place of the packed layout, every rank's gathered on the
// device, and each param's device copy rewritten from them: 1/N of the
// params crosses PCIe, as with DeepSpeed's ZeRO-Offload on NCCL. The
// device copy is normally the param's home; homed on the host (a device
// budget too small for every layer), it is left dirty and not copied back,
// and the host copy keeps stale slices of the other ranks until the store
// writes the device copy back (evicted, or read on the host: read_param, a
// checkpoint).
absl::Status OffloadOptimizer::Impl::gather_bucket_on_device(int bucket) {
  const std::vector<ParamHandle>& ps = buckets[bucket];
  const BucketLayout l = bucket_layout(bucket, 0);
  const uint64_t esize = dtype_size(dtype);
  const DType wire = dtype == DType::kFloat32 ? DType::kFloat32 : DType::kFloat16;
  auto* packed = static_cast<uint8_t*>(dp_dev_gather);
  const uint64_t part_bytes = l.counts[rank] * esize;
  if (part_bytes > 0) {
    STRATA_RETURN_IF_ERROR(device->copy_to_device(packed + l.pos[rank] * esize,
                                                  dp_param_part.data(), part_bytes, stream),
                           "copying the updated slices of the params to the device");
    dp_h2d_bytes += part_bytes;
  }
  // The collective reads the device's memory on the host: the copy (and
  // the previous bucket's unpacking) are done first.
  STRATA_RETURN_IF_ERROR(device->synchronize_stream(stream));
  STRATA_RETURN_IF_ERROR(
      comm->all_gather(packed + l.pos[rank] * esize, packed, l.counts, wire),
      absl::StrCat("gathering the params of bucket ", bucket, " across ", world, " ranks"));
  // Every element is written below: the copies need no load (kWrite).
  offload::StreamPins pins(store.get(), Tier::kDevice, stream);
  for (size_t i = 0; i < ps.size(); ++i) {
    const ParamRec& p = params[ps[i]];
    STRATA_ASSIGN_OR_RETURN(TensorView v, pins.acquire(p.param, Access::kWrite), p.desc.name);
    for (int q = 0; q < world; ++q) {
      const ParamSlice sl = partition_slice(p.desc.numel, q, world);
      if (sl.numel == 0) continue;
      STRATA_RETURN_IF_ERROR(
          device->copy_on_device(static_cast<uint8_t*>(v.data) + sl.offset * esize,
                                 packed + l.pos[i * world + q] * esize, sl.numel * esize, stream),
          p.desc.name);
    }
  }
  // The next forward reads them after this work (the store keeps its event).
  return pins.release(/*dirty=*/true, /*copy_back=*/false);
}

absl::Status OffloadOptimizer::Impl::gather_bucket(int bucket) {
  const std::vector<ParamHandle>& ps = buckets[bucket];
  if (ps.empty()) return absl::OkStatus();
  if (std::all_of(ps.begin(), ps.end(), [&](ParamHandle h) { return params[h].param_sliced; })) {
    return absl::OkStatus();  // ZeRO-3: gathered on the device before use
  }
  if (dp_gather_device[bucket]) return gather_bucket_on_device(bucket);
  const BucketLayout l = bucket_layout(bucket, 0);
  const uint64_t esize = dtype_size(dtype);
  // Gathering copies bits: a 16-bit dtype travels as fp16 whatever it is.
  const DType wire = dtype == DType::kFloat32 ? DType::kFloat32 : DType::kFloat16;
  std::vector<Pin> pins;
  std::vector<uint8_t*> views;
  pins.reserve(ps.size());
  for (ParamHandle h : ps) {
    pins.emplace_back(store.get(), params[h].param, opt_tier);
    STRATA_ASSIGN_OR_RETURN(TensorView v, pins.back().acquire(Access::kReadWrite));
    views.push_back(static_cast<uint8_t*>(v.data));
  }
  // This rank's part (its updated slices), then every rank's.
  dp_bytes.resize(l.total * esize);
  uint8_t* part = dp_bytes.data() + l.pos[rank] * esize;
  for (size_t i = 0; i < ps.size(); ++i) {
    const ParamRec& p = params[ps[i]];
    std::memcpy(dp_bytes.data() + l.pos[i * world + rank] * esize,
                views[i] + (p.slice.offset - p.param_lo()) * esize, p.slice.numel * esize);
  }
  STRATA_RETURN_IF_ERROR(
      comm->all_gather(part, dp_bytes.data(), l.counts, wire),
      absl::StrCat("gathering the params of bucket ", bucket, " across ", world, " ranks"));
  for (size_t i = 0; i < ps.size(); ++i) {
    if (params[ps[i]].param_sliced) continue;  // gathered on the device before use instead
    for (int q = 0; q < world; ++q) {
      const ParamSlice sl = partition_slice(params[ps[i]].desc.numel, q, world);
      std::memcpy(views[i] + sl.offset * esize, dp_bytes.data() + l.pos[i * world + q] * esize,
                  sl.numel * esize);
    }
  }
  // Dirty: the device copies (if any) are stale; the next forward loads these.
  for (Pin& pin : pins) STRATA_RETURN_IF_ERROR(pin.release(true));
  return absl::OkStatus();
}

// The decided step: skipped (speculative steps undone) or applied (kept,
// redone with the clip coefficient, stepped now, or queued as the delayed
// update); the Adam step and the schedule count an applied step.
absl::Status OffloadOptimizer::Impl::apply_step(bool apply, OptimizerStepResult* out) {
  OptimizerStepResult& r = *out;
  r.skipped = !apply;
  if (apply && config.gradient_clipping > 0) {
    r.clip_coef = std::max(1.0, (r.grad_norm + 1e-6) / config.gradient_clipping);
  }
  const int64_t next_adam_step = adam_step + (apply ? 1 : 0);
  StepArgs args = spec_args;
  args.step = next_adam_step;
  args.grad_scale = 1.0 / (r.loss_scale * r.clip_coef * grad_divisor());
  const int num_buckets = static_cast<int>(buckets.size());
  if (apply && dpu) {
    // Delayed: the worker steps every bucket while the next step's forward
    // and backward run on the params of the step before.
    std::fill(next_done.begin(), next_done.end(), 0);
    for (int b = 0; b < num_buckets; ++b) {
      worker->submit([this, b, args, step = r.step] {
        return annotate(step_bucket(b, args, StepTarget::kParamNext),
                        absl::StrCat("the delayed update of step ", step));
      });
    }
    update_pending = true;
  } else {
    for (int b = 0; b < num_buckets; ++b) {
      // A bucket with no gradient this step is not stepped (torch skips a
      // param without a grad).
      const Speculation::Plan plan = spec != nullptr ? spec->plan(b, apply, r.clip_coef != 1.0)
                                     : apply         ? Speculation::Plan::kStep
                                                     : Speculation::Plan::kNothing;
      if (plan == Speculation::Plan::kRestore || plan == Speculation::Plan::kRestoreAndStep) {
        STRATA_RETURN_IF_ERROR(restore_bucket(b), absl::StrCat("step ", r.step, ": rollback"));
        ++r.rolled_back_buckets;
      }
      if ((plan == Speculation::Plan::kStep || plan == Speculation::Plan::kRestoreAndStep) &&
          calls[b] > 0) {
        if (options.before_decided_step) {
          STRATA_RETURN_IF_ERROR(options.before_decided_step(b), absl::StrCat("step ", r.step));
        }
        STRATA_RETURN_IF_ERROR(step_bucket(b, args, StepTarget::kParam),
                               absl::StrCat("step ", r.step));
        if (partitioned()) {
          STRATA_RETURN_IF_ERROR(gather_bucket(b), absl::StrCat("step ", r.step));
        }
      }
    }
    if (apply) {
      for (int b = 0; b < num_buckets; ++b) {
        if (calls[b] > 0) STRATA_RETURN_IF_ERROR(publish_bucket(b), absl::StrCat("step ", r.step));
      }
    }
  }
  if (apply) {
    adam_step = next_adam_step;
    schedule->advance();
  }
  return absl::OkStatus();
}

absl::Status OffloadOptimizer::Impl::run_finish_local(StepGradStats* local) {
  finishing = OptimizerStepResult{};
  OptimizerStepResult& r = finishing;
  r.step = steps;
  r.loss_scale = loss_scale;
  r.lr = spec_args.lr.empty() ? 0 : spec_args.lr[0];
  // Also finishes the delayed update of the previous step, which the worker
  // ran while this step's forward and backward did.
  STRATA_RETURN_IF_ERROR(drain_worker(), absl::StrCat("step ", r.step));
  if (dp()) {
    // The last micro-batch's gradients, reduced into the slices; buckets
    // with a gradient on any rank count as reported here.
    STRATA_RETURN_IF_ERROR(dp_close_round(/*open_next=*/false), absl::StrCat("step ", r.step));
    STRATA_RETURN_IF_ERROR(dp_agree(/*aborting=*/false), absl::StrCat("step ", r.step));
    calls = reductions;
    std::copy(reductions.begin(), reductions.end(), stats_calls.begin());
    for (int b = 0; b < static_cast<int>(buckets.size()) && !overflow.load(); ++b) {
      if (reductions[b] == 0) continue;
      const AddElapsed timed(&grad_ns);
      STRATA_RETURN_IF_ERROR(stats_bucket(b, reductions[b]), absl::StrCat("step ", r.step));
    }
  }
  if (!backward_reported) {
    last_backward_seconds = std::chrono::duration<double>(last_grad - step_start).count();
  }
  const int num_buckets = static_cast<int>(buckets.size());
  // Buckets reported fewer times than gradient_accumulation_steps: their
  // statistics now.
  for (int b = 0; b < num_buckets && !overflow.load(); ++b) {
    if (calls[b] > 0 && stats_calls[b] != calls[b]) {
      const AddElapsed timed(&grad_ns);
      STRATA_RETURN_IF_ERROR(stats_bucket(b, calls[b]), absl::StrCat("step ", r.step));
      if (grad_stats[b].nonfinite) overflow.store(true);
    }
  }
  // The norm is summed in bucket order in every mode, so they agree bit for bit.
  bool nonfinite = overflow.load();
  double sum_sq = 0;
  for (int b = 0; b < num_buckets && !nonfinite; ++b) {
    sum_sq += grad_stats[b].sum_squares;
    nonfinite = grad_stats[b].nonfinite;
  }
  *local = StepGradStats{.sum_squares = nonfinite ? 0.0 : sum_sq, .nonfinite = nonfinite};
  return absl::OkStatus();
}

absl::Status OffloadOptimizer::Impl::run_finish_global(StepGradStats global) {
  OptimizerStepResult& r = finishing;
  const bool nonfinite = global.nonfinite || !std::isfinite(global.sum_squares);
  const double sum_sq = nonfinite ? 0.0 : global.sum_squares;
  if (nonfinite) overflow.store(true);
  r.overflow = nonfinite;
  // Across ranks grad32 holds the sum over ranks: the mean is 1/world of it
  // (and 1/grad_divisor: the engine's micro-batches summed, not averaged).
  r.grad_norm = nonfinite ? std::numeric_limits<double>::infinity()
                          : std::sqrt(sum_sq) / (r.loss_scale * grad_divisor());
  r.speculative_buckets = spec != nullptr ? spec->stepped_layers() + early_rollbacks.load() : 0;
  r.rolled_back_buckets = early_rollbacks.load();

  bool apply = true;
  if (scaler != nullptr) {
    STRATA_ASSIGN_OR_RETURN(apply, scaler->update(nonfinite), absl::StrCat("step ", r.step));
  } else if (nonfinite && external_scale.has_value()) {
    apply = false;  // the framework's scaler (GradScaler) sees overflow and lowers its scale
  } else if (nonfinite) {
    return absl::FailedPreconditionError(absl::StrCat(
        "step ", r.step, ": the gradients hold inf or NaN and ", std::string(dtype_name(dtype)),
        " training has no loss scaler to skip the step; lower the learning rate, set "
        "gradient_clipping, or check the model's inputs"));
  }
  // Errors of the store's background write-backs surface before the step
  // changes anything.
  STRATA_RETURN_IF_ERROR(store->background_error(), absl::StrCat("step ", r.step));
  // The previous step's delayed update goes in before this step's is queued
  // (it writes param_next again).
  STRATA_RETURN_IF_ERROR(swap_in_update(), absl::StrCat("step ", r.step));
  STRATA_RETURN_IF_ERROR(apply_step(apply, &r));

  // Totals since the last step's end: a delayed update run during this step
  // counts here.
  const int64_t g_ns = grad_ns.load(), o_ns = optimizer_ns.load();
  r.grad_seconds = (g_ns - grad_ns_reported) * 1e-9;
  last_host_seconds = (g_ns - grad_ns_reported + o_ns - optimizer_ns_reported) * 1e-9;
  r.optimizer_seconds = (o_ns - optimizer_ns_reported) * 1e-9;
  grad_ns_reported = g_ns;
  optimizer_ns_reported = o_ns;
  const uint64_t o_bytes = optimizer_bytes.load();
  r.optimizer_bytes = o_bytes - optimizer_bytes_reported;
  optimizer_bytes_reported = o_bytes;
  const offload::StoreStats after = store->stats();
  for (int t = 0; t < offload::kTierCount; ++t) {
    r.bytes_in[t] = after.tiers[t].bytes_in - stats_before.tiers[t].bytes_in;
    r.bytes_out[t] = after.tiers[t].bytes_out - stats_before.tiers[t].bytes_out;
  }
  if (params_sliced) {
    drop_prefetched();  // none at the trace's end; one if the step cut it short
    gather_trace = std::move(gather_recording);
    gather_recording.clear();
  }
  // The reduction's own PCIe copies (device tier: in is H2D, out is D2H).
  const uint64_t d2h = dp_d2h_bytes.load(), h2d = dp_h2d_bytes.load();
  r.bytes_out[0] += d2h - dp_d2h_reported;
  r.bytes_in[0] += h2d - dp_h2d_reported;
  dp_d2h_reported = d2h;
  dp_h2d_reported = h2d;
  store->end_step();
  micro_batches += gas;
  in_step = false;
  return absl::OkStatus();
}

absl::StatusOr<StepGradStats> OffloadOptimizer::finish_step_local() {
  Impl& m = *impl_;
  if (!m.in_step || m.finish_half) {
    return absl::FailedPreconditionError(
        m.in_step ? "finish_step_local called twice in one step; call finish_step_global"
                  : "finish_step outside a step; call begin_step first");
  }
  StepGradStats local;
  absl::Status status = m.run_finish_local(&local);
  if (!status.ok()) return m.undo_step(std::move(status));
  m.finish_half = true;
  return local;
}

absl::StatusOr<OptimizerStepResult> OffloadOptimizer::finish_step_global(StepGradStats global) {
  Impl& m = *impl_;
  if (!m.in_step || !m.finish_half) {
    return absl::FailedPreconditionError(
        "finish_step_global without finish_step_local in this step; call finish_step_local first");
  }
  m.finish_half = false;
  absl::Status status = m.run_finish_global(global);
  if (status.ok()) return m.finishing;
  return m.undo_step(std::move(status));
}

absl::StatusOr<OptimizerStepResult> OffloadOptimizer::finish_step() {
  Impl& m = *impl_;
  STRATA_ASSIGN_OR_RETURN(StepGradStats stats, finish_step_local());
  if (m.partitioned()) {
    // Every rank's slices: one sum, so every rank decides alike (unsplit,
    // every rank holds the same whole sums already).
    double global[2] = {stats.sum_squares, stats.nonfinite ? 1.0 : 0.0};
    if (absl::Status s = m.comm->all_reduce_host(global, dist::ReduceOp::kSum); !s.ok()) {
      return m.undo_step(
          annotate(s, absl::StrCat("step ", m.finishing.step, ": the global gradient norm")));
    }
    stats = StepGradStats{.sum_squares = global[0], .nonfinite = global[1] != 0};
  }
  return finish_step_global(stats);
}

absl::Status OffloadOptimizer::abort_step(absl::Status why) {
  if (!impl_->in_step) return why;
  return impl_->undo_step(std::move(why));
}

std::optional<gpu::EventId> OffloadOptimizer::params_ready(int bucket) const {
  const Impl& m = *impl_;
  if (bucket < 0 || bucket >= static_cast<int>(m.buckets.size()) || !m.bucket_has_device[bucket]) {
    return std::nullopt;
  }
  return m.bucket_events[bucket];
}

}  // namespace strata::engine
