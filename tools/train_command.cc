// strata train --model NAME --data PATH --deepspeed_config F [--steps N]
//              [--device cpu|cuda] [--seq-len T] [--gpu-mem SIZE]
//              [--eval-every N] [--eval-batches K] [--log-json FILE]
//              [--trace FILE] [--seed S] [--vocab vocab.json --merges merges.txt]
//              [--plot FILE.png]
// Trains a GPT-2 family model on text (bytes, or GPT-2 BPE tokens with
// --vocab/--merges) with the ZeRO-Offload
// engine (engine/training_engine.h) on a simulated device (SimDevice: the
// CPU kernels on host memory under a GPU-like capacity), the optimizer
// offloaded as the ds_config says.
//
// Everything that can be checked cheaply is checked before any work (model
// name, gnuplot for --plot, ds_config, device, sequence length, tokenizer
// files, corpus), each failure one
// "strata: error:" line and exit 1; a malformed flag value exits 2.
// Output: human text on stderr (a progress line rewritten in place on a
// terminal, plain lines every steps_per_print steps otherwise), one JSON
// object per step in --log-json, the loss curve in --plot at the end (also
// after Ctrl-C). Ctrl-C finishes the current step, prints
// the summary and exits 130.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/config/ds_config.h"
#include "core/dtype.h"
#include "core/status.h"
#include "core/trace.h"
#include "engine/training_engine.h"
#include "gpu/device.h"
#include "gpu/sim_device.h"
#include "model/bpe_tokenizer.h"
#include "model/cpu/matmul.h"
#include "model/gpt2_config.h"
#include "model/gpt2_model.h"
#include "model/gpt2_plan.h"
#include "model/gpt2_weights.h"
#include "model/text_corpus.h"
#include "offload/tiered_store.h"
#include "tools/cli_util.h"
#include "tools/commands.h"
#include "tools/loss_plot.h"

namespace strata::tools {
namespace {

using nlohmann::json;

struct TrainArgs {
  std::string model;
  std::string data;
  std::string config_file;
  int64_t steps = 100;
  std::string device = "cpu";
  int64_t seq_len = 0;  // 0: the model's
  std::string gpu_mem = "8GiB";
  int64_t eval_every = 50;
  int64_t eval_batches = 8;
  std::string log_json;
  std::string trace;
  uint64_t seed = 1337;
  int64_t save_every = 0;
  std::string save_dir;
  std::string resume;
  std::string init;           // --init FILE.safetensors
  std::string vocab, merges;  // GPT-2 BPE files; none: byte tokens
  std::string plot;           // loss-curve PNG
  int sample_tokens = 0;
  double sample_temperature = 0.8;
  bool checkpoint_activations = false;
  bool async_save = false;
};

volatile std::sig_atomic_t g_interrupted = 0;

extern "C" void on_sigint(int) {
  g_interrupted = 1;
  std::signal(SIGINT, SIG_DFL);  // a second Ctrl-C ends the process at once
}

// Installs the handler for the lifetime of a run.
class SigintGuard {
 public:
  SigintGuard() {
    g_interrupted = 0;
    previous_ = std::signal(SIGINT, on_sigint);
  }
  ~SigintGuard() { std::signal(SIGINT, previous_); }
  SigintGuard(const SigintGuard&) = delete;
  SigintGuard& operator=(const SigintGuard&) = delete;

