// model::Trainer, driven in C++ as a program linking strata would: gpt2-tiny
// on synthetic tokens (short sequences, the engine's default overlap mode),
// a few steps each. Evaluation and save cadence, the per-step JSON log, a
// stop request (from the sink, as a signal handler would), resuming bit for
// bit (also from a background save), SIGTERM through StopSignals, options
// refused before any step, and a ds_config without an "optimizer" section
// (the user's fixture) trained with the AdamW fill_missing_optimizer gives.
#include "model/trainer.h"

#include <signal.h>
#include <sys/stat.h>

#include <cmath>
#include <condition_variable>
#include <filesystem>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core/config/ds_config.h"
#include "core/file_util.h"
#include "engine/training_engine.h"
#include "gpu/sim_device.h"
#include "gtest/gtest.h"
#include "model/cpu/matmul.h"
#include "model/gpt2_config.h"
#include "model/gpt2_model.h"
#include "model/stop_signals.h"
#include "nlohmann/json.hpp"
#include "tests/cli_test_util.h"
#include "tests/test_ds_config.h"

namespace strata::model {
namespace {

using nlohmann::json;
using strata::testing::json_lines;
namespace fs = std::filesystem;

constexpr int64_t kB = 2, kT = 16;

// Rows of arithmetic progressions modulo 256: learnable and deterministic by
// batch index, so two runs see the same data.
class Progressions final : public TokenSource {
 public:
  void train_batch(int64_t index, int32_t* in, int32_t* out) override {
    fill(2 * index + shift, in, out);
  }
  void val_batch(int64_t index, int32_t* in, int32_t* out) override {
    fill(2 * index + 1 + shift, in, out);
  }
  int64_t shift = 0;  // another rank's data: other progressions

