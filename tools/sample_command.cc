// strata sample --ckpt DIR --prompt TEXT [--tokens N] [--temperature T]
//               [--seed S]
// Continues TEXT with a model that `strata train --save-dir DIR` saved: the
// checkpoint's user metadata (model shape, tokenizer, compute dtype,
// training sequence length) rebuilds the GPT-2 model and its tokenizer, an
// engine on a simulated device loads the weights, and the prompt plus the
// generated text go to stdout. Sampling looks back at most the training
// sequence length (the positions the model learnt).
//
// A malformed or out-of-range number (--tokens, --temperature, --seed; nan
// included) is a usage error: one "strata: error:" line, exit 2.
// Errors, each one "strata: error:" line and exit 1 before any sampling: a
// missing or foreign checkpoint, one without the model description `strata
// train` records, a BPE tokenizer whose files are gone or changed, a prompt
// with a byte the model's vocabulary lacks.
#include <algorithm>
#include <cstdio>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/config/ds_config.h"
#include "core/config/json_reader.h"
#include "core/dtype.h"
#include "core/parse.h"
#include "core/status.h"
#include "engine/checkpoint_format.h"
#include "engine/training_engine.h"
#include "gpu/sim_device.h"
#include "model/bpe_tokenizer.h"
#include "model/cpu/matmul.h"
#include "model/gpt2_config.h"
#include "model/gpt2_model.h"
#include "tools/cli_util.h"
#include "tools/commands.h"

namespace strata::tools {
namespace {

using nlohmann::json;

// The flags as typed; numbers are parsed by core/parse.h (parse_flags).
struct SampleFlags {
  std::string ckpt;
  std::string prompt;
  std::string tokens = "200";
  std::string temperature = "0.8";
  std::string seed = "1337";
};

struct SampleArgs {
  std::string ckpt;
  std::string prompt;
  int tokens = 0;
  double temperature = 0;
  uint64_t seed = 0;
};

// Usage errors (exit 2): a number that does not parse or is out of range.
absl::StatusOr<SampleArgs> parse_flags(const SampleFlags& f) {
  SampleArgs a{.ckpt = f.ckpt, .prompt = f.prompt};
  STRATA_ASSIGN_OR_RETURN(int64_t tokens, parse_int(f.tokens, "--tokens", 0, 100000));
  a.tokens = static_cast<int>(tokens);
  STRATA_ASSIGN_OR_RETURN(a.temperature,
                          parse_double(f.temperature, "--temperature", {.min = 0, .max = 10}));
  STRATA_ASSIGN_OR_RETURN(int64_t seed,
                          parse_int(f.seed, "--seed", 0, std::numeric_limits<int64_t>::max()));
  a.seed = static_cast<uint64_t>(seed);
  return a;
}

// Never called: sampling serves its own context to the model.
class NoData final : public model::TokenSource {
 public:
  void train_batch(int64_t, int32_t*, int32_t*) override {}
  void val_batch(int64_t, int32_t*, int32_t*) override {}
};

// What the checkpoint says about the run that saved it.
struct SavedRun {
  model::Gpt2Config model;
  std::optional<model::BpeTokenizer> bpe;  // none: byte tokens
  std::string dtype = "fp32";
  int64_t window = 0;  // positions to look back
};

absl::StatusOr<SavedRun> read_saved_run(const std::string& dir) {
  // A data-parallel checkpoint's metadata is its rank-0 shard's, the
  // shards checked against each other (the engine's load reads them all).
  STRATA_ASSIGN_OR_RETURN(const engine::CheckpointShards files, engine::open_checkpoint_shards(dir),
                          "--ckpt");
  const engine::Checkpoint& ck = files.whole;
  const json& user = ck.user;
  if (!user.is_object() || !user.contains("model")) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--ckpt ", dir,
        ": the checkpoint does not say which model it holds (no \"model\" in its metadata); "
        "sample needs a checkpoint saved by `strata train --save-dir`"));
  }
  SavedRun r;
  STRATA_ASSIGN_OR_RETURN(r.model, model::gpt2_config_from_json(user["model"]),
                          absl::StrCat("--ckpt ", dir));
  // Typed reads: a damaged meta.json is an error naming the key, never a throw.
  config::Diagnostics diag{ck.meta_path};
  config::ObjectReader u(user, "user", &diag);
  std::string kind = "bytes", vocab, merges;
  auto tok = u.child("tokenizer");
  if (!tok.ok()) return annotate(tok.status(), "--ckpt");
  if (tok->has_value()) {
    config::ObjectReader& t = **tok;
    STRATA_RETURN_IF_ERROR(t.read_enum("kind", &kind, {"bytes", "bpe"}), "--ckpt");
    STRATA_RETURN_IF_ERROR(t.read_string("vocab", &vocab), "--ckpt");
    STRATA_RETURN_IF_ERROR(t.read_string("merges", &merges), "--ckpt");
  }
  if (kind == "bpe") {
    STRATA_ASSIGN_OR_RETURN(
        r.bpe, model::BpeTokenizer::load(vocab, merges),
        absl::StrCat("--ckpt ", dir, " was trained with the BPE files ", vocab, " and ", merges));
    if (r.bpe->vocab_size() != r.model.vocab_size) {
      return absl::FailedPreconditionError(
          absl::StrCat("--ckpt ", dir, ": the model has a vocabulary of ", r.model.vocab_size,
                       " but ", vocab, " now gives ", r.bpe->vocab_size(),
                       "; the tokenizer files changed since training, restore them"));
    }
  }
  // The engine that loads the weights must run the dtype they were saved in.
  r.dtype = std::string(dtype_name(ck.compute_dtype));
  r.window = r.model.seq_len;
  STRATA_RETURN_IF_ERROR(u.read_int("train_seq_len", &r.window, 1, r.model.seq_len), "--ckpt");
  return r;
}

