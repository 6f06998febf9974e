// strata train --model NAME --data PATH --deepspeed_config F [--steps N]
//              [--device cpu|cuda] [--seq-len T] [--gpu-mem SIZE]
//              [--eval-every N] [--eval-batches K] [--log-json FILE]
//              [--trace FILE] [--seed S] [--vocab vocab.json --merges merges.txt]
//              [--plot FILE.png] [--lr LR --weight-decay WD]
//              [--nproc N] [--comm-timeout SECONDS]
//              [--daemon [SOCKET] --session NAME]
// Trains a GPT-2 family model on text (bytes, or GPT-2 BPE tokens with
// --vocab/--merges) with the ZeRO-Offload
// engine (engine/training_engine.h) on a simulated device (SimDevice: the
// CPU kernels on host memory under a GPU-like capacity), the optimizer
// offloaded as the ds_config says. The loop is model::Trainer
// (model/trainer.h); this file holds the flags, the checks and the printing.
//
// Everything that can be checked is checked before any work: every number
// is parsed by core/parse.h (a malformed or out-of-range value, nan
// included, exits 2), then the destinations (--save-dir, --log-json,
// --trace, --plot and gnuplot), model name, ds_config, device, sequence
// length, tokenizer files and corpus, each failure one "strata: error:" line
// and exit 1.
// A ds_config without an "optimizer" section (its train.py builds one)
// trains with AdamW at --lr / --weight-decay, said in one line.
// Output: human text on stderr (a progress line rewritten in place on a
// terminal, plain lines every steps_per_print steps otherwise), one JSON
// object per step in --log-json, the loss curve in --plot at the end (also
// after Ctrl-C). Ctrl-C or SIGTERM finishes the current step, saves when
// --save-dir is given, prints the summary and exits 130 (SIGINT) or 143
// (SIGTERM); SIGPIPE and a closed stderr do not end a run
// (model/stop_signals.h).
// Data parallel (docs/distributed.md): --nproc N makes this process a
// launcher that re-runs its own command line (less --nproc) as N local
// ranks with torchrun's variables (dist/launcher.h) and exits non-zero
// naming a rank that failed. A process started with RANK / WORLD_SIZE
// (by that launcher, torchrun, Slurm, mpirun) is one rank of the job: it
// resolves the batch rule for the world size, reads its share of each
// global batch, joins the others (dist::connect, Gloo: the engine reduces
// in host memory in this version) and trains with that communicator. Rank 0
// alone prints and writes --log-json, --trace and --plot; every rank saves
// its checkpoint shard into --save-dir. Errors of a rank start with
// "rank R: ".
// Through stratad (docs/daemon.md): --daemon [SOCKET] --session NAME runs
// the optimizer in the daemon (daemon/engine_client.h; the socket defaults
// to daemon::default_socket_path()): the same loop and the same losses as
// in-process; the same command again after the client died (or ended)
// continues the session from its last completed step. The ranks of a job
// (--nproc N, or RANK / WORLD_SIZE) each attach to their node's stratad as
// session NAME.rank<r>, which holds only the rank's slice of the model: a
// node's sessions together hold one copy of the host state (the engine
// reduces and gathers across the ranks, training_engine.h). With --device
// cuda the engine pins the session's arena and copies each layer's params
// and gradients over PCIe itself.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/config/ds_config.h"
#include "core/dtype.h"
#include "core/file_util.h"
#include "core/parse.h"
#include "core/status.h"
#include "core/trace.h"
#include "daemon/engine_client.h"
#include "daemon/protocol.h"
#include "dist/communicator.h"
#include "dist/launcher.h"
#include "engine/config_validate.h"
#include "engine/training_engine.h"
#include "gpu/device.h"
#include "gpu/sim_device.h"
#include "model/bpe_tokenizer.h"
#include "model/cpu/matmul.h"
#include "model/gpt2_config.h"
#include "model/gpt2_model.h"
#include "model/gpt2_plan.h"
#include "model/gpt2_weights.h"
#include "model/stop_signals.h"
#include "model/text_corpus.h"
#include "model/trainer.h"
#include "tools/cli_util.h"
#include "tools/commands.h"
#include "tools/loss_plot.h"

