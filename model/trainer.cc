#include "model/trainer.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "core/file_util.h"
#include "core/memory_bandwidth.h"
#include "core/status.h"
#include "engine/checkpoint_dir.h"
#include "engine/train_memory.h"
#include "nlohmann/json.hpp"
#include "offload/tiered_store.h"

namespace strata::model {
namespace {

using nlohmann::json;

json tier_bytes(const std::array<uint64_t, offload::kTierCount>& b) {
  json j = json::object();
  for (int t = 0; t < offload::kTierCount; ++t) {
    j[offload::tier_name(static_cast<offload::Tier>(t))] = b[t];
  }
  return j;
}

absl::Status check_range(int64_t value, int64_t min, const char* name) {
  if (value >= min) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(name, " ", value, " is out of range; use ", min, " or more"));
}

}  // namespace

absl::Status check_trainer_options(const TrainerOptions& o) {
  STRATA_RETURN_IF_ERROR(check_range(o.steps, 1, "--steps"));
  STRATA_RETURN_IF_ERROR(check_range(o.eval_every, 1, "--eval-every"));
  STRATA_RETURN_IF_ERROR(check_range(o.eval_batches, 1, "--eval-batches"));
  STRATA_RETURN_IF_ERROR(check_range(o.save_every, 0, "--save-every"));
  STRATA_RETURN_IF_ERROR(check_range(o.tokens_per_step, 0, "tokens_per_step"));
  if (o.save_every > 0 && o.save_dir.empty()) {
    return absl::InvalidArgumentError(
        "--save-every needs --save-dir DIR (where the checkpoint is written)");
  }
  if (!o.save_dir.empty()) {
    // A save writes DIR.tmp-<pid> beside DIR and renames it over DIR, so the
    // folder above DIR must be writable, and DIR, if there, a folder.
    STRATA_RETURN_IF_ERROR(check_output_destination(o.save_dir, "--save-dir", true));
    // Never the user's data: DIR (and DIR.old, DIR.tmp-*) must be missing or
    // a checkpoint strata wrote.
    STRATA_RETURN_IF_ERROR(engine::check_checkpoint_destination(o.save_dir), "--save-dir");
  }
  if (!o.log_json.empty()) {
    STRATA_RETURN_IF_ERROR(check_output_destination(o.log_json, "--log-json", false));
  }
  return absl::OkStatus();
}

bool fill_missing_optimizer(config::DsConfig* config, double lr, double weight_decay) {
  if (config->optimizer.type != config::OptimizerType::kNone) return false;
  config->optimizer = config::OptimizerConfig{};
  config->optimizer.type = config::OptimizerType::kAdamW;
  config->optimizer.lr = lr;
  config->optimizer.weight_decay = weight_decay;
  config->optimizer.betas = {0.9, 0.999};
  config->optimizer.eps = 1e-8;
  return true;
}

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::create(engine::TrainingEngine* engine,
                                                         TrainerOptions options,
                                                         TrainerSink* sink) {
  STRATA_RETURN_IF_ERROR(check_trainer_options(options));
  std::unique_ptr<Trainer> t(new Trainer(engine, std::move(options), sink));
  if (!t->options_.log_json.empty()) {
    t->log_.open(t->options_.log_json, std::ios::trunc);
    if (!t->log_) {
      return absl::FailedPreconditionError(
          absl::StrCat("--log-json ", t->options_.log_json, ": cannot open for writing (",
                       std::strerror(errno), "); check the folder exists and is writable"));
    }
    if (t->options_.stream_elements > 0) {
      STRATA_ASSIGN_OR_RETURN(
          BandwidthResult stream,
          measure_adam_stream({.elements = t->options_.stream_elements, .repeats = 3}),
          "measuring the Adam-like memory stream for --log-json");
      t->stream_gb_per_s_ = stream.gb_per_s;
      // Its arrays are freed: the run's peak RSS is the training's.
      engine::reset_peak_rss();
    }
  }
  return t;
}

absl::Status Trainer::resume(const std::string& dir) { return engine_->load_checkpoint(dir); }

absl::Status Trainer::evaluate(int64_t step, TrainerResult* r) {
  TraceScope scope(options_.trace, "evaluate", "train");
  scope.arg("step", step);
  const int64_t t0 = monotonic_ns();
  STRATA_ASSIGN_OR_RETURN(double v, engine_->evaluate(options_.eval_batches),
                          absl::StrCat("evaluating after step ", step));
  STRATA_RETURN_IF_ERROR(sum_over_ranks(std::span<double>(&v, 1)),
                         absl::StrCat("averaging the validation loss after step ", step));
  if (options_.comm != nullptr) v /= options_.comm->world_size();
  if (!r->first_val_loss) r->first_val_loss = v;
  r->last_val_loss = v;
  r->val_losses.emplace_back(step, v);
  if (sink_ != nullptr) {
    sink_->on_evaluation(step, v, options_.eval_batches, (monotonic_ns() - t0) * 1e-9);
  }
  return absl::OkStatus();
}

absl::Status Trainer::save(int64_t step, bool last, TrainerResult* r) {
  TraceScope scope(options_.trace, "save_checkpoint", "train");
  const int64_t t0 = monotonic_ns();
  const bool background = options_.async_save && !last;
  STRATA_RETURN_IF_ERROR(background ? engine_->save_checkpoint_async(options_.save_dir)
                                    : engine_->save_checkpoint(options_.save_dir),
                         absl::StrCat("--save-dir: saving after step ", step));
  r->saved_step = step;
  if (sink_ != nullptr) {
    sink_->on_save(step, options_.save_dir, background, (monotonic_ns() - t0) * 1e-9);
  }
  return absl::OkStatus();
}

