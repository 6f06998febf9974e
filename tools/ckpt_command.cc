// strata ckpt info CKPT_DIR [--json]
// strata ckpt export CKPT_DIR --to FILE.safetensors [--dtype fp32|bf16|fp16]
//                   [--names hf|strata] [--json]
// Flags and printing over model/checkpoint_export.h, which reads checkpoints
// that `strata train --save-dir` writes through the engine's one reader
// (engine/checkpoint_format.h: DIR/meta.json and DIR/tensors.bin, or DIR.old
// when a save was interrupted between its renames).
//
// info: steps, compute dtype, the model and tokenizer the run recorded,
// tensor count and bytes, from meta.json checked against tensors.bin's size
// (no checksum is verified).
//
// export: writes the fp32 master weights as a safetensors file (--to must be
// a new path or a regular file that is not one of the checkpoint's), one
// tensor at a time, checked against its recorded xxh3, converted to --dtype;
// Hugging Face GPT-2 names and layouts by default for a checkpoint that
// records a GPT-2 model (loadable by transformers' GPT2Model and by `strata
// train --init`), strata's own names otherwise or with --names strata.
#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/dtype.h"
#include "core/status.h"
#include "engine/checkpoint_format.h"
#include "model/checkpoint_export.h"
#include "model/gpt2_config.h"
#include "tools/cli_util.h"
#include "tools/commands.h"