namespace strata::tools {
namespace {

using nlohmann::json;

// The flags as typed; numbers are parsed by core/parse.h (parse_flags).
struct TrainFlags {
  std::string model;
  std::string data;
  std::string config_file;
  std::string steps = "100";
  std::string device = "cpu";
  std::string seq_len;  // empty: the model's
  std::string gpu_mem = "8GiB";
  std::string eval_every = "50";
  std::string eval_batches = "8";
  std::string log_json;
  std::string trace;
  std::string seed = "1337";
  std::string save_every;
  std::string save_dir;
  std::string resume;
  std::string init;           // --init FILE.safetensors
  std::string vocab, merges;  // GPT-2 BPE files; none: byte tokens
  std::string plot;           // loss-curve PNG
  std::string sample_tokens = "0";
  std::string sample_temperature = "0.8";
  std::string lr = absl::StrCat(model::kDefaultLearningRate);
  std::string weight_decay = absl::StrCat(model::kDefaultWeightDecay);
  bool lr_given = false, weight_decay_given = false;
  bool checkpoint_activations = false;
  bool async_save = false;
  std::string nproc;                 // empty: no launching
  std::string comm_timeout = "300";  // seconds
  bool daemon = false;               // --daemon given
  std::string daemon_socket;         // its value; empty: the default socket
  std::string session;               // --session
};

// The flags once parsed and checked against each other.
struct TrainArgs {
  TrainFlags flags;
  int64_t steps = 0;
  int64_t seq_len = 0;  // 0: the model's
  uint64_t gpu_mem = 0;
  int64_t eval_every = 0;
  int64_t eval_batches = 0;
  uint64_t seed = 0;
  int64_t save_every = 0;
  int sample_tokens = 0;
  double sample_temperature = 0;
  double lr = 0;
  double weight_decay = 0;
  int nproc = 0;  // 0: not given
  std::chrono::milliseconds comm_timeout{0};
  dist::RankInfo rank;  // from the environment; world_size 1 alone
};

constexpr int64_t kMaxSteps = int64_t{1} << 40;

// --daemon [SOCKET] --session NAME against the rest (usage errors).
absl::Status check_daemon_flags(const TrainArgs& a) {
  const TrainFlags& f = a.flags;
  if (!f.daemon) {
    return absl::InvalidArgumentError(
        "--session NAME names a stratad session: it needs --daemon [SOCKET]");
  }
  if (f.session.empty()) {
    return absl::InvalidArgumentError(
        "--daemon needs --session NAME (stratad keeps the run under that name; the same command "
        "again continues it)");
  }
  STRATA_RETURN_IF_ERROR(daemon::check_session_name(f.session), "--session");
  // Each rank of a job has its session, named after --session.
  const int world = std::max(a.nproc, a.rank.world_size);
  STRATA_RETURN_IF_ERROR(
      daemon::check_session_name(daemon::rank_session_name(f.session, world - 1, world)),
      absl::StrCat("--session (rank ", world - 1, "'s session)"));
  return absl::OkStatus();
}

// Usage errors (exit 2): a number that does not parse or is out of range,
// flags that contradict each other.
absl::StatusOr<TrainArgs> parse_flags(const TrainFlags& f) {
  TrainArgs a;
  a.flags = f;
  STRATA_ASSIGN_OR_RETURN(a.steps, parse_int(f.steps, "--steps", 1, kMaxSteps));
  if (!f.seq_len.empty()) {
    STRATA_ASSIGN_OR_RETURN(a.seq_len, parse_int(f.seq_len, "--seq-len", 1, int64_t{1} << 20));
  }
  STRATA_ASSIGN_OR_RETURN(a.gpu_mem, parse_byte_size(f.gpu_mem, "--gpu-mem"));
  STRATA_ASSIGN_OR_RETURN(a.eval_every, parse_int(f.eval_every, "--eval-every", 1, kMaxSteps));
  STRATA_ASSIGN_OR_RETURN(a.eval_batches,
                          parse_int(f.eval_batches, "--eval-batches", 1, int64_t{1} << 20));
  STRATA_ASSIGN_OR_RETURN(int64_t seed,
                          parse_int(f.seed, "--seed", 0, std::numeric_limits<int64_t>::max()));
  a.seed = static_cast<uint64_t>(seed);
  if (!f.save_every.empty()) {
    STRATA_ASSIGN_OR_RETURN(a.save_every, parse_int(f.save_every, "--save-every", 1, kMaxSteps));
  }
  STRATA_ASSIGN_OR_RETURN(int64_t sample, parse_int(f.sample_tokens, "--sample", 0, 100000));
  a.sample_tokens = static_cast<int>(sample);
  STRATA_ASSIGN_OR_RETURN(a.sample_temperature, parse_double(f.sample_temperature, "--temperature",
                                                             {.min = 0, .max = 10}));
  STRATA_ASSIGN_OR_RETURN(
      a.lr, parse_double(f.lr, "--lr", {.min = 0, .max = 10, .min_inclusive = false}));
  STRATA_ASSIGN_OR_RETURN(a.weight_decay,
                          parse_double(f.weight_decay, "--weight-decay", {.min = 0, .max = 1}));
  if (a.save_every > 0 && f.save_dir.empty()) {
    return absl::InvalidArgumentError(
        "--save-every needs --save-dir DIR (where the checkpoint is written)");
  }
  if (!f.nproc.empty()) {
    STRATA_ASSIGN_OR_RETURN(const int64_t n, parse_int(f.nproc, "--nproc", 1, 1024));
    a.nproc = static_cast<int>(n);
  }
  STRATA_ASSIGN_OR_RETURN(const double timeout, parse_double(f.comm_timeout, "--comm-timeout",
                                                             {.min = 0.1, .max = 86400}));
  a.comm_timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout * 1000));
  STRATA_ASSIGN_OR_RETURN(a.rank, dist::rank_info_from_env());
  if (a.nproc > 0 && std::getenv("RANK") != nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("--nproc ", a.nproc, " in a process that is already rank ", a.rank.rank,
                     " of ", a.rank.world_size,
                     " (RANK is set, e.g. by torchrun): drop --nproc, the launcher "
                     "started the ranks"));
  }
  if (f.daemon || !f.session.empty()) {
    STRATA_RETURN_IF_ERROR(check_daemon_flags(a));
  }
  if (!f.init.empty() && !f.resume.empty()) {
    return absl::InvalidArgumentError(
        "--init and --resume both set the starting weights; pass one of them");
  }
  return a;
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

