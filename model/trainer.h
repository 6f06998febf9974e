// Trainer: the training loop of `strata train`, for any program that links
// strata and drives a TrainingEngine (the model, device and engine are the
// caller's; the Trainer decides when to step, evaluate, save and stop).
//
// A run, from engine.steps() (0, or the step a resume() restored) up to
// options.steps in total:
//   evaluate (options.eval_batches batches) before the first step;
//   per step: train_step(), sink->on_step(), an evaluation every eval_every
//   steps and after the last step, one JSON line in options.log_json (the
//   step's stats, the host optimizer's GB/s and its ratio to the Adam-like
//   stream measured once at create, val_loss when it evaluated), a save
//   every save_every steps;
//   at the end and after a stop request: a save of the last step into
//   save_dir unless it was just saved; in every case the background save
//   (async_save) is waited for. A failure saves nothing more. A stop request lets the step in
//   flight finish (no evaluation follows it) and ends the run; it may come from any thread or a
//   signal handler (request_stop is async-signal-safe; see model/stop_signals.h for
//   SIGINT/SIGTERM).
//
// Data parallel (options.comm, world size N > 1): every rank runs its own
// Trainer over its own engine, in lockstep. After each step one
// all_reduce_host averages the loss over the ranks: the loss every rank
// reports, logs and returns is the mean (the loss of the whole global
// batch, as one rank with N times the micro batch sees it); after the
// sink's on_step another agrees on stopping: a stop requested on any rank
// stops every rank after the same step (a rank must never leave a
// collective the others are in). One more agrees on a stop before the
// first evaluation, and each validation loss is the mean over ranks. A failed reduction fails the
// run with the communicator's error (which names the rank that went away). Every rank saves (its
// checkpoint shard); printing and logging are the caller's choice per rank (a sink and log_json
// only on rank 0).
//
// Threading: create, resume and run on one thread; the sink is called on
// that thread; request_stop from anywhere. Ownership: the engine, the sink
// and options.trace are borrowed and must outlive the Trainer; the Trainer
// owns the log file (opened, truncated, by create).
// Errors: create refuses options that cannot run (InvalidArgument naming the
// option) and destinations that cannot be written (FailedPrecondition naming
// the path), before any step. run() does not fail as a whole: its result
// carries the first error (a step, an evaluation or a save, annotated with
// the step) with the counts of the steps before it, so a caller can still
// print a summary. Messages name options as `strata train`'s flags
// (--save-dir, --log-json, --steps, ...).
//
//   STRATA_ASSIGN_OR_RETURN(auto trainer, model::Trainer::create(engine, options, &sink));
//   if (!resume_dir.empty()) STRATA_RETURN_IF_ERROR(trainer->resume(resume_dir));
//   model::TrainerResult r = trainer->run();
//   STRATA_RETURN_IF_ERROR(r.status);
#pragma once

#include <atomic>
#include <cstdint>
#include <fstream>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/config/ds_config.h"
#include "core/trace.h"
#include "dist/communicator.h"
#include "engine/training_engine.h"