 private:
  static void fill(int64_t key, int32_t* in, int32_t* out) {
    for (int64_t r = 0; r < kB; ++r) {
      const int64_t start = (key * 37 + r * 11) % 256, stride = 1 + (key + r) % 5;
      for (int64_t i = 0; i < kT; ++i) {
        in[r * kT + i] = static_cast<int32_t>((start + i * stride) % 256);
        out[r * kT + i] = static_cast<int32_t>((start + (i + 1) * stride) % 256);
      }
    }
  }
};

// fp16 with dynamic loss scaling, clipping, AdamW on the host: the default
// (overlap) mode with its speculative steps and rollbacks.
constexpr char kConfig[] = R"({
  "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
  "gradient_clipping": 1.0,
  "fp16": {"enabled": true, "loss_scale": 0, "initial_scale_power": 8},
  "optimizer": {"type": "AdamW", "params": {"lr": 3e-3, "weight_decay": 0.01}},
  "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}})";

// A model and an engine on a simulated device, as strata train builds them.
struct Rig {
  explicit Rig(const config::DsConfig& cfg, bool expect_ok = true, int64_t data_shift = 0) {
    source.shift = data_shift;
    auto mc = gpt2_config_by_name("gpt2-tiny");
    EXPECT_TRUE(mc.ok()) << mc.status();
    mc->vocab_size = kGpt2ByteVocab;
    auto m = make_gpt2_model(
        {.config = *mc, .micro_batch = cfg.train_micro_batch_size_per_gpu, .seq_len = kT}, &source);
    EXPECT_TRUE(m.ok()) << m.status();
    if (!m.ok()) return;
    net = *std::move(m);
    engine::EngineOptions eo;
    eo.allow_buffered_io = true;
    auto e = engine::TrainingEngine::create(cfg, net.get(), &device, std::move(eo));
    if (expect_ok) EXPECT_TRUE(e.ok()) << e.status();
    status = e.status();
    if (e.ok()) eng = *std::move(e);
  }
  absl::Status status;
  Progressions source;
  gpu::SimDevice device;
  std::unique_ptr<engine::Model> net;
  std::unique_ptr<engine::TrainingEngine> eng;
};

// Records what the trainer reports; stops it after `stop_after` steps.
class Recorder final : public TrainerSink {
 public:
  void on_step(const TrainerStep& s) override {
    steps.push_back(s.stats.step);
    losses.push_back(s.stats.loss);
    if (trainer != nullptr && s.stats.step == stop_after) trainer->request_stop();
  }
  void on_evaluation(int64_t step, double v, int64_t, double) override {
    evaluations.push_back(step);
    EXPECT_TRUE(std::isfinite(v));
  }
  void on_save(int64_t step, const std::string&, bool background, double) override {
    saves.push_back(step);
    background_saves += background;
  }
  Trainer* trainer = nullptr;
  int64_t stop_after = -1;
  std::vector<int64_t> steps, evaluations, saves;
  std::vector<double> losses;
  int background_saves = 0;
};

class TrainerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { cpu::set_blas_threads(1); }
  testing::ScratchDir scratch_{"strata_trainer_test_"};
  const std::string dir_ = scratch_.path();
  const config::DsConfig cfg_ = testing::parse_test_config(kConfig);
};

TEST_F(TrainerTest, EvaluatesSavesAndLogsOnItsCadence) {
  Rig rig(cfg_);
  ASSERT_NE(rig.eng, nullptr);
  Recorder sink;
  auto trainer = Trainer::create(rig.eng.get(),
                                 {.steps = 5,
                                  .eval_every = 2,
                                  .eval_batches = 1,
                                  .save_dir = dir_ + "/ckpt",
                                  .save_every = 2,
                                  .log_json = dir_ + "/log.jsonl",
                                  .tokens_per_step = kB * kT},
                                 &sink);
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  const TrainerResult r = (*trainer)->run();
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_FALSE(r.stopped);
  EXPECT_EQ(r.start_step, 0);
  EXPECT_EQ(r.last_step, 5);
  EXPECT_EQ(r.steps_run, 5);
  EXPECT_EQ(sink.steps, (std::vector<int64_t>{1, 2, 3, 4, 5}));
  // Before the first step, every 2 steps and after the last.
  EXPECT_EQ(sink.evaluations, (std::vector<int64_t>{0, 2, 4, 5}));
  EXPECT_EQ(sink.saves, (std::vector<int64_t>{2, 4, 5}));
  EXPECT_EQ(r.saved_step, 5);
  EXPECT_EQ(r.train_losses.size(), 5u);
  EXPECT_EQ(r.val_losses.size(), 4u);
  ASSERT_TRUE(r.first_loss && r.last_loss && r.first_val_loss && r.last_val_loss);
  EXPECT_EQ(*r.last_loss, sink.losses.back());
  EXPECT_GT(r.tokens_per_second, 0);
  EXPECT_NEAR(*r.first_val_loss, std::log(256.0), 0.3);

  const std::vector<json> lines = json_lines(dir_ + "/log.jsonl");
  ASSERT_EQ(lines.size(), 5u);
  for (size_t i = 0; i < lines.size(); ++i) {
    ASSERT_TRUE(lines[i].is_object()) << "line " << i + 1;
    EXPECT_EQ(lines[i]["step"], static_cast<int>(i + 1));
    EXPECT_EQ(lines[i]["loss"].get<double>(), sink.losses[i]);
    EXPECT_EQ(lines[i].contains("val_loss"), i == 1 || i == 3 || i == 4) << lines[i].dump();
    // The host optimizer's bandwidth against the Adam-like stream measured once at create.
    EXPECT_GT(lines[i]["optimizer_bytes"].get<uint64_t>(), 0u) << lines[i].dump();
    EXPECT_GT(lines[i]["stream_gb_per_s"].get<double>(), 0) << lines[i].dump();
    EXPECT_EQ(lines[i]["stream_gb_per_s"], lines[0]["stream_gb_per_s"]);
    const double gbs = lines[i]["optimizer_gb_per_s"].get<double>();
    EXPECT_NEAR(gbs,
                lines[i]["optimizer_bytes"].get<double>() /
                    lines[i]["optimizer_seconds"].get<double>() / 1e9,
                1e-9 * gbs);
    EXPECT_DOUBLE_EQ(lines[i]["optimizer_stream_ratio"].get<double>(),
                     gbs / lines[i]["stream_gb_per_s"].get<double>());
  }
  auto user = engine::TrainingEngine::read_checkpoint_user_metadata(dir_ + "/ckpt");
  EXPECT_TRUE(user.ok()) << user.status();
}

// A stop request (here from the sink; StopSignals makes it from SIGINT or
// SIGTERM) lets the step finish, skips its evaluation and saves it.
TEST_F(TrainerTest, StopRequestEndsTheRunAfterTheStepAndSaves) {
  Rig rig(cfg_);
  ASSERT_NE(rig.eng, nullptr);
  Recorder sink;
  sink.stop_after = 2;
  auto trainer = Trainer::create(rig.eng.get(),
                                 {.steps = 100,
                                  .eval_every = 2,
                                  .eval_batches = 1,
                                  .save_dir = dir_ + "/ckpt",
                                  .log_json = dir_ + "/log.jsonl"},
                                 &sink);
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  sink.trainer = trainer->get();
  const TrainerResult r = (*trainer)->run();
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.last_step, 2);
  EXPECT_EQ(sink.steps, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(sink.evaluations, (std::vector<int64_t>{0}));
  EXPECT_EQ(sink.saves, (std::vector<int64_t>{2}));
  const std::vector<json> lines = json_lines(dir_ + "/log.jsonl");
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_FALSE(lines[1].contains("val_loss"));

  // The saved step is where a new engine continues.
  Rig again(cfg_);
  ASSERT_NE(again.eng, nullptr);
  auto next = Trainer::create(again.eng.get(), {.steps = 3, .eval_batches = 1});
  ASSERT_TRUE(next.ok()) << next.status();
  ASSERT_TRUE((*next)->resume(dir_ + "/ckpt").ok());
  EXPECT_EQ(again.eng->steps(), 2);

  // Requested before run(): no step, no evaluation.
  (*next)->request_stop();
  const TrainerResult none = (*next)->run();
  EXPECT_TRUE(none.status.ok()) << none.status;
  EXPECT_TRUE(none.stopped);
  EXPECT_EQ(none.steps_run, 0);
  EXPECT_TRUE(none.val_losses.empty());
  EXPECT_EQ(again.eng->steps(), 2);
}

// The collectives of `world` ranks living in threads of this process: only
// all_reduce_host, the one the Trainer calls (sum or max, elementwise).
class ThreadRanks {
 public:
  explicit ThreadRanks(int world) : world_(world) {}