// Rank 0 of a data-parallel job (or the one rank) prints and writes the log,
// trace and plot.
bool leader(const TrainArgs& a) { return a.rank.rank == 0; }

model::TrainerOptions trainer_options(const TrainArgs& a, int64_t tokens_per_step,
                                      TraceRecorder* trace, dist::Communicator* comm = nullptr) {
  return {.steps = a.steps,
          .eval_every = a.eval_every,
          .eval_batches = a.eval_batches,
          .save_dir = a.flags.save_dir,
          .save_every = a.save_every,
          .async_save = a.flags.async_save,
          .log_json = leader(a) ? a.flags.log_json : "",
          .tokens_per_step = tokens_per_step,
          .trace = leader(a) ? trace : nullptr,
          .comm = comm};
}

// The destinations, checked before anything is built or trained.
absl::Status check_destinations(const TrainArgs& a) {
  STRATA_RETURN_IF_ERROR(model::check_trainer_options(trainer_options(a, 0, nullptr)));
  if (!a.flags.trace.empty()) {
    STRATA_RETURN_IF_ERROR(check_output_destination(a.flags.trace, "--trace", false));
  }
  return absl::OkStatus();
}

// Everything built before the first step, checked in order of cost.
struct Setup {
  model::Gpt2Config model;
  std::string vocab_note;
  config::DsConfig cfg;
  int64_t seq_len = 0;
  std::optional<model::BpeTokenizer> tokenizer;  // --vocab/--merges
  std::unique_ptr<model::TextCorpus> corpus;
  std::string gnuplot;                // --plot
  std::unique_ptr<gpu::Device> cuda;  // --device cuda
};

// A ds_config without "optimizer" gets AdamW from the flags; with one, the
// flags change nothing (and say so when given).
void choose_optimizer(const TrainArgs& a, config::DsConfig* cfg) {
  if (model::fill_missing_optimizer(cfg, a.lr, a.weight_decay)) {
    std::fprintf(stderr,
                 "strata train: %s has no \"optimizer\" section (as when the training script "
                 "builds it); training with AdamW, lr %g (--lr), weight decay %g "
                 "(--weight-decay), betas 0.9/0.999, eps 1e-8\n",
                 a.flags.config_file.c_str(), a.lr, a.weight_decay);
    return;
  }
  if (a.flags.lr_given || a.flags.weight_decay_given) {
    std::fprintf(stderr,
                 "strata: warning: %s%s%s ignored: %s has an \"optimizer\" section (%s, lr %g, "
                 "weight decay %g), which sets them\n",
                 a.flags.lr_given ? "--lr" : "",
                 a.flags.lr_given && a.flags.weight_decay_given ? " and " : "",
                 a.flags.weight_decay_given ? "--weight-decay" : "", a.flags.config_file.c_str(),
                 std::string(config::to_string(cfg->optimizer.type)).c_str(), cfg->optimizer.lr,
                 cfg->optimizer.weight_decay);
  }
}