 private:
  void (*previous_)(int) = SIG_DFL;
};

// "8GiB", "512M", "4096": binary units.
absl::StatusOr<uint64_t> parse_size(const std::string& text, const char* flag) {
  size_t i = 0;
  while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.'))
    ++i;
  std::string unit;
  for (size_t j = i; j < text.size(); ++j) {
    if (text[j] != ' ')
      unit += static_cast<char>(std::toupper(static_cast<unsigned char>(text[j])));
  }
  double mult = 0;
  if (unit.empty() || unit == "B") mult = 1;
  if (unit == "K" || unit == "KB" || unit == "KIB") mult = 0x1p10;
  if (unit == "M" || unit == "MB" || unit == "MIB") mult = 0x1p20;
  if (unit == "G" || unit == "GB" || unit == "GIB") mult = 0x1p30;
  if (unit == "T" || unit == "TB" || unit == "TIB") mult = 0x1p40;
  const std::string number = text.substr(0, i);
  double value = 0;
  if (mult == 0 || number.empty() || number.find('.') != number.rfind('.') || number == "." ||
      !((value = std::stod(number) * mult) >= 1) || value > 9e18) {
    return absl::InvalidArgumentError(absl::StrCat(
        flag, " '", text, "' is not a size; use bytes or a number with K, M, G or T (e.g. 8GiB)"));
  }
  return static_cast<uint64_t>(value);
}

std::string format_duration(double seconds) {
  if (!(seconds >= 0) || seconds > 1e7) return "?";
  const auto s = static_cast<int64_t>(std::lround(seconds));
  if (s >= 3600) return absl::StrFormat("%lldh%02lldm", s / 3600, s / 60 % 60);
  if (s >= 60) return absl::StrFormat("%lldm%02llds", s / 60, s % 60);
  return absl::StrFormat("%llds", s);
}

std::string format_count(double n) {
  if (n >= 1e9) return absl::StrFormat("%.2fB", n / 1e9);
  if (n >= 1e6) return absl::StrFormat("%.2fM", n / 1e6);
  if (n >= 1e3) return absl::StrFormat("%.1fk", n / 1e3);
  return absl::StrFormat("%.0f", n);
}

// Everything built before the first step, checked in order of cost.
struct Setup {
  model::Gpt2Config model;
  std::string vocab_note;
  config::DsConfig cfg;
  int64_t seq_len = 0;
  uint64_t gpu_mem = 0;
  std::optional<model::BpeTokenizer> tokenizer;  // --vocab/--merges
  std::unique_ptr<model::TextCorpus> corpus;
  std::string gnuplot;                // --plot
  std::unique_ptr<gpu::Device> cuda;  // --device cuda
};

absl::Status prepare(const TrainArgs& a, Setup* s) {
  STRATA_ASSIGN_OR_RETURN(s->model, model::gpt2_config_by_name(a.model));
  // With --vocab/--merges the files set the vocabulary (loaded below).
  if (a.vocab.empty() && s->model.vocab_size != model::kGpt2ByteVocab) {
    s->vocab_note = absl::StrCat("byte-level vocab 256 (the data is raw bytes; ", s->model.name,
                                 "'s BPE vocab of ", s->model.vocab_size,
                                 " is not used; pass --vocab and --merges to use it)");
    s->model.vocab_size = model::kGpt2ByteVocab;
  } else if (a.vocab.empty()) {
    s->vocab_note = "byte-level vocab 256";
  }

  std::vector<std::string> warnings;
  auto cfg = config::load_ds_config(a.config_file, &warnings);
  for (const std::string& w : warnings) std::fprintf(stderr, "strata: warning: %s\n", w.c_str());
  if (!cfg.ok()) return cfg.status();
  s->cfg = *std::move(cfg);
  if (s->cfg.world_size != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(a.config_file, ": world size ", s->cfg.world_size,
                     ": strata train runs one process on one device; make train_batch_size equal "
                     "train_micro_batch_size_per_gpu * gradient_accumulation_steps"));
  }

  if (a.device == "cuda") {
    auto dev = gpu::make_cuda_device(0);
    if (!dev.ok()) {
      const std::string why(dev.status().message());
      return absl::FailedPreconditionError(
          absl::StrCat("--device cuda: no usable GPU (", why, ")",
                       why.find("--device cpu") == std::string::npos ? "; use --device cpu" : ""));
    }
    s->cuda = *std::move(dev);
  }