  class Comm final : public dist::Communicator {
   public:
    Comm(ThreadRanks* all, int rank) : all_(all), rank_(rank) {}
    int rank() const override { return rank_; }
    int world_size() const override { return all_->world_; }
    dist::Backend backend() const override { return dist::Backend::kGloo; }
    bool device_memory() const override { return false; }
    absl::Status all_reduce(void*, uint64_t, DType, dist::ReduceOp) override { return none(); }
    absl::Status all_gather(const void*, void*, std::span<const uint64_t>, DType) override {
      return none();
    }
    absl::Status reduce_scatter(const void*, void*, std::span<const uint64_t>, DType,
                                dist::ReduceOp) override {
      return none();
    }
    absl::Status broadcast(void*, uint64_t, DType, int) override { return none(); }
    absl::Status barrier() override { return none(); }
    absl::Status all_reduce_host(std::span<double> data, dist::ReduceOp op) override {
      ++all_->calls_[rank_];
      return all_->reduce(data, op);
    }

   private:
    static absl::Status none() { return absl::UnimplementedError("not in this test"); }
    ThreadRanks* all_;
    int rank_;
  };

  Comm comm(int rank) { return Comm(this, rank); }
  int calls(int rank) const { return calls_[rank]; }

 private:
  // Every rank adds its values; the last one in publishes the result.
  absl::Status reduce(std::span<double> data, dist::ReduceOp op) {
    std::unique_lock lock(mu_);
    const int64_t generation = generation_;
    if (arrived_ == 0)
      acc_.assign(data.begin(), data.end());
    else {
      if (acc_.size() != data.size()) return absl::InvalidArgumentError("sizes differ");
      for (size_t i = 0; i < data.size(); ++i) {
        acc_[i] = op == dist::ReduceOp::kSum ? acc_[i] + data[i] : std::max(acc_[i], data[i]);
      }
    }
    if (++arrived_ == world_) {
      result_ = acc_;
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
    } else {
      cv_.wait(lock, [&] { return generation_ != generation; });
    }
    std::copy(result_.begin(), result_.end(), data.begin());
    return absl::OkStatus();
  }