absl::Status prepare(const TrainArgs& a, Setup* s) {
  const TrainFlags& f = a.flags;
  STRATA_ASSIGN_OR_RETURN(s->model, model::gpt2_config_by_name(f.model));
  // With --vocab/--merges the files set the vocabulary (loaded below).
  if (f.vocab.empty() && s->model.vocab_size != model::kGpt2ByteVocab) {
    s->vocab_note = absl::StrCat("byte-level vocab 256 (the data is raw bytes; ", s->model.name,
                                 "'s BPE vocab of ", s->model.vocab_size,
                                 " is not used; pass --vocab and --merges to use it)");
    s->model.vocab_size = model::kGpt2ByteVocab;
  } else if (f.vocab.empty()) {
    s->vocab_note = "byte-level vocab 256";
  }

  // The batch rule resolved for this job's world size.
  const int world = a.rank.world_size;
  std::vector<std::string> warnings;
  auto cfg = config::load_ds_config(f.config_file, &warnings, world);
  if (leader(a)) {
    for (const std::string& w : warnings) std::fprintf(stderr, "strata: warning: %s\n", w.c_str());
  }
  if (!cfg.ok()) return cfg.status();
  s->cfg = *std::move(cfg);
  if (leader(a)) {
    choose_optimizer(a, &s->cfg);  // and says so
  } else {
    model::fill_missing_optimizer(&s->cfg, a.lr, a.weight_decay);
  }
  // Everything `strata config check` refuses, before the model is built.
  STRATA_RETURN_IF_ERROR(engine::validate_for_training(s->cfg, f.config_file, world));

  if (f.device == "cuda") {
    // One GPU per rank of this node.
    auto dev = gpu::make_cuda_device(a.rank.local_rank);
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

  if (!f.vocab.empty()) {
    STRATA_ASSIGN_OR_RETURN(s->tokenizer, model::BpeTokenizer::load(f.vocab, f.merges));
    s->model.vocab_size = s->tokenizer->vocab_size();
    s->vocab_note = absl::StrCat("GPT-2 BPE vocab ", s->model.vocab_size, " (", f.vocab, ")");
  }
  STRATA_ASSIGN_OR_RETURN(
      s->corpus,
      model::load_text_corpus(f.data, {.micro_batch = s->cfg.train_micro_batch_size_per_gpu,
                                       .seq_len = s->seq_len,
                                       .seed = a.seed,
                                       .tokenizer = s->tokenizer ? &*s->tokenizer : nullptr,
                                       .rank = a.rank.rank,
                                       .world_size = world}));
  return absl::OkStatus();
}

// The human-readable report of the Trainer's progress.
class Progress final : public model::TrainerSink {
 public:
  Progress(int64_t total_steps, int64_t print_every)
      : tty_(::isatty(STDERR_FILENO) == 1),
        total_(total_steps),
        every_(std::max<int64_t>(1, print_every)) {}

  void on_step(const model::TrainerStep& s) override {
    const engine::StepStats& st = s.stats;
    const std::string line = absl::StrFormat(
        "step %*lld/%lld  loss %.4f  %s tok/s  scale %s  lr %.2e  ETA %s  skipped %lld  "
        "syncs %lld/%lld",
        static_cast<int>(std::to_string(total_).size()), static_cast<long long>(st.step),
        static_cast<long long>(total_), st.loss, format_count(s.tokens_per_second),
        format_count(st.loss_scale), st.lr, format_duration(s.eta_seconds),
        static_cast<long long>(s.skipped), static_cast<long long>(st.host_syncs),
        static_cast<long long>(st.device_syncs));
    if (tty_) {
      std::fprintf(stderr, "\r%s\x1b[K", line.c_str());
      open_line_ = true;
    } else if (st.step == 1 || st.step == total_ || st.step % every_ == 0) {
      std::fprintf(stderr, "%s\n", line.c_str());
    }
    std::fflush(stderr);
  }
  void on_evaluation(int64_t step, double val_loss, int64_t batches, double seconds) override {
    note(absl::StrFormat("step %lld: val_loss %.4f (%lld batches, %.1fs)",
                         static_cast<long long>(step), val_loss, static_cast<long long>(batches),
                         seconds));
  }
  void on_save(int64_t step, const std::string& dir, bool background, double seconds) override {
    note(absl::StrFormat("step %lld: checkpoint %s %s (%.1fs)", static_cast<long long>(step),
                         background ? "being written to" : "saved to", dir, seconds));
  }
  void end_line() {
    if (open_line_) std::fputc('\n', stderr);
    open_line_ = false;
  }

 private:
  // A line of its own (evaluation, checkpoint), below the progress line.
  void note(const std::string& text) {
    end_line();
    std::fprintf(stderr, "%s\n", text.c_str());
    std::fflush(stderr);
  }

  bool tty_;
  int64_t total_;
  int64_t every_;
  bool open_line_ = false;
};

void print_header(const TrainArgs& a, const Setup& s, const gpu::Device& device,
                  int64_t tokens_per_step, int threads) {
  const config::DsConfig& cfg = s.cfg;
  const char* precision = cfg.fp16.enabled ? "fp16" : cfg.bf16.enabled ? "bf16" : "fp32";
  std::string offload(config::to_string(cfg.zero.offload_optimizer.device));
  if (cfg.zero.offload_optimizer.device == config::OffloadDevice::kNvme) {
    const auto& p = cfg.zero.offload_optimizer.nvme_paths;
    offload += absl::StrCat(" (", p.empty() ? "strata.nvme_paths" : p.front(), ")");
  }
  std::fprintf(
      stderr,
      "strata train: %s, %s params, %lld layers x %lld heads x %lld wide, %s; seq %lld, "
      "micro batch %lld x accumulation %lld x world %d = batch %lld (%lld tokens/step); "
      "%s, %s, ZeRO %d, optimizer offload %s; device %s, %d BLAS threads\n",
      s.model.name.c_str(),
      format_count(static_cast<double>(model::gpt2_param_count(s.model))).c_str(),
      static_cast<long long>(s.model.n_layer), static_cast<long long>(s.model.n_head),
      static_cast<long long>(s.model.n_embd), s.vocab_note.c_str(),
      static_cast<long long>(s.seq_len), static_cast<long long>(cfg.train_micro_batch_size_per_gpu),
      static_cast<long long>(cfg.gradient_accumulation_steps), cfg.world_size,
      static_cast<long long>(cfg.train_batch_size), static_cast<long long>(tokens_per_step),
      precision, std::string(config::to_string(cfg.optimizer.type)).c_str(), cfg.zero.stage,
      offload.c_str(), device.name().c_str(), threads);
  std::fprintf(stderr, "strata train: data %s: %zu file(s), %s train / %s validation tokens\n",
               a.flags.data.c_str(), s.corpus->files().size(),
               format_count(static_cast<double>(s.corpus->train_tokens())).c_str(),
               format_count(static_cast<double>(s.corpus->val_tokens())).c_str());
  if (cfg.world_size > 1) {
    std::fprintf(stderr,
                 "strata train: rank 0 of %d (Gloo, %s:%d); each rank reads its %lld of every "
                 "%lld sequences and keeps a 1/%d slice of the fp32 master and optimizer "
                 "states\n",
                 cfg.world_size, a.rank.master_addr.c_str(), a.rank.master_port,
                 static_cast<long long>(cfg.train_micro_batch_size_per_gpu),
                 static_cast<long long>(cfg.train_micro_batch_size_per_gpu * cfg.world_size),
                 cfg.world_size);
  }
}

void print_summary(const model::TrainerResult& r) {
  auto opt = [](const std::optional<double>& v) {
    return v ? absl::StrFormat("%.4f", *v) : std::string("-");
  };
  std::fprintf(stderr,
               "summary: %lld step(s) in %s (%s training), train loss %s -> %s, val loss %s -> "
               "%s, %s tokens/s, %lld skipped (fp16 overflow)\n",
               static_cast<long long>(r.steps_run), format_duration(r.wall_seconds).c_str(),
               format_duration(r.train_seconds).c_str(), opt(r.first_loss).c_str(),
               opt(r.last_loss).c_str(), opt(r.first_val_loss).c_str(),
               opt(r.last_val_loss).c_str(), format_count(r.tokens_per_second).c_str(),
               static_cast<long long>(r.skipped));
}

// The run's memory against what `strata plan --device cpu` predicts for it
// (through stratad: the client's peak alone).
void print_memory(const TrainArgs& a, const Setup& s) {
  if (a.flags.daemon) {
    // The plan's host arena and rollback copies are stratad's here.
    std::fprintf(stderr,
                 "memory: peak RSS %s (the fp32 master weights and optimizer states are "
                 "stratad's; `strata top` shows its host memory)\n",
                 format_bytes(static_cast<double>(engine::peak_rss_bytes())).c_str());
    return;
  }
  auto predicted = model::estimate_gpt2_train_memory(
      {.model = s.model,
       .config = s.cfg,
       .seq_len = s.seq_len,
       .simulated_device = s.cuda == nullptr,
       .checkpoint_activations = a.flags.checkpoint_activations,
       .data_bytes = s.corpus->resident_bytes(),
       .async_checkpoint = a.flags.async_save && !a.flags.save_dir.empty()});
  if (!predicted.ok()) return;
  const uint64_t peak = engine::peak_rss_bytes();
  std::fprintf(stderr, "memory: peak RSS %s, strata plan predicted %s (%+.1f%%): %s\n",
               format_bytes(static_cast<double>(peak)).c_str(),
               format_bytes(static_cast<double>(predicted->total())).c_str(),
               100.0 * (static_cast<double>(peak) / static_cast<double>(predicted->total()) - 1),
               predicted->describe_parts().c_str());
}

// This process's command line as typed (the launcher re-runs it per rank),
// less `flag` and its value ("--nproc 2" or "--nproc=2"); argv[0] is this
// executable's path.
absl::StatusOr<std::vector<std::string>> own_command_line_without(std::string_view flag) {
  // procfs reports size 0: read to the end rather than by size (read_file).
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  const std::string raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> args;
  for (size_t at = 0; at < raw.size();) {
    const size_t end = raw.find('\0', at);
    args.emplace_back(raw.substr(at, end == std::string::npos ? std::string::npos : end - at));
    if (end == std::string::npos) break;
    at = end + 1;
  }
  std::error_code ec;
  const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (args.empty() || ec) {
    return absl::InternalError("cannot read this process's command line from /proc/self");
  }
  std::vector<std::string> out = {self.string()};
  const std::string with_value = std::string(flag) + "=";
  for (size_t i = 1; i < args.size(); ++i) {
    if (args[i] == flag) {
      ++i;  // and its value
    } else if (args[i].rfind(with_value, 0) != 0) {
      out.push_back(args[i]);
    }
  }
  return out;
}

// --nproc N: checks what every rank would refuse (once, here), then runs N
// ranks of this command line on this machine and waits for them. Exit 0
// when all succeed; 1 naming the first rank that failed (the others are
// stopped); 130 when interrupted (the ranks got the signal and stopped
// after their step in flight).
int launch_ranks(const TrainArgs& a) {
  const int n = a.nproc;
  if (absl::Status st = check_destinations(a); !st.ok()) return report_status(st);
  std::vector<std::string> warnings;
  auto cfg = config::load_ds_config(a.flags.config_file, &warnings, n);
  if (!cfg.ok()) return report_status(annotate(cfg.status(), absl::StrCat("--nproc ", n)));
  model::fill_missing_optimizer(&*cfg, a.lr, a.weight_decay);
  if (absl::Status st = engine::validate_for_training(*cfg, a.flags.config_file, n); !st.ok()) {
    return report_status(st);
  }
  auto argv = own_command_line_without("--nproc");
  if (!argv.ok()) return report_status(argv.status());
  std::fprintf(stderr, "strata train: starting %d ranks on this machine (Gloo over loopback)\n", n);
  const absl::Status st = dist::launch_local(n, *argv);
  if (absl::IsCancelled(st)) {
    std::fprintf(stderr, "strata train: %s\n", std::string(st.message()).c_str());
    return 130;
  }
  return report_status(st);
}

int run_train(const TrainFlags& flags) {
  // From the start: a closed stderr or SIGPIPE must not end the run, and a
  // Ctrl-C / SIGTERM while the model is built still saves nothing it should
  // not and stops before the first step.
  model::StopSignals signals;
  auto parsed = parse_flags(flags);
  if (!parsed.ok()) return report_status(parsed.status()) == 0 ? 0 : 2;  // usage
  const TrainArgs& a = *parsed;
  if (a.nproc > 1) return launch_ranks(a);
  // A rank's errors say which rank failed.
  const bool ranks = a.rank.world_size > 1;
  auto report = [&](const absl::Status& st) {
    return report_status(ranks && !st.ok() ? annotate(st, absl::StrCat("rank ", a.rank.rank)) : st);
  };
  if (absl::Status st = check_destinations(a); !st.ok()) return report(st);
  Setup s;
  if (!a.flags.plot.empty() && leader(a)) {
    auto gnuplot = prepare_loss_plot(a.flags.plot);
    if (!gnuplot.ok()) return report(gnuplot.status());
    s.gnuplot = *gnuplot;
  }
  if (absl::Status st = prepare(a, &s); !st.ok()) return report(st);
  std::function<void(int, int, float*)> init_weights;
  if (!a.flags.init.empty()) {
    auto w = model::Gpt2Init::open(a.flags.init, s.model);
    if (!w.ok()) return report(annotate(w.status(), "--init"));
    init_weights = [w = *std::move(w)](int l, int p, float* out) { w->fill(l, p, out); };
  }
  const config::DsConfig& cfg = s.cfg;

  TraceRecorder trace;
  if (!a.flags.trace.empty() && leader(a)) trace.start();

  // The ranks of this machine share its cores.
  const int threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()) /
                                      std::max(1, a.rank.local_world_size));
  model::cpu::set_blas_threads(threads);

  // Join the other ranks before building anything large: a rank that cannot
  // be reached fails here, within --comm-timeout.
  std::unique_ptr<dist::Communicator> comm;
  if (ranks) {
    auto c = dist::connect(a.rank, {.backend = dist::Backend::kGloo, .timeout = a.comm_timeout});
    if (!c.ok()) {
      absl::Status st = annotate(c.status(), "joining the other ranks");
      // torchrun's agent serves its own store on MASTER_PORT unless told not
      // to share it (torch.distributed.elastic): say how.
      const char* agent_store = std::getenv("TORCHELASTIC_USE_AGENT_STORE");
      if (a.rank.rank == 0 && agent_store != nullptr &&
          (std::string_view(agent_store) == "True" || std::string_view(agent_store) == "1")) {
        st = absl::Status(st.code(),
                          absl::StrCat(st.message(),
                                       "; under torchrun, MASTER_PORT is its agent's own store: "
                                       "set TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (c10d "
                                       "rendezvous) so the port is free for strata"));
      }
      return report(st);
    }
    comm = *std::move(c);
  }

  auto net = model::make_gpt2_model({.config = s.model,
                                     .micro_batch = cfg.train_micro_batch_size_per_gpu,
                                     .seq_len = s.seq_len,
                                     .seed = a.seed,
                                     .checkpoint_activations = a.flags.checkpoint_activations,
                                     .init = init_weights},
                                    s.corpus.get());
  if (!net.ok()) return report(net.status());
  // --device cuda: the model runs its CUDA kernels (model/cuda) on the GPU;
  // otherwise the simulated device, whose memory the CPU kernels address.
  gpu::SimDevice sim({.capacity_bytes = a.gpu_mem, .move_data = true});
  gpu::Device& device = s.cuda != nullptr ? *s.cuda : static_cast<gpu::Device&>(sim);
  engine::EngineOptions eo;
  eo.allow_buffered_io = true;  // tmpfs and overlay filesystems have no O_DIRECT
  eo.comm = comm.get();
  if (a.flags.daemon) {
    eo.remote = daemon::engine_client_factory(
        {.socket_path = a.flags.daemon_socket,
         .session = daemon::rank_session_name(a.flags.session, a.rank.rank, a.rank.world_size)});
  }
  auto eng = engine::TrainingEngine::create(cfg, net->get(), &device, std::move(eo));
  if (!eng.ok()) return report(eng.status());
  engine::TrainingEngine& engine = **eng;

  // Of the whole job: train_batch_size = micro x accumulation x world.
  const int64_t tokens_per_step = cfg.train_batch_size * s.seq_len;
  Progress progress(a.steps, cfg.steps_per_print);
  auto trainer =
      model::Trainer::create(&engine, trainer_options(a, tokens_per_step, &trace, comm.get()),
                             leader(a) ? &progress : nullptr);
  if (!trainer.ok()) return report(trainer.status());
  if (!a.flags.resume.empty()) {
    if (absl::Status st = (*trainer)->resume(a.flags.resume); !st.ok()) {
      return report(annotate(st, "--resume"));
    }
  }
  // Routed only from here to route_to(nullptr) below, with no return between:
  // the trainer dies before `signals`, and a signal must never reach a
  // destroyed one. A signal received before this is delivered here.
  signals.route_to(trainer->get());
  // What `strata sample` and `strata ckpt export` need to rebuild the model.
  json tokenizer = {{"kind", "bytes"}};
  if (s.tokenizer) {
    tokenizer = {{"kind", "bpe"},
                 {"vocab", std::filesystem::absolute(a.flags.vocab).string()},
                 {"merges", std::filesystem::absolute(a.flags.merges).string()}};
  }
  engine.set_checkpoint_user_metadata(
      {{"model", model::gpt2_config_to_json(s.model)},
       {"tokenizer", std::move(tokenizer)},
       {"compute_dtype", std::string(dtype_name(engine.compute_dtype()))},
       {"train_seq_len", s.seq_len}});

  if (leader(a)) print_header(a, s, device, tokens_per_step, threads);
  if (a.flags.daemon && leader(a)) {
    const std::string socket =
        a.flags.daemon_socket.empty() ? daemon::default_socket_path() : a.flags.daemon_socket;
    // Across ranks: each rank's session holds its slice (their range shown).
    const std::string session =
        ranks ? absl::StrCat(a.flags.session, ".rank0..", a.rank.world_size - 1, " (a slice each)")
              : a.flags.session;
    if (engine.steps() > 0) {
      std::fprintf(stderr,
                   "strata train: optimizer in stratad at %s, session %s, continued after its "
                   "step %lld\n",
                   socket.c_str(), session.c_str(), static_cast<long long>(engine.steps()));
    } else {
      std::fprintf(stderr, "strata train: optimizer in stratad at %s, session %s\n", socket.c_str(),
                   session.c_str());
    }
  }
  if (!a.flags.init.empty() && leader(a)) {
    std::fprintf(stderr, "strata train: weights initialised from %s\n", a.flags.init.c_str());
  }
  if (!a.flags.resume.empty() && leader(a)) {
    std::fprintf(stderr, "strata train: resumed from %s after step %lld\n", a.flags.resume.c_str(),
                 static_cast<long long>(engine.steps()));
  }

  const model::TrainerResult r = (*trainer)->run();
  signals.route_to(nullptr);
  progress.end_line();

  if (trace.enabled()) {
    if (absl::Status w = trace.write_chrome_json(a.flags.trace); !w.ok()) {
      std::fprintf(stderr, "strata: warning: --trace: %s\n", std::string(w.message()).c_str());
    }
  }
  if (leader(a)) {
    print_summary(r);
    print_memory(a, s);
  }
  if (!r.status.ok()) return report(r.status);
  if (!a.flags.plot.empty() && leader(a) && !r.train_losses.empty()) {
    const LossCurve curve{
        .title = absl::StrCat("strata train: ", s.model.name, " on ", a.flags.data),
        .train = r.train_losses,
        .val = r.val_losses};
    if (absl::Status p = write_loss_plot(s.gnuplot, curve, a.flags.plot); !p.ok()) {
      return report(p);
    }
    std::fprintf(stderr, "strata train: loss curve written to %s\n", a.flags.plot.c_str());
  }
  if (a.sample_tokens > 0 && !r.stopped && leader(a)) {
    absl::StatusOr<std::string> text;
    if (s.tokenizer) {
      auto ids = model::sample_tokens(engine, **net, s.tokenizer->encode("\n"), a.sample_tokens,
                                      a.sample_temperature, a.seed);
      text = ids.ok() ? absl::StatusOr<std::string>(s.tokenizer->decode(*ids)) : ids.status();
    } else {
      text = model::sample_text(engine, **net, "\n", a.sample_tokens, a.sample_temperature, a.seed);
    }
    if (!text.ok()) return report(text.status());
    std::fprintf(stderr, "sample (%d %s, temperature %.2f):\n%s\n", a.sample_tokens,
                 s.tokenizer ? "tokens" : "bytes", a.sample_temperature, text->c_str());
  }
  if (r.stopped) {
    const int sig = signals.received() != 0 ? signals.received() : SIGINT;
    const char* how = sig == SIGTERM ? "terminated (SIGTERM)" : "interrupted";
    if (!leader(a)) {
      // Rank 0 says it for the job.
    } else if (a.flags.save_dir.empty()) {
      std::fprintf(stderr,
                   "strata train: %s after step %lld; nothing was saved (pass "
                   "--save-dir DIR to keep a checkpoint)\n",
                   how, static_cast<long long>(r.last_step));
    } else {
      std::fprintf(stderr, "strata train: %s after step %lld; resume with --resume %s\n", how,
                   static_cast<long long>(r.last_step), a.flags.save_dir.c_str());
    }
    return 128 + sig;  // 130 for SIGINT, 143 for SIGTERM, as a shell reports them
  }
  return 0;
}

}  // namespace