absl::StatusOr<std::vector<int32_t>> encode_prompt(const SavedRun& run, const std::string& prompt) {
  // An empty prompt starts the text after a newline.
  const std::string text = prompt.empty() ? std::string("\n") : prompt;
  if (run.bpe) return run.bpe->encode(text);
  std::vector<int32_t> ids(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    ids[i] = static_cast<unsigned char>(text[i]);
    if (ids[i] >= run.model.vocab_size) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "--prompt: byte 0x%02X at offset %zu is outside the model's vocabulary (%lld byte "
          "values); use text the model was trained on",
          ids[i], i, static_cast<long long>(run.model.vocab_size)));
    }
  }
  return ids;
}

std::string decode(const SavedRun& run, const std::vector<int32_t>& ids) {
  if (run.bpe) return run.bpe->decode(ids);
  std::string out(ids.size(), '\0');
  for (size_t i = 0; i < ids.size(); ++i) out[i] = static_cast<char>(ids[i]);
  return out;
}

absl::Status run_sample(const SampleArgs& a) {
  STRATA_ASSIGN_OR_RETURN(SavedRun run, read_saved_run(a.ckpt));
  STRATA_ASSIGN_OR_RETURN(std::vector<int32_t> context, encode_prompt(run, a.prompt));

  const std::string ds = absl::StrCat(
      R"({"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,)",
      R"( "optimizer": {"type": "AdamW", "params": {"lr": 0}},)", R"( "fp16": {"enabled": )",
      run.dtype == "fp16" ? "true" : "false", "},", R"( "bf16": {"enabled": )",
      run.dtype == "bf16" ? "true" : "false", "},", R"( "strata": {"overlap": "sync"}})");
  STRATA_ASSIGN_OR_RETURN(config::DsConfig cfg, config::parse_ds_config(ds, "sampling", nullptr));

  model::cpu::set_blas_threads(std::max(1, static_cast<int>(std::thread::hardware_concurrency())));
  NoData no_data;
  STRATA_ASSIGN_OR_RETURN(
      std::unique_ptr<engine::Model> net,
      model::make_gpt2_model({.config = run.model, .micro_batch = 1, .seq_len = run.window},
                             &no_data));
  gpu::SimDevice device;
  engine::EngineOptions eo;
  eo.allow_buffered_io = true;
  STRATA_ASSIGN_OR_RETURN(std::unique_ptr<engine::TrainingEngine> engine,
                          engine::TrainingEngine::create(cfg, net.get(), &device, std::move(eo)));
  STRATA_RETURN_IF_ERROR(
      engine->load_checkpoint(a.ckpt, engine::TrainingEngine::CheckpointUse::kWeights), "--ckpt");
  const std::string tokens = run.bpe ? absl::StrCat("BPE ", run.model.vocab_size) : "byte";
  std::fprintf(stderr, "strata sample: %s (%s, %s tokens) after %lld steps, temperature %.2f\n",
               run.model.name.c_str(), run.dtype.c_str(), tokens.c_str(),
               static_cast<long long>(engine->steps()), a.temperature);

  STRATA_ASSIGN_OR_RETURN(
      std::vector<int32_t> ids,
      model::sample_tokens(*engine, *net, context, a.tokens, a.temperature, a.seed));
  const std::string out = a.prompt + decode(run, ids);
  std::fwrite(out.data(), 1, out.size(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
  return absl::OkStatus();
}

}  // namespace

void add_sample_command(CLI::App& app, int* exit_code) {
  auto* cmd = app.add_subcommand(
      "sample", "Continue a prompt with a model saved by `strata train --save-dir`");
  auto f = std::make_shared<SampleFlags>();
  cmd->add_option("--ckpt", f->ckpt, "the checkpoint directory strata train saved")->required();
  cmd->add_option("--prompt", f->prompt, "the text to continue (empty: start a new line)")
      ->required();
  cmd->add_option("--tokens", f->tokens, "tokens to generate, 0..100000 (default 200)")
      ->type_name("INT");
  cmd->add_option("--temperature", f->temperature,
                  "0..10: 0 takes the most likely token; higher is more varied (default 0.8)")
      ->type_name("FLOAT");
  cmd->add_option("--seed", f->seed, "sampling seed (default 1337)")->type_name("INT");
  cmd->callback([=] {
    auto a = parse_flags(*f);
    if (!a.ok()) {
      report_status(a.status());
      *exit_code = 2;  // usage
      return;
    }
    *exit_code = report_status(run_sample(*a));
  });
}

}  // namespace strata::tools