  int world_;
  std::mutex mu_;
  std::condition_variable cv_;
  int arrived_ = 0;
  int64_t generation_ = 0;
  std::vector<double> acc_, result_;
  int calls_[8] = {};
};

// Data parallel: every rank reports the mean of the ranks' losses (each
// rank's own engine, on its own data, trains exactly as it would alone), the
// validation loss is the mean too, and a stop requested on one rank stops
// both after the same step.
TEST_F(TrainerTest, RanksReportTheMeanLossAndStopTogether) {
  constexpr int kWorld = 2;
  // Each rank's data alone, as a reference.
  std::vector<std::vector<double>> alone(kWorld), alone_val(kWorld);
  for (int r = 0; r < kWorld; ++r) {
    Rig rig(cfg_, true, /*data_shift=*/r * 1000);
    ASSERT_NE(rig.eng, nullptr);
    Recorder sink;
    auto t =
        Trainer::create(rig.eng.get(), {.steps = 3, .eval_every = 3, .eval_batches = 1}, &sink);
    ASSERT_TRUE(t.ok()) << t.status();
    const TrainerResult res = (*t)->run();
    ASSERT_TRUE(res.status.ok()) << res.status;
    alone[r] = sink.losses;
    for (const auto& [step, v] : res.val_losses) alone_val[r].push_back(v);
  }
  ASSERT_NE(alone[0], alone[1]);

  ThreadRanks ranks(kWorld);
  std::vector<Recorder> sinks(kWorld);
  std::vector<TrainerResult> results(kWorld);
  sinks[1].stop_after = 3;  // rank 1 alone asks to stop after step 3 of 5
  std::vector<std::thread> threads;
  for (int r = 0; r < kWorld; ++r) {
    threads.emplace_back([&, r] {
      Rig rig(cfg_, true, r * 1000);
      ASSERT_NE(rig.eng, nullptr);
      ThreadRanks::Comm comm = ranks.comm(r);
      auto t = Trainer::create(rig.eng.get(),
                               {.steps = 5, .eval_every = 3, .eval_batches = 1, .comm = &comm},
                               &sinks[r]);
      ASSERT_TRUE(t.ok()) << t.status();
      sinks[r].trainer = t->get();
      results[r] = (*t)->run();
    });
  }
  for (std::thread& t : threads) t.join();
  for (int r = 0; r < kWorld; ++r) {
    SCOPED_TRACE(r);
    ASSERT_TRUE(results[r].status.ok()) << results[r].status;
    EXPECT_TRUE(results[r].stopped);
    EXPECT_EQ(results[r].last_step, 3);
    ASSERT_EQ(sinks[r].losses.size(), 3u);
    for (size_t i = 0; i < 3; ++i) {
      EXPECT_DOUBLE_EQ(sinks[r].losses[i], (alone[0][i] + alone[1][i]) / 2) << "step " << i + 1;
    }
    // Evaluated before step 1 only: the stop after step 3 skips its evaluation.
    ASSERT_EQ(results[r].val_losses.size(), 1u);
    EXPECT_DOUBLE_EQ(results[r].val_losses[0].second, (alone_val[0][0] + alone_val[1][0]) / 2);
    // A stop agreed before the first evaluation, its loss, a loss and a stop per step.
    EXPECT_EQ(ranks.calls(r), 1 + 1 + 2 * 3);
  }
}

// SIGTERM, as `docker stop` sends it, through StopSignals: the same stop as
// request_stop; SIGPIPE, from a reader gone away, is ignored meanwhile.
class RaiseAt final : public TrainerSink {
 public:
  void on_step(const TrainerStep& s) override {
    if (s.stats.step == 1) {
      ::raise(SIGPIPE);
      ::raise(SIGTERM);
    }
  }
};

TEST_F(TrainerTest, SigtermThroughStopSignalsStopsTheRun) {
  Rig rig(cfg_);
  ASSERT_NE(rig.eng, nullptr);
  RaiseAt sink;
  auto trainer = Trainer::create(rig.eng.get(), {.steps = 50, .eval_batches = 1}, &sink);
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  {
    StopSignals signals;
    signals.route_to(trainer->get());
    const TrainerResult r = (*trainer)->run();
    EXPECT_TRUE(r.status.ok()) << r.status;
    EXPECT_TRUE(r.stopped);
    EXPECT_EQ(r.steps_run, 1);
    EXPECT_EQ(signals.received(), SIGTERM);
  }
  // The dispositions from before are back (gtest's: the default).
  struct sigaction now {};
  ::sigaction(SIGPIPE, nullptr, &now);
  EXPECT_EQ(now.sa_handler, SIG_DFL);
  ::sigaction(SIGTERM, nullptr, &now);
  EXPECT_EQ(now.sa_handler, SIG_DFL);
}

// 4 steps straight through against 2 steps saved (in the background every
// step) and resumed on a new model and engine: steps 3 and
// 4 have the same losses, bit for bit, and so has the final evaluation.
TEST_F(TrainerTest, ResumeContinuesBitForBit) {
  Rig ref_rig(cfg_);
  ASSERT_NE(ref_rig.eng, nullptr);
  Recorder ref;
  auto full =
      Trainer::create(ref_rig.eng.get(), {.steps = 4, .eval_every = 4, .eval_batches = 2}, &ref);
  ASSERT_TRUE(full.ok()) << full.status();
  const TrainerResult want = (*full)->run();
  ASSERT_TRUE(want.status.ok()) << want.status;
  ASSERT_EQ(ref.losses.size(), 4u);

  {
    Rig rig(cfg_);
    ASSERT_NE(rig.eng, nullptr);
    Recorder sink;
    auto part = Trainer::create(rig.eng.get(),
                                {.steps = 2,
                                 .eval_every = 4,
                                 .eval_batches = 2,
                                 .save_dir = dir_ + "/ckpt",
                                 .save_every = 1,
                                 .async_save = true},
                                &sink);
    ASSERT_TRUE(part.ok()) << part.status();
    const TrainerResult r = (*part)->run();
    ASSERT_TRUE(r.status.ok()) << r.status;
    // Both in the background; the last is waited for before run() returns.
    EXPECT_EQ(sink.saves, (std::vector<int64_t>{1, 2}));
    EXPECT_EQ(sink.background_saves, 2);
    EXPECT_EQ(sink.losses, std::vector<double>(ref.losses.begin(), ref.losses.begin() + 2));
  }

  Rig rig(cfg_);
  ASSERT_NE(rig.eng, nullptr);
  Recorder sink;
  auto resumed =
      Trainer::create(rig.eng.get(), {.steps = 4, .eval_every = 4, .eval_batches = 2}, &sink);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  ASSERT_TRUE((*resumed)->resume(dir_ + "/ckpt").ok());
  const TrainerResult got = (*resumed)->run();
  ASSERT_TRUE(got.status.ok()) << got.status;
  EXPECT_EQ(got.start_step, 2);
  EXPECT_EQ(sink.steps, (std::vector<int64_t>{3, 4}));
  ASSERT_EQ(sink.losses.size(), 2u);
  EXPECT_EQ(sink.losses[0], ref.losses[2]);
  EXPECT_EQ(sink.losses[1], ref.losses[3]);
  ASSERT_TRUE(got.last_val_loss && want.last_val_loss);
  EXPECT_EQ(*got.last_val_loss, *want.last_val_loss);

  EXPECT_FALSE((*resumed)->resume(dir_ + "/missing").ok());
}

// Everything create() can check is refused before a step runs or a file is
// written.
TEST_F(TrainerTest, RefusesOptionsThatCannotRunBeforeAnyStep) {
  Rig rig(cfg_);
  ASSERT_NE(rig.eng, nullptr);
  const std::string file = scratch_.write("a_file", "x");
  auto refused = [&](TrainerOptions o, const std::string& what) {
    auto t = Trainer::create(rig.eng.get(), o);
    ASSERT_FALSE(t.ok()) << what;
    EXPECT_NE(std::string(t.status().message()).find(what), std::string::npos) << t.status();
  };
  refused({.steps = 0}, "--steps 0");
  refused({.eval_every = 0}, "--eval-every 0");
  refused({.eval_batches = 0}, "--eval-batches 0");
  refused({.save_every = 2}, "--save-every needs --save-dir");
  // A folder cannot be made under a regular file, nor can a file be a folder.
  refused({.save_dir = file + "/ckpt"}, "--save-dir " + file + "/ckpt");
  refused({.save_dir = file}, "is not a folder");
  refused({.log_json = dir_}, "--log-json " + dir_ + ": is a folder");
  refused({.log_json = dir_ + "/no/such/log.jsonl"}, dir_ + "/no/such does not exist");
  // A FIFO would block the open forever; a device would be written into.
  ASSERT_EQ(::mkfifo((dir_ + "/fifo").c_str(), 0600), 0);
  refused({.log_json = dir_ + "/fifo"}, "is a FIFO");
  refused({.log_json = "/dev/null"}, "is a device");
  // A folder of the user's files is never a checkpoint to replace.
  const std::string mine = scratch_.write("mine/notes.txt", "keep me");
  refused({.save_dir = dir_ + "/mine"}, "--save-dir");
  EXPECT_TRUE(fs::exists(mine));
  EXPECT_EQ(rig.eng->steps(), 0);
  EXPECT_FALSE(fs::exists(file + "/ckpt"));

  // Missing folders of a checkpoint are made on save; an existing one is fine.
  EXPECT_TRUE(Trainer::create(rig.eng.get(), {.save_dir = dir_ + "/new/deeper/ckpt"}).ok());
  EXPECT_TRUE(check_output_destination(dir_, "--save-dir", true).ok());
  EXPECT_TRUE(check_output_destination(dir_ + "/log.jsonl", "--log-json", false).ok());
  EXPECT_TRUE(check_output_destination("relative.jsonl", "--log-json", false).ok());
}

// The user's own ds_config (its train.py builds the optimizer) has no
// "optimizer": the engine refuses it as it is; with fill_missing_optimizer
// it trains with AdamW at the given rate and decay. A config with an
// optimizer keeps its own.
TEST_F(TrainerTest, ConfigWithoutOptimizerTrainsWithAdamWFromTheCaller) {
  std::vector<std::string> warnings;
  auto fixture = config::load_ds_config(
      std::string(STRATA_FIXTURES_DIR) + "/ds_config_gpt2_rtx5090.json", &warnings);
  ASSERT_TRUE(fixture.ok()) << fixture.status();
  config::DsConfig cfg = *fixture;
  ASSERT_EQ(cfg.optimizer.type, config::OptimizerType::kNone);
  EXPECT_NE(Rig(cfg, /*expect_ok=*/false).status.message().find("no \"optimizer\" section"),
            std::string::npos);

  EXPECT_TRUE(fill_missing_optimizer(&cfg, 6e-4, 0.1));
  EXPECT_EQ(cfg.optimizer.type, config::OptimizerType::kAdamW);
  EXPECT_EQ(cfg.optimizer.lr, 6e-4);
  EXPECT_EQ(cfg.optimizer.weight_decay, 0.1);
  EXPECT_EQ(cfg.optimizer.betas, (std::array<double, 2>{0.9, 0.999}));
  EXPECT_EQ(cfg.optimizer.eps, 1e-8);
  Rig rig(cfg);
  ASSERT_NE(rig.eng, nullptr);
  auto trainer = Trainer::create(rig.eng.get(), {.steps = 2, .eval_every = 2, .eval_batches = 1});
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  const TrainerResult r = (*trainer)->run();
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.steps_run, 2);
  EXPECT_FALSE(fill_missing_optimizer(&cfg, 1.0, 0.5));
  EXPECT_EQ(cfg.optimizer.lr, 6e-4);
  config::DsConfig own = cfg_;
  EXPECT_FALSE(fill_missing_optimizer(&own, 1.0, 0.5));
  EXPECT_EQ(own, cfg_);
}

}  // namespace
}  // namespace strata::model