void Trainer::log_step(const TrainerStep& s, std::optional<double> val_loss) {
  if (!log_.is_open()) return;
  const engine::StepStats& st = s.stats;
  json j = {{"step", st.step},
            {"loss", st.loss},
            {"lr", st.lr},
            {"loss_scale", st.loss_scale},
            {"skipped", st.skipped},
            {"grad_norm", std::isfinite(st.grad_norm) ? json(st.grad_norm) : json(nullptr)},
            {"clip_coef", st.clip_coef},
            {"step_seconds", st.step_seconds},
            {"tokens_per_second", s.tokens_per_second},
            {"bytes_in", tier_bytes(st.bytes_in)},
            {"bytes_out", tier_bytes(st.bytes_out)},
            {"host_syncs", st.host_syncs},
            {"device_syncs", st.device_syncs},
            {"grad_seconds", st.grad_seconds},
            {"optimizer_seconds", st.optimizer_seconds},
            {"optimizer_bytes", st.optimizer_bytes},
            {"optimizer_gb_per_s", st.optimizer_gb_per_s}};
  if (stream_gb_per_s_ > 0) {
    j["stream_gb_per_s"] = stream_gb_per_s_;
    j["optimizer_stream_ratio"] = st.optimizer_gb_per_s / stream_gb_per_s_;
  }
  if (val_loss) j["val_loss"] = *val_loss;
  // A whole line per step, flushed, so a reader (or a killed run) never
  // sees half an object.
  log_ << j.dump() << '\n' << std::flush;
}

absl::Status Trainer::sum_over_ranks(std::span<double> values) {
  if (options_.comm == nullptr || options_.comm->world_size() == 1) return absl::OkStatus();
  return options_.comm->all_reduce_host(values, dist::ReduceOp::kSum);
}

absl::StatusOr<bool> Trainer::agreed_stop() {
  double stop = stop_requested() ? 1 : 0;
  STRATA_RETURN_IF_ERROR(sum_over_ranks(std::span<double>(&stop, 1)));
  return stop > 0;
}

TrainerResult Trainer::run() {
  TrainerResult r;
  const int64_t t0 = monotonic_ns();
  r.start_step = engine_->steps();
  absl::Status failure;
  // With ranks, stops are decided together (after a step, below); a rank
  // alone stops at once.
  const bool ranks = options_.comm != nullptr && options_.comm->world_size() > 1;
  const double world = ranks ? options_.comm->world_size() : 1;
  absl::StatusOr<bool> stop_first = agreed_stop();
  if (!stop_first.ok()) {
    failure = annotate(stop_first.status(), "agreeing with the other ranks before the first step");
  } else if (*stop_first) {
    r.stopped = true;
  } else {
    failure = evaluate(r.start_step, &r);
  }
  for (int64_t i = r.start_step + 1; failure.ok() && !r.stopped && i <= options_.steps; ++i) {
    if (!ranks && stop_requested()) {
      r.stopped = true;
      break;
    }
    absl::StatusOr<engine::StepStats> st;
    {
      TraceScope scope(options_.trace, "train_step", "train");
      scope.arg("step", i);
      st = engine_->train_step();
    }
    if (!st.ok()) {
      failure = annotate(st.status(), absl::StrCat("training step ", i));
      break;
    }
    if (absl::Status s = sum_over_ranks(std::span<double>(&st->loss, 1)); !s.ok()) {
      failure = annotate(s, absl::StrCat("averaging the loss of training step ", i));
      break;
    }
    st->loss /= world;
    ++r.steps_run;
    r.train_seconds += st->step_seconds;
    if (!r.first_loss) r.first_loss = st->loss;
    r.last_loss = st->loss;
    r.train_losses.emplace_back(st->step, st->loss);
    if (st->skipped) ++r.skipped;
    if (options_.trace != nullptr && options_.trace->enabled()) {
      options_.trace->counter("loss_scale", static_cast<int64_t>(st->loss_scale));
    }
    TrainerStep step{
        .stats = *st,
        .tokens_per_second = st->step_seconds > 0 ? options_.tokens_per_step / st->step_seconds : 0,
        .eta_seconds = r.train_seconds / r.steps_run * (options_.steps - i),
        .skipped = r.skipped};
    if (sink_ != nullptr) sink_->on_step(step);

    // Read once (and agreed once): a request arriving during the evaluation
    // below still finds this step logged and saved as the loop decided.
    const absl::StatusOr<bool> stopping = agreed_stop();
    if (!stopping.ok()) {
      failure = annotate(stopping.status(), absl::StrCat("agreeing to go on after step ", i));
      break;
    }
    const bool stop = *stopping;
    std::optional<double> val;
    if (!stop && (i % options_.eval_every == 0 || i == options_.steps)) {
      failure = evaluate(i, &r);
      if (failure.ok()) val = r.last_val_loss;
    }
    log_step(step, val);
    if (failure.ok() && options_.save_every > 0 && i % options_.save_every == 0) {
      failure = save(i, /*last=*/false, &r);
    }
    if (stop) {
      r.stopped = true;
      break;
    }
  }
  r.last_step = engine_->steps();
  if (failure.ok() && !options_.save_dir.empty() && r.saved_step != r.last_step) {
    failure = save(r.last_step, /*last=*/true, &r);
  }
  if (absl::Status w = engine_->wait_for_checkpoint(); failure.ok() && !w.ok()) {
    failure = annotate(w, "--save-dir: the background save");
  }
  r.status = failure;
  r.wall_seconds = (monotonic_ns() - t0) * 1e-9;
  r.tokens_per_second =
      r.train_seconds > 0 ? r.steps_run * options_.tokens_per_step / r.train_seconds : 0;
  return r;
}

}  // namespace strata::model