  s->seq_len = a.seq_len > 0 ? a.seq_len : s->model.seq_len;
  if (s->seq_len > s->model.seq_len) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--seq-len ", s->seq_len, " is longer than ", s->model.name, " allows (", s->model.seq_len,
        " positions); use --seq-len ", s->model.seq_len, " or less"));
  }

  if (!a.vocab.empty()) {
    STRATA_ASSIGN_OR_RETURN(s->tokenizer, model::BpeTokenizer::load(a.vocab, a.merges));
    s->model.vocab_size = s->tokenizer->vocab_size();
    s->vocab_note = absl::StrCat("GPT-2 BPE vocab ", s->model.vocab_size, " (", a.vocab, ")");
  }
  STRATA_ASSIGN_OR_RETURN(
      s->corpus,
      model::load_text_corpus(a.data, {.micro_batch = s->cfg.train_micro_batch_size_per_gpu,
                                       .seq_len = s->seq_len,
                                       .seed = a.seed,
                                       .tokenizer = s->tokenizer ? &*s->tokenizer : nullptr}));
  return absl::OkStatus();
}

// The human-readable per-step report.
class Progress {
 public:
  Progress(int64_t total_steps, int64_t print_every)
      : tty_(::isatty(STDERR_FILENO) == 1),
        total_(total_steps),
        every_(std::max<int64_t>(1, print_every)) {}

  void step(const engine::StepStats& st, double tokens_per_s, double eta_s, int64_t skipped) {
    const std::string line = absl::StrFormat(
        "step %*lld/%lld  loss %.4f  %s tok/s  scale %s  lr %.2e  ETA %s  skipped %lld",
        static_cast<int>(std::to_string(total_).size()), static_cast<long long>(st.step),
        static_cast<long long>(total_), st.loss, format_count(tokens_per_s),
        format_count(st.loss_scale), st.lr, format_duration(eta_s),
        static_cast<long long>(skipped));
    if (tty_) {
      std::fprintf(stderr, "\r%s\x1b[K", line.c_str());
      open_line_ = true;
    } else if (st.step == 1 || st.step == total_ || st.step % every_ == 0) {
      std::fprintf(stderr, "%s\n", line.c_str());
    }
    std::fflush(stderr);
  }
  // A line of its own (evaluation, notes), below the progress line.
  void note(const std::string& text) {
    end_line();
    std::fprintf(stderr, "%s\n", text.c_str());
    std::fflush(stderr);
  }
  void end_line() {
    if (open_line_) std::fputc('\n', stderr);
    open_line_ = false;
  }

 private:
  bool tty_;
  int64_t total_;
  int64_t every_;
  bool open_line_ = false;
};

json tier_bytes(const std::array<uint64_t, offload::kTierCount>& b) {
  json j = json::object();
  for (int t = 0; t < offload::kTierCount; ++t) {
    j[offload::tier_name(static_cast<offload::Tier>(t))] = b[t];
  }
  return j;
}

