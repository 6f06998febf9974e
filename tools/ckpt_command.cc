// strata ckpt info CKPT_DIR [--json]
// strata ckpt export CKPT_DIR --to FILE.safetensors [--dtype fp32|bf16|fp16]
//                   [--names hf|strata] [--json]
// Reads checkpoints that `strata train --save-dir` writes through the engine's
// one reader (engine/checkpoint_format.h: DIR/meta.json and DIR/tensors.bin,
// or DIR.old when a save was interrupted between its renames); this file only
// prints.
//
// info: steps, compute dtype, the model and tokenizer the run recorded,
// tensor count and bytes, from meta.json checked against tensors.bin's size
// (no checksum is verified).
//
// export: writes the fp32 master weights as a safetensors file (--to must be
// a new path or a regular file that is not one of the checkpoint's), one tensor at
// a time (one tensor in memory at once): read from tensors.bin, checked
// against its recorded xxh3 (a mismatch fails naming the tensor, and no file
// is left behind), rearranged to the target layout, converted to --dtype.
// Names: a checkpoint that records a GPT-2 "model" gets Hugging Face GPT-2
// names and layouts by default (model/gpt2_weights.h), loadable by
// transformers' GPT2Model and by `strata train --init`; otherwise, or with
// --names strata, strata's own names "layer{l}.{param}" (GPT-2 tensors keep
// their 2-D shapes, other models' tensors are flat). __metadata__ carries
// "format": "pt" and the run's description under "strata.*" keys.
#include <cinttypes>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/dtype.h"
#include "core/file_util.h"
#include "core/safetensors.h"
#include "core/status.h"
#include "engine/checkpoint_format.h"
#include "model/gpt2_config.h"
#include "model/gpt2_weights.h"
#include "tools/cli_util.h"
#include "tools/commands.h"