namespace strata::model {

struct TrainerOptions {
  int64_t steps = 100;             // the total: a resumed run continues up to it; >= 1
  int64_t eval_every = 50;         // >= 1; also before the first and after the last step
  int64_t eval_batches = 8;        // validation batches per evaluation; >= 1
  std::string save_dir;            // empty: nothing is saved
  int64_t save_every = 0;          // 0: only at the end (and on a stop); needs save_dir
  bool async_save = false;         // periodic saves written in the background
  std::string log_json;            // one JSON object per step; empty: no log
  int64_t tokens_per_step = 0;     // for tokens per second; 0: not reported
  TraceRecorder* trace = nullptr;  // train_step / evaluate / save events; may be null
  // With log_json: the Adam-like stream (core/memory_bandwidth.h,
  // measure_adam_stream over this many elements, 28 B each (448 MiB,
  // freed before the first step, the peak RSS mark reset after it), best
  // of 3) is
  // measured once by create, and every log line gives the host optimizer's
  // GB/s against it (optimizer_stream_ratio). 0: not measured.
  size_t stream_elements = size_t{16} << 20;
  // Data parallel: this rank's communicator (see "Data parallel" above);
  // borrowed, used on run()'s thread between steps. null: one rank.
  dist::Communicator* comm = nullptr;
};

// What the sink sees after each step, before that step's evaluation.
struct TrainerStep {
  engine::StepStats stats;
  double tokens_per_second = 0;
  double eta_seconds = 0;  // at the mean step time of this run so far
  int64_t skipped = 0;     // skipped (fp16 overflow) steps in this run so far
};

// Progress reports; every method has an empty default.
class TrainerSink {
 public:
  virtual ~TrainerSink() = default;
  virtual void on_step(const TrainerStep& step) {}
  virtual void on_evaluation(int64_t step, double val_loss, int64_t batches, double seconds) {}
  // A checkpoint of `step` saved into `dir`, or (background) being written.
  virtual void on_save(int64_t step, const std::string& dir, bool background, double seconds) {}
};

struct TrainerResult {
  absl::Status status;     // the first failure; OK otherwise
  bool stopped = false;    // a stop request ended the run (possibly at its last step)
  int64_t start_step = 0;  // engine.steps() when run() began
  int64_t last_step = 0;   // engine.steps() when it ended
  int64_t steps_run = 0;
  int64_t skipped = 0;           // fp16 overflow
  int64_t saved_step = -1;       // the last step saved into save_dir; -1 none
  double wall_seconds = 0;       // the whole run, evaluations and saves included
  double train_seconds = 0;      // train_step() time only
  double tokens_per_second = 0;  // over train_seconds
  std::optional<double> first_loss, last_loss, first_val_loss, last_val_loss;
  std::vector<std::pair<int64_t, double>> train_losses;  // (step, loss), e.g. to plot
  std::vector<std::pair<int64_t, double>> val_losses;    // (step, validation loss)
};

class Trainer {
 public:
  // Checks `options` (check_trainer_options) and opens the log.
  static absl::StatusOr<std::unique_ptr<Trainer>> create(engine::TrainingEngine* engine,
                                                         TrainerOptions options,
                                                         TrainerSink* sink = nullptr);
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  // Loads the checkpoint in `dir` into the engine (TrainingEngine::
  // load_checkpoint: same model and config); run() then continues from its
  // step, bit for bit as the saved run did.
  absl::Status resume(const std::string& dir);

  TrainerResult run();

  // Ends run() after the step in flight; before run(), it runs no step.
  // Async-signal-safe.
  void request_stop() { stop_.store(true, std::memory_order_relaxed); }
  bool stop_requested() const { return stop_.load(std::memory_order_relaxed); }

 private:
  Trainer(engine::TrainingEngine* engine, TrainerOptions options, TrainerSink* sink)
      : engine_(engine), options_(std::move(options)), sink_(sink) {}
  absl::Status evaluate(int64_t step, TrainerResult* r);
  // Sums `values` over the ranks (a no-op without options.comm).
  absl::Status sum_over_ranks(std::span<double> values);
  // Whether any rank asked to stop (this one alone without options.comm).
  absl::StatusOr<bool> agreed_stop();
  absl::Status save(int64_t step, bool last, TrainerResult* r);
  void log_step(const TrainerStep& step, std::optional<double> val_loss);

  engine::TrainingEngine* engine_;
  TrainerOptions options_;
  TrainerSink* sink_;
  double stream_gb_per_s_ = 0;  // the Adam-like stream; 0: not measured
  std::ofstream log_;
  std::atomic<bool> stop_{false};
  static_assert(std::atomic<bool>::is_always_lock_free, "request_stop runs in signal handlers");
};

// The checks Trainer::create makes, for a caller that wants them before it
// builds the model and engine: ranges, save_every without save_dir, and
// that save_dir and log_json can be written (check_output_destination).
absl::Status check_trainer_options(const TrainerOptions& options);

// DeepSpeed users whose train.py builds the optimizer have a ds_config with
// no "optimizer" section (the fixture ds_config_gpt2_rtx5090.json). When
// `config` has none, it gets AdamW with `lr` and `weight_decay` (applied to
// every parameter), betas (0.9, 0.999), eps 1e-8, and the function returns
// true; a config with an optimizer is left as it is (false).
bool fill_missing_optimizer(config::DsConfig* config, double lr, double weight_decay);

// The defaults `strata train` gives fill_missing_optimizer: GPT-2 small's
// recipe (GPT-3 paper, nanoGPT's train.py), the usual script such a config
// comes from.
inline constexpr double kDefaultLearningRate = 6e-4;
inline constexpr double kDefaultWeightDecay = 0.1;

}  // namespace strata::model