int run_train(const TrainArgs& a) {
  Setup s;
  auto gpu_mem = parse_size(a.gpu_mem, "--gpu-mem");
  if (!gpu_mem.ok()) return report_status(gpu_mem.status()) == 0 ? 0 : 2;  // usage
  s.gpu_mem = *gpu_mem;
  if (a.save_every > 0 && a.save_dir.empty()) {
    report_status(absl::InvalidArgumentError(
        "--save-every needs --save-dir DIR (where the checkpoint is written)"));
    return 2;  // usage
  }
  if (!a.init.empty() && !a.resume.empty()) {
    report_status(absl::InvalidArgumentError(
        "--init and --resume both set the starting weights; pass one of them"));
    return 2;  // usage
  }
  if (!a.plot.empty()) {
    auto gnuplot = prepare_loss_plot(a.plot);
    if (!gnuplot.ok()) return report_status(gnuplot.status());
    s.gnuplot = *gnuplot;
  }
  if (absl::Status st = prepare(a, &s); !st.ok()) return report_status(st);
  std::function<void(int, int, float*)> init_weights;
  if (!a.init.empty()) {
    auto w = model::Gpt2Init::open(a.init, s.model);
    if (!w.ok()) return report_status(annotate(w.status(), "--init"));
    init_weights = [w = *std::move(w)](int l, int p, float* out) { w->fill(l, p, out); };
  }
  const config::DsConfig& cfg = s.cfg;

  std::optional<std::ofstream> log;
  if (!a.log_json.empty()) {
    log.emplace(a.log_json, std::ios::trunc);
    if (!*log) {
      return report_status(absl::InvalidArgumentError(absl::StrCat(
          "--log-json ", a.log_json, ": cannot open for writing; check the folder exists")));
    }
  }
  TraceRecorder trace;
  if (!a.trace.empty()) trace.start();

  const int threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  model::cpu::set_blas_threads(threads);

  auto net = model::make_gpt2_model({.config = s.model,
                                     .micro_batch = cfg.train_micro_batch_size_per_gpu,
                                     .seq_len = s.seq_len,
                                     .seed = a.seed,
                                     .checkpoint_activations = a.checkpoint_activations,
                                     .init = init_weights},
                                    s.corpus.get());
  if (!net.ok()) return report_status(net.status());
  // --device cuda: the model runs its CUDA kernels (model/cuda) on the GPU;
  // otherwise the simulated device, whose memory the CPU kernels address.
  gpu::SimDevice sim({.capacity_bytes = s.gpu_mem, .move_data = true});
  gpu::Device& device = s.cuda != nullptr ? *s.cuda : static_cast<gpu::Device&>(sim);
  engine::EngineOptions eo;
  eo.allow_buffered_io = true;  // tmpfs and overlay filesystems have no O_DIRECT
  auto eng = engine::TrainingEngine::create(cfg, net->get(), &device, std::move(eo));
  if (!eng.ok()) return report_status(eng.status());
  engine::TrainingEngine& engine = **eng;
  if (!a.resume.empty()) {
    if (absl::Status st = engine.load_checkpoint(a.resume); !st.ok()) {
      return report_status(annotate(st, "--resume"));
    }
  }
  const int64_t start_step = engine.steps();
  // What `strata sample` and `strata ckpt export` need to rebuild the model.
  json tokenizer = {{"kind", "bytes"}};
  if (s.tokenizer) {
    tokenizer = {{"kind", "bpe"},
                 {"vocab", std::filesystem::absolute(a.vocab).string()},
                 {"merges", std::filesystem::absolute(a.merges).string()}};
  }
  engine.set_checkpoint_user_metadata(
      {{"model", model::gpt2_config_to_json(s.model)},
       {"tokenizer", std::move(tokenizer)},
       {"compute_dtype", std::string(dtype_name(engine.compute_dtype()))},
       {"train_seq_len", s.seq_len}});

  const char* precision = cfg.fp16.enabled ? "fp16" : cfg.bf16.enabled ? "bf16" : "fp32";
  std::string offload(config::to_string(cfg.zero.offload_optimizer.device));
  if (cfg.zero.offload_optimizer.device == config::OffloadDevice::kNvme) {
    const auto& p = cfg.zero.offload_optimizer.nvme_paths;
    offload += absl::StrCat(" (", p.empty() ? "strata.nvme_paths" : p.front(), ")");
  }
  const int64_t tokens_per_step =
      cfg.train_micro_batch_size_per_gpu * cfg.gradient_accumulation_steps * s.seq_len;
  std::fprintf(stderr,
               "strata train: %s, %s params, %lld layers x %lld heads x %lld wide, %s; seq %lld, "
               "micro batch %lld x accumulation %lld = %lld tokens/step; %s, %s, ZeRO %d, "
               "optimizer offload %s; device %s, %d BLAS threads\n",
               s.model.name.c_str(),
               format_count(static_cast<double>(model::gpt2_param_count(s.model))).c_str(),
               static_cast<long long>(s.model.n_layer), static_cast<long long>(s.model.n_head),
               static_cast<long long>(s.model.n_embd), s.vocab_note.c_str(),
               static_cast<long long>(s.seq_len),
               static_cast<long long>(cfg.train_micro_batch_size_per_gpu),
               static_cast<long long>(cfg.gradient_accumulation_steps),
               static_cast<long long>(tokens_per_step), precision,
               std::string(config::to_string(cfg.optimizer.type)).c_str(), cfg.zero.stage,
               offload.c_str(), device.name().c_str(), threads);
  std::fprintf(stderr, "strata train: data %s: %zu file(s), %s train / %s validation tokens\n",
               a.data.c_str(), s.corpus->files().size(),
               format_count(static_cast<double>(s.corpus->train_tokens())).c_str(),
               format_count(static_cast<double>(s.corpus->val_tokens())).c_str());

  if (!a.init.empty()) {
    std::fprintf(stderr, "strata train: weights initialised from %s\n", a.init.c_str());
  }
  if (!a.resume.empty()) {
    std::fprintf(stderr, "strata train: resumed from %s after step %lld\n", a.resume.c_str(),
                 static_cast<long long>(start_step));
  }

  SigintGuard sigint;
  Progress progress(a.steps, cfg.steps_per_print);
  const int64_t t0 = monotonic_ns();
  double train_seconds = 0;
  std::optional<double> first_loss, last_loss, first_val, last_val;
  LossCurve curve{.title = absl::StrCat("strata train: ", s.model.name, " on ", a.data)};
  int64_t skipped = 0, steps_done = 0;
  bool interrupted = false;

  auto evaluate = [&](int64_t step) -> absl::StatusOr<double> {
    TraceScope scope(&trace, "evaluate", "train");
    scope.arg("step", step);
    const int64_t e0 = monotonic_ns();
    STRATA_ASSIGN_OR_RETURN(double v, engine.evaluate(a.eval_batches),
                            absl::StrCat("evaluating after step ", step));
    if (!first_val) first_val = v;
    curve.val.emplace_back(step, v);
    last_val = v;
    progress.note(absl::StrFormat(
        "step %lld: val_loss %.4f (%lld batches, %.1fs)", static_cast<long long>(step), v,
        static_cast<long long>(a.eval_batches), (monotonic_ns() - e0) * 1e-9));
    return v;
  };

  int64_t saved_step = -1;
  // --async-save: periodic saves are written in the background from a
  // snapshot; the last one is waited for before the run reports success.
  auto save = [&](int64_t step, bool last) -> absl::Status {
    TraceScope scope(&trace, "save_checkpoint", "train");
    const int64_t c0 = monotonic_ns();
    const bool async = a.async_save && !last;
    STRATA_RETURN_IF_ERROR(
        async ? engine.save_checkpoint_async(a.save_dir) : engine.save_checkpoint(a.save_dir),
        absl::StrCat("--save-dir: saving after step ", step));
    saved_step = step;
    progress.note(absl::StrFormat(
        "step %lld: checkpoint %s %s (%.1fs)", static_cast<long long>(step),
        async ? "being written to" : "saved to", a.save_dir, (monotonic_ns() - c0) * 1e-9));
    return absl::OkStatus();
  };

  absl::Status failure;
  if (auto v = evaluate(start_step); !v.ok()) failure = v.status();
  // --steps is the total: a resumed run continues up to it.
  for (int64_t i = start_step + 1; failure.ok() && i <= a.steps; ++i) {
    absl::StatusOr<engine::StepStats> st;
    {
      TraceScope scope(&trace, "train_step", "train");
      scope.arg("step", i);
      st = engine.train_step();
    }
    if (!st.ok()) {
      failure = annotate(st.status(), absl::StrCat("training step ", i));
      break;
    }
    ++steps_done;
    train_seconds += st->step_seconds;
    if (!first_loss) first_loss = st->loss;
    curve.train.emplace_back(st->step, st->loss);
    last_loss = st->loss;
    if (st->skipped) ++skipped;
    if (trace.enabled()) trace.counter("loss_scale", static_cast<int64_t>(st->loss_scale));
    const double tps = st->step_seconds > 0 ? tokens_per_step / st->step_seconds : 0;
    const double eta = train_seconds / steps_done * (a.steps - i);
    progress.step(*st, tps, eta, skipped);

    const bool stop = g_interrupted != 0;
    std::optional<double> val;
    if (!stop && (i % a.eval_every == 0 || i == a.steps)) {
      auto v = evaluate(i);
      if (!v.ok())
        failure = v.status();
      else
        val = *v;
    }
    if (log) {
      json j = {{"step", st->step},
                {"loss", st->loss},
                {"lr", st->lr},
                {"loss_scale", st->loss_scale},
                {"skipped", st->skipped},
                {"grad_norm", std::isfinite(st->grad_norm) ? json(st->grad_norm) : json(nullptr)},
                {"clip_coef", st->clip_coef},
                {"step_seconds", st->step_seconds},
                {"tokens_per_second", tps},
                {"bytes_in", tier_bytes(st->bytes_in)},
                {"bytes_out", tier_bytes(st->bytes_out)}};
      if (val) j["val_loss"] = *val;
      *log << j.dump() << '\n' << std::flush;
    }
    if (failure.ok() && a.save_every > 0 && i % a.save_every == 0) failure = save(i, false);
    if (stop) {
      interrupted = true;
      break;
    }
  }
  // At the end and on Ctrl-C, unless the last step was just saved or failed.
  const int64_t last_step = engine.steps();
  if (failure.ok() && !a.save_dir.empty() && saved_step != last_step) {
    failure = save(last_step, true);
  }
  if (absl::Status w = engine.wait_for_checkpoint(); failure.ok() && !w.ok()) {
    failure = annotate(w, "--save-dir: the background save");
  }
  progress.end_line();
  const double wall = (monotonic_ns() - t0) * 1e-9;

  if (trace.enabled()) {
    if (absl::Status w = trace.write_chrome_json(a.trace); !w.ok()) {
      std::fprintf(stderr, "strata: warning: --trace: %s\n", std::string(w.message()).c_str());
    }
  }
  auto opt = [](const std::optional<double>& v) {
    return v ? absl::StrFormat("%.4f", *v) : std::string("-");
  };
  std::fprintf(
      stderr,
      "summary: %lld step(s) in %s (%s training), train loss %s -> %s, val loss %s -> "
      "%s, %s tokens/s, %lld skipped (fp16 overflow)\n",
      static_cast<long long>(steps_done), format_duration(wall).c_str(),
      format_duration(train_seconds).c_str(), opt(first_loss).c_str(), opt(last_loss).c_str(),
      opt(first_val).c_str(), opt(last_val).c_str(),
      format_count(train_seconds > 0 ? steps_done * tokens_per_step / train_seconds : 0).c_str(),
      static_cast<long long>(skipped));
  // The run's memory against what `strata plan --device cpu` predicts for it.
  auto predicted = model::estimate_gpt2_train_memory(
      {.model = s.model,
       .config = cfg,
       .seq_len = s.seq_len,
       .simulated_device = s.cuda == nullptr,
       .checkpoint_activations = a.checkpoint_activations,
       .data_tokens = s.corpus->train_tokens() + s.corpus->val_tokens(),
       .async_checkpoint = a.async_save && !a.save_dir.empty()});
  if (predicted.ok()) {
    const uint64_t peak = engine::peak_rss_bytes();
    std::fprintf(stderr, "memory: peak RSS %s, strata plan predicted %s (%+.1f%%): %s\n",
                 format_bytes(static_cast<double>(peak)).c_str(),
                 format_bytes(static_cast<double>(predicted->total())).c_str(),
                 100.0 * (static_cast<double>(peak) / static_cast<double>(predicted->total()) - 1),
                 predicted->describe_parts().c_str());
  }
  if (!failure.ok()) return report_status(failure);
  if (!a.plot.empty() && !curve.train.empty()) {
    if (absl::Status p = write_loss_plot(s.gnuplot, curve, a.plot); !p.ok()) {
      return report_status(p);
    }
    std::fprintf(stderr, "strata train: loss curve written to %s\n", a.plot.c_str());
  }
  if (a.sample_tokens > 0 && !interrupted) {
    absl::StatusOr<std::string> text;
    if (s.tokenizer) {
      auto ids = model::sample_tokens(engine, **net, s.tokenizer->encode("\n"), a.sample_tokens,
                                      a.sample_temperature, a.seed);
      text = ids.ok() ? absl::StatusOr<std::string>(s.tokenizer->decode(*ids)) : ids.status();
    } else {
      text = model::sample_text(engine, **net, "\n", a.sample_tokens, a.sample_temperature, a.seed);
    }
    if (!text.ok()) return report_status(text.status());
    std::fprintf(stderr, "sample (%d %s, temperature %.2f):\n%s\n", a.sample_tokens,
                 s.tokenizer ? "tokens" : "bytes", a.sample_temperature, text->c_str());
  }
  if (interrupted) {
    if (a.save_dir.empty()) {
      std::fprintf(stderr,
                   "strata train: interrupted after step %lld; nothing was saved (pass "
                   "--save-dir DIR to keep a checkpoint)\n",
                   static_cast<long long>(engine.steps()));
    } else {
      std::fprintf(stderr, "strata train: interrupted after step %lld; resume with --resume %s\n",
                   static_cast<long long>(engine.steps()), a.save_dir.c_str());
    }
    return 130;
  }
  return 0;
}

}  // namespace