namespace strata::tools {
namespace {

using nlohmann::json;

json info_json(const model::ModelCheckpoint& c) {
  const engine::Checkpoint& ck = c.ck;
  json j = {{"checkpoint", ck.dir},
            {"steps", ck.steps},
            {"optimizer_steps", ck.optimizer_steps},
            {"compute_dtype", std::string(dtype_name(ck.compute_dtype))},
            {"loss_scaler", ck.loss_scaler.has_value()},
            {"tensors", ck.params.size()},
            {"params", ck.total_numel()},
            {"tensor_file", ck.tensor_path},
            {"tensor_file_bytes", c.tensor_file_bytes()},
            {"ranks", c.files.world_size()},
            {"model", ck.user.is_object() && ck.user.contains("model") ? ck.user["model"] : json()},
            {"tokenizer",
             ck.user.is_object() && ck.user.contains("tokenizer") ? ck.user["tokenizer"] : json()},
            {"train_seq_len", ck.user.is_object() && ck.user.contains("train_seq_len")
                                  ? ck.user["train_seq_len"]
                                  : json()}};
  return j;
}

int run_info(const std::string& dir, bool as_json) {
  auto c = model::open_model_checkpoint(dir);
  if (!c.ok()) return report_status(c.status());
  const engine::Checkpoint& ck = c->ck;
  const json j = info_json(*c);
  if (as_json) {
    print_json(j);
    return 0;
  }
  std::fprintf(stderr, "checkpoint   %s\n", ck.dir.c_str());
  std::fprintf(stderr, "steps        %lld (%lld optimizer steps)\n",
               static_cast<long long>(ck.steps), static_cast<long long>(ck.optimizer_steps));
  std::fprintf(stderr, "dtype        %s compute, fp32 master%s\n",
               std::string(dtype_name(ck.compute_dtype)).c_str(),
               ck.loss_scaler ? ", dynamic loss scaler" : "");
  if (c->gpt2) {
    const model::Gpt2Config& m = *c->gpt2;
    std::fprintf(stderr,
                 "model        %s: %lld layers x %lld heads x %lld wide, vocab %lld, %lld "
                 "positions\n",
                 m.name.c_str(), static_cast<long long>(m.n_layer),
                 static_cast<long long>(m.n_head), static_cast<long long>(m.n_embd),
                 static_cast<long long>(m.vocab_size), static_cast<long long>(m.seq_len));
  } else {
    std::fprintf(stderr, "model        (not recorded)\n");
  }
  if (!j["tokenizer"].is_null()) {
    std::fprintf(stderr, "tokenizer    %s\n", j["tokenizer"].dump().c_str());
  }
  std::fprintf(stderr, "tensors      %zu parameters, %s elements\n", ck.params.size(),
               absl::StrFormat("%" PRIu64, ck.total_numel()).c_str());
  if (!c->files.sharded) {
    std::fprintf(stderr, "bytes        %s in %s (master, Adam moments, compute copy)\n",
                 format_bytes(static_cast<double>(ck.tensor_file_bytes)).c_str(),
                 ck.tensor_path.c_str());
  } else {
    std::fprintf(stderr,
                 "bytes        %s in %zu shards (one a data-parallel rank: its slice of master, "
                 "Adam moments and compute copy), %s/rank0..rank%zu\n",
                 format_bytes(static_cast<double>(c->tensor_file_bytes())).c_str(),
                 c->files.shards.size(), ck.dir.c_str(), c->files.shards.size() - 1);
  }
  return 0;
}

struct ExportArgs {
  std::string dir;
  std::string to;
  std::string dtype = "fp32";
  std::string names;  // "" = hf for GPT-2, strata otherwise
  bool json = false;
};

absl::StatusOr<json> export_checkpoint(const ExportArgs& a) {
  model::CheckpointExport options{.to = a.to};
  STRATA_ASSIGN_OR_RETURN(options.dtype, parse_dtype(a.dtype), "--dtype");
  if (!a.names.empty()) {
    options.names = a.names == "hf" ? model::Gpt2Names::kHf : model::Gpt2Names::kStrata;
  }
  STRATA_ASSIGN_OR_RETURN(const model::CheckpointExportResult r,
                          model::export_checkpoint(a.dir, options));
  return json{{"checkpoint", r.checkpoint},
              {"file", r.file},
              {"steps", r.steps},
              {"dtype", std::string(dtype_name(options.dtype))},
              {"names", r.names == model::Gpt2Names::kHf ? "hf" : "strata"},
              {"tensors", r.tensors},
              {"params", r.params},
              {"bytes", r.bytes}};
}

int run_export(const ExportArgs& a) {
  auto r = export_checkpoint(a);
  if (!r.ok()) return report_status(annotate(r.status(), absl::StrCat("exporting ", a.dir)));
  if (a.json) {
    print_json(*r);
  } else {
    const json& j = *r;
    std::fprintf(stderr,
                 "exported %zu tensors (%s params, %s names, %s) from %s at step %lld to %s (%s)\n",
                 j["tensors"].get<size_t>(),
                 absl::StrFormat("%" PRIu64, j["params"].get<uint64_t>()).c_str(),
                 j["names"].get<std::string>().c_str(), j["dtype"].get<std::string>().c_str(),
                 j["checkpoint"].get<std::string>().c_str(),
                 static_cast<long long>(j["steps"].get<int64_t>()), a.to.c_str(),
                 format_bytes(static_cast<double>(j["bytes"].get<uint64_t>())).c_str());
  }
  return 0;
}

}  // namespace

void add_ckpt_command(CLI::App& app, int* exit_code) {
  CLI::App* ckpt = app.add_subcommand("ckpt", "Inspect and export `strata train` checkpoints");
  ckpt->require_subcommand(1);

  auto info_dir = std::make_shared<std::string>();
  auto info_json_flag = std::make_shared<bool>(false);
  CLI::App* info = ckpt->add_subcommand("info", "Steps, dtype, model and size of a checkpoint");
  info->add_option("CKPT_DIR", *info_dir, "the directory `strata train --save-dir` wrote")
      ->required();
  info->add_flag("--json", *info_json_flag, "print one JSON object on stdout");
  info->callback([=] { *exit_code = run_info(*info_dir, *info_json_flag); });

  auto a = std::make_shared<ExportArgs>();
  CLI::App* exp = ckpt->add_subcommand(
      "export", "Write a checkpoint's fp32 master weights as a safetensors file");
  exp->add_option("CKPT_DIR", a->dir, "the directory `strata train --save-dir` wrote")->required();
  exp->add_option("--to", a->to, "the .safetensors file to write")->required();
  exp->add_option("--dtype", a->dtype, "fp32, bf16 or fp16 (default fp32)")
      ->check(CLI::IsMember({"fp32", "bf16", "fp16"}));
  exp->add_option("--names", a->names,
                  "hf (Hugging Face GPT-2 names and layouts; default for GPT-2) or strata "
                  "(layer{l}.{param}; default otherwise)")
      ->check(CLI::IsMember({"hf", "strata"}));
  exp->add_flag("--json", a->json, "print one JSON object on stdout");
  exp->callback([=] { *exit_code = run_export(*a); });
}

}  // namespace strata::tools