namespace strata::tools {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// A checkpoint as the engine's reader gives it (engine/checkpoint_format.h)
// and, when it records one, the GPT-2 model whose layout export follows.
struct Checkpoint {
  engine::Checkpoint ck;
  std::optional<model::Gpt2Config> gpt2;
};

absl::StatusOr<Checkpoint> open_checkpoint(const std::string& dir) {
  Checkpoint c;
  STRATA_ASSIGN_OR_RETURN(c.ck, engine::read_checkpoint(dir));
  const engine::Checkpoint& ck = c.ck;
  if (ck.user.is_object() && ck.user.contains("model")) {
    auto cfg = model::gpt2_config_from_json(ck.user["model"]);
    if (!cfg.ok()) {
      return absl::DataLossError(absl::StrCat(ck.meta_path,
                                              ": user.model: ", std::string(cfg.status().message()),
                                              "; the checkpoint is damaged"));
    }
    // The table the mapping assumes must be the one the checkpoint holds.
    const std::vector<model::Gpt2WeightSlot> slots = model::gpt2_weight_slots(*cfg);
    for (size_t i = 0; i < std::max(slots.size(), ck.params.size()); ++i) {
      const engine::CheckpointParam* p = i < ck.params.size() ? &ck.params[i] : nullptr;
      const model::Gpt2WeightSlot* s = i < slots.size() ? &slots[i] : nullptr;
      if (p == nullptr || s == nullptr || p->layer != s->layer || p->param != s->param ||
          p->name != s->strata_param || p->numel != s->numel()) {
        return absl::DataLossError(absl::StrCat(
            ck.meta_path, ": parameter ", i, " is ",
            p ? absl::StrCat("layer", p->layer, ".", p->name, " (", p->numel, " elements)")
              : std::string("missing"),
            " but the recorded model ", cfg->name, " has ",
            s ? absl::StrCat(s->strata_name(), " (", s->numel(), " elements)")
              : std::string("no more parameters"),
            "; the checkpoint is damaged"));
      }
    }
    c.gpt2 = *cfg;
  }
  return c;
}

json info_json(const Checkpoint& c) {
  const engine::Checkpoint& ck = c.ck;
  json j = {{"checkpoint", ck.dir},
            {"steps", ck.steps},
            {"optimizer_steps", ck.optimizer_steps},
            {"compute_dtype", std::string(dtype_name(ck.compute_dtype))},
            {"loss_scaler", ck.loss_scaler.has_value()},
            {"tensors", ck.params.size()},
            {"params", ck.total_numel()},
            {"tensor_file", ck.tensor_path},
            {"tensor_file_bytes", ck.tensor_file_bytes},
            {"model", ck.user.is_object() && ck.user.contains("model") ? ck.user["model"] : json()},
            {"tokenizer",
             ck.user.is_object() && ck.user.contains("tokenizer") ? ck.user["tokenizer"] : json()},
            {"train_seq_len", ck.user.is_object() && ck.user.contains("train_seq_len")
                                  ? ck.user["train_seq_len"]
                                  : json()}};
  return j;
}

int run_info(const std::string& dir, bool as_json) {
  auto c = open_checkpoint(dir);
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
  std::fprintf(stderr, "bytes        %s in %s (master, Adam moments, compute copy)\n",
               format_bytes(static_cast<double>(ck.tensor_file_bytes)).c_str(),
               ck.tensor_path.c_str());
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
  STRATA_ASSIGN_OR_RETURN(const Checkpoint c, open_checkpoint(a.dir));
  const engine::Checkpoint& ck = c.ck;
  STRATA_ASSIGN_OR_RETURN(const DType dtype, parse_dtype(a.dtype), "--dtype");
  // The output replaces a regular file at most, and never one being read.
  STRATA_RETURN_IF_ERROR(check_output_path(a.to), "--to");
  STRATA_RETURN_IF_ERROR(check_output_is_not_input(a.to, {ck.meta_path, ck.tensor_path}), "--to");
  const std::string names_flag = a.names.empty() ? (c.gpt2 ? "hf" : "strata") : a.names;
  if (names_flag == "hf" && !c.gpt2) {
    return absl::FailedPreconditionError(absl::StrCat(
        ck.meta_path,
        " records no GPT-2 model (user.model), so its tensors have no Hugging Face names; use "
        "--names strata"));
  }
  const model::Gpt2Names names =
      names_flag == "hf" ? model::Gpt2Names::kHf : model::Gpt2Names::kStrata;
  std::vector<model::Gpt2WeightSlot> slots;
  if (c.gpt2) slots = model::gpt2_weight_slots(*c.gpt2);

  const safetensors::Dtype file_dtype = dtype == DType::kFloat32    ? safetensors::Dtype::kF32
                                        : dtype == DType::kBFloat16 ? safetensors::Dtype::kBF16
                                                                    : safetensors::Dtype::kF16;
  std::vector<safetensors::TensorDecl> decls;
  for (size_t i = 0; i < ck.params.size(); ++i) {
    const engine::CheckpointParam& p = ck.params[i];
    if (c.gpt2) {
      decls.push_back({slots[i].file_name(names), file_dtype, slots[i].file_shape(names)});
    } else {
      decls.push_back({absl::StrCat("layer", p.layer, ".", p.name),
                       file_dtype,
                       {static_cast<int64_t>(p.numel)}});
    }
  }
  const std::string compute_dtype(dtype_name(ck.compute_dtype));
  std::map<std::string, std::string> metadata = {{"format", "pt"},
                                                 {"strata.names", names_flag},
                                                 {"strata.steps", absl::StrCat(ck.steps)},
                                                 {"strata.compute_dtype", compute_dtype}};
  if (ck.user.is_object()) {
    for (const auto& [k, v] : ck.user.items()) {
      metadata[absl::StrCat("strata.", k)] = v.is_string() ? v.get<std::string>() : v.dump();
    }
  }

  STRATA_ASSIGN_OR_RETURN(std::unique_ptr<safetensors::Writer> w,
                          safetensors::Writer::create(a.to, decls, metadata), "--to");
  std::vector<float> master, laid_out;
  std::vector<uint16_t> half;
  for (size_t i = 0; i < ck.params.size(); ++i) {
    const engine::CheckpointParam& p = ck.params[i];
    const engine::CheckpointTensor& t = p.tensors[0];  // the fp32 master
    master.resize(p.numel);
    STRATA_RETURN_IF_ERROR(engine::read_checkpoint_tensor(
        ck, t, absl::StrCat("layer", p.layer, ".", p.name), master.data()));
    const float* src = master.data();
    if (c.gpt2 && names == model::Gpt2Names::kHf && slots[i].transposed) {
      laid_out.resize(p.numel);
      model::gpt2_to_file_layout(slots[i], names, master.data(), laid_out.data());
      src = laid_out.data();
    }
    const std::string& out_name = decls[i].name;
    if (dtype == DType::kFloat32) {
      STRATA_RETURN_IF_ERROR(w->write_tensor(out_name, src, t.bytes));
    } else {
      half.resize(p.numel);
      if (dtype == DType::kBFloat16) {
        convert_fp32_to_bf16(src, half.data(), p.numel);
      } else {
        convert_fp32_to_fp16(src, half.data(), p.numel);
      }
      STRATA_RETURN_IF_ERROR(w->write_tensor(out_name, half.data(), p.numel * 2));
    }
  }
  STRATA_RETURN_IF_ERROR(w->finish());
  std::error_code ec;
  const auto size = fs::file_size(a.to, ec);
  return json{{"checkpoint", ck.dir},       {"file", a.to},
              {"steps", ck.steps},          {"dtype", std::string(dtype_name(dtype))},
              {"names", names_flag},        {"tensors", ck.params.size()},
              {"params", ck.total_numel()}, {"bytes", ec ? 0 : static_cast<uint64_t>(size)}};
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