void add_train_command(CLI::App& app, int* exit_code) {
  auto* cmd = app.add_subcommand(
      "train", "Train a GPT-2 family model on text with the ds_config's ZeRO-Offload placement");
  auto a = std::make_shared<TrainArgs>();
  cmd->add_option("--model", a->model, "gpt2-tiny, gpt2, gpt2-medium, gpt2-large or gpt2-xl")
      ->required();
  cmd->add_option("--data", a->data,
                  "text: a file, a folder (recursively) or a glob, e.g. /usr/share/games/fortunes")
      ->required();
  cmd->add_option("--deepspeed_config", a->config_file, "the ds_config JSON file")->required();
  cmd->add_option("--steps", a->steps, "optimizer steps (default 100)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 40));
  cmd->add_option("--device", a->device, "cpu (simulated device) or cuda (default cpu)")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->add_option("--seq-len", a->seq_len, "tokens per sequence (default: the model's positions)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  cmd->add_option("--gpu-mem", a->gpu_mem, "simulated device memory (default 8GiB)");
  cmd->add_option("--eval-every", a->eval_every, "validation every N steps and at the end (50)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 40));
  cmd->add_option("--eval-batches", a->eval_batches, "validation batches per evaluation (8)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  cmd->add_option("--log-json", a->log_json, "write one JSON object per step to FILE");
  cmd->add_option("--trace", a->trace, "write a Chrome trace (chrome://tracing) to FILE");
  cmd->add_option("--seed", a->seed, "data order and weight initialisation (default 1337)");
  auto* vocab = cmd->add_option("--vocab", a->vocab,
                                "GPT-2 BPE vocab.json (encoder.json): with --merges the data is "
                                "BPE tokens and the model's vocabulary is the file's");
  auto* merges =
      cmd->add_option("--merges", a->merges, "GPT-2 BPE merges.txt (vocab.bpe), with --vocab");
  vocab->needs(merges);
  merges->needs(vocab);
  cmd->add_option("--plot", a->plot,
                  "at the end, draw the loss curve into FILE.png (needs gnuplot)");
  cmd->add_option("--sample", a->sample_tokens,
                  "after training, print this many tokens generated by the model (default 0)")
      ->check(CLI::Range(0, 100000));
  cmd->add_option("--temperature", a->sample_temperature,
                  "sampling temperature for --sample; 0 takes the most likely byte (0.8)")
      ->check(CLI::Range(0.0, 10.0));
  cmd->add_option("--save-every", a->save_every,
                  "save a checkpoint every N steps (needs --save-dir; also saved at the end)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 40));
  cmd->add_option("--save-dir", a->save_dir,
                  "checkpoint directory, written at the end, on Ctrl-C and every --save-every");
  cmd->add_option("--resume", a->resume,
                  "continue from the checkpoint in DIR (same model, config and data); --steps "
                  "stays the total");
  cmd->add_option("--init", a->init,
                  "start from the GPT-2 weights in FILE.safetensors (Hugging Face or strata "
                  "names, e.g. from `strata ckpt export`) instead of random ones");
  cmd->add_flag("--async-save", a->async_save,
                "write periodic checkpoints in the background (a host snapshot of ~14 bytes "
                "per parameter)");
  cmd->add_flag("--checkpoint-activations", a->checkpoint_activations,
                "keep only each block's input in forward and recompute the block in backward "
                "(less memory, same results, ~1/3 more compute)");
  cmd->callback([=] { *exit_code = run_train(*a); });
}

}  // namespace strata::tools