void add_train_command(CLI::App& app, int* exit_code) {
  auto* cmd = app.add_subcommand(
      "train", "Train a GPT-2 family model on text with the ds_config's ZeRO-Offload placement");
  auto f = std::make_shared<TrainFlags>();
  cmd->add_option("--model", f->model, "gpt2-tiny, gpt2, gpt2-medium, gpt2-large or gpt2-xl")
      ->required();
  cmd->add_option("--data", f->data,
                  "text: a file, a folder (recursively) or a glob, e.g. /usr/share/games/fortunes")
      ->required();
  cmd->add_option("--deepspeed_config", f->config_file, "the ds_config JSON file")->required();
  cmd->add_option("--steps", f->steps, "optimizer steps (default 100)")->type_name("INT");
  cmd->add_option("--device", f->device, "cpu (simulated device) or cuda (default cpu)")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->add_option("--seq-len", f->seq_len, "tokens per sequence (default: the model's positions)")
      ->type_name("INT");
  cmd->add_option("--gpu-mem", f->gpu_mem, "simulated device memory (default 8GiB)")
      ->type_name("SIZE");
  cmd->add_option("--eval-every", f->eval_every, "validation every N steps and at the end (50)")
      ->type_name("INT");
  cmd->add_option("--eval-batches", f->eval_batches, "validation batches per evaluation (8)")
      ->type_name("INT");
  cmd->add_option("--log-json", f->log_json, "write one JSON object per step to FILE");
  cmd->add_option("--trace", f->trace, "write a Chrome trace (chrome://tracing) to FILE");
  cmd->add_option("--seed", f->seed, "data order and weight initialisation (default 1337)")
      ->type_name("INT");
  auto* vocab = cmd->add_option("--vocab", f->vocab,
                                "GPT-2 BPE vocab.json (encoder.json): with --merges the data is "
                                "BPE tokens and the model's vocabulary is the file's");
  auto* merges =
      cmd->add_option("--merges", f->merges, "GPT-2 BPE merges.txt (vocab.bpe), with --vocab");
  vocab->needs(merges);
  merges->needs(vocab);
  cmd->add_option("--plot", f->plot,
                  "at the end, draw the loss curve into FILE.png (needs gnuplot)");
  cmd->add_option("--sample", f->sample_tokens,
                  "after training, print this many tokens generated by the model (0..100000, "
                  "default 0)")
      ->type_name("INT");
  cmd->add_option("--temperature", f->sample_temperature,
                  "sampling temperature for --sample, 0..10; 0 takes the most likely token (0.8)")
      ->type_name("FLOAT");
  auto* lr = cmd->add_option("--lr", f->lr,
                             "learning rate of the AdamW used when the ds_config has no "
                             "\"optimizer\" section (default 6e-4, GPT-2 small's)")
                 ->type_name("FLOAT");
  auto* wd = cmd->add_option("--weight-decay", f->weight_decay,
                             "weight decay of that AdamW, on every parameter (default 0.1)")
                 ->type_name("FLOAT");
  cmd->add_option("--save-every", f->save_every,
                  "save a checkpoint every N steps (needs --save-dir; also saved at the end)")
      ->type_name("INT");
  cmd->add_option("--save-dir", f->save_dir,
                  "checkpoint directory, written at the end, on Ctrl-C / SIGTERM and every "
                  "--save-every");
  cmd->add_option("--resume", f->resume,
                  "continue from the checkpoint in DIR (same model, config and data); --steps "
                  "stays the total");
  cmd->add_option("--init", f->init,
                  "start from the GPT-2 weights in FILE.safetensors (Hugging Face or strata "
                  "names, e.g. from `strata ckpt export`) instead of random ones");
  cmd->add_option("--nproc", f->nproc,
                  "train on N data-parallel ranks: start N local processes (torchrun's variables, "
                  "Gloo over loopback; 1: this process alone); under torchrun or Slurm leave it "
                  "out")
      ->type_name("INT");
  cmd->add_option("--comm-timeout", f->comm_timeout,
                  "seconds a rank waits in a collective or the rendezvous before failing, naming "
                  "the rank it waited for (300)")
      ->type_name("SECONDS");
  auto* daemon = cmd->add_option("--daemon", f->daemon_socket,
                                 "run the optimizer in stratad at SOCKET (default: "
                                 "$XDG_RUNTIME_DIR/strata/stratad.sock); needs --session")
                     ->expected(0, 1)
                     ->type_name("[SOCKET]");
  cmd->add_option("--session", f->session,
                  "the stratad session (with --daemon): a new name starts a run, the same name "
                  "again continues it from its last completed step; rank R of several uses "
                  "NAME.rankR (its slice of the model)");
  cmd->add_flag("--async-save", f->async_save,
                "write periodic checkpoints in the background (a host snapshot of ~14 bytes "
                "per parameter)");
  cmd->add_flag("--checkpoint-activations", f->checkpoint_activations,
                "keep only each block's input in forward and recompute the block in backward "
                "(less memory, same results, ~1/3 more compute)");
  cmd->callback([=] {
    f->lr_given = lr->count() > 0;
    f->weight_decay_given = wd->count() > 0;
    f->daemon = daemon->count() > 0;
    *exit_code = run_train(*f);
  });
}

}  // namespace strata::tools
