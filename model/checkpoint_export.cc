#include "model/checkpoint_export.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/file_util.h"
#include "core/safetensors.h"
#include "core/status.h"
#include "nlohmann/json.hpp"

namespace strata::model {

uint64_t ModelCheckpoint::tensor_file_bytes() const { return files.tensor_file_bytes(); }

absl::Status read_master(const ModelCheckpoint& c, size_t index, float* out) {
  return engine::read_checkpoint_range(c.files, index, /*kind=*/0, 0,
                                       c.files.whole.params[index].numel, out);
}

absl::StatusOr<ModelCheckpoint> open_model_checkpoint(const std::string& dir) {
  ModelCheckpoint c;
  STRATA_ASSIGN_OR_RETURN(c.files, engine::open_checkpoint_shards(dir));
  c.ck = c.files.whole;
  const engine::Checkpoint& ck = c.ck;
  if (!ck.user.is_object() || !ck.user.contains("model")) return c;
  auto cfg = gpt2_config_from_json(ck.user["model"]);
  if (!cfg.ok()) {
    return absl::DataLossError(absl::StrCat(ck.meta_path,
                                            ": user.model: ", std::string(cfg.status().message()),
                                            "; the checkpoint is damaged"));
  }
  // The table the mapping assumes must be the one the checkpoint holds.
  const std::vector<Gpt2WeightSlot> slots = gpt2_weight_slots(*cfg);
  for (size_t i = 0; i < std::max(slots.size(), ck.params.size()); ++i) {
    const engine::CheckpointParam* p = i < ck.params.size() ? &ck.params[i] : nullptr;
    const Gpt2WeightSlot* s = i < slots.size() ? &slots[i] : nullptr;
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
  return c;
}

absl::StatusOr<CheckpointExportResult> export_checkpoint(const std::string& dir,
                                                         const CheckpointExport& options) {
  STRATA_ASSIGN_OR_RETURN(const ModelCheckpoint c, open_model_checkpoint(dir));
  const engine::Checkpoint& ck = c.ck;
  const std::string& to = options.to;
  // The output replaces a regular file at most, and never one being read.
  STRATA_RETURN_IF_ERROR(check_output_path(to), "--to");
  std::vector<std::string> inputs = {ck.meta_path, ck.tensor_path};
  for (const engine::Checkpoint& s : c.files.shards) {
    inputs.push_back(s.meta_path);
    inputs.push_back(s.tensor_path);
  }
  STRATA_RETURN_IF_ERROR(check_output_is_not_input(to, inputs), "--to");
  const Gpt2Names names = options.names.value_or(c.gpt2 ? Gpt2Names::kHf : Gpt2Names::kStrata);
  if (names == Gpt2Names::kHf && !c.gpt2) {
    return absl::FailedPreconditionError(absl::StrCat(
        ck.meta_path,
        " records no GPT-2 model (user.model), so its tensors have no Hugging Face names; use "
        "--names strata"));
  }
  std::vector<Gpt2WeightSlot> slots;
  if (c.gpt2) slots = gpt2_weight_slots(*c.gpt2);

  const DType dtype = options.dtype;
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
  std::map<std::string, std::string> metadata = {
      {"format", "pt"},
      {"strata.names", names == Gpt2Names::kHf ? "hf" : "strata"},
      {"strata.steps", absl::StrCat(ck.steps)},
      {"strata.compute_dtype", std::string(dtype_name(ck.compute_dtype))}};
  if (ck.user.is_object()) {
    for (const auto& [k, v] : ck.user.items()) {
      metadata[absl::StrCat("strata.", k)] = v.is_string() ? v.get<std::string>() : v.dump();
    }
  }

  STRATA_ASSIGN_OR_RETURN(std::unique_ptr<safetensors::Writer> w,
                          safetensors::Writer::create(to, decls, metadata), "--to");
  std::vector<float> master, laid_out;
  std::vector<uint16_t> half;
  for (size_t i = 0; i < ck.params.size(); ++i) {
    const engine::CheckpointParam& p = ck.params[i];
    master.resize(p.numel);
    STRATA_RETURN_IF_ERROR(read_master(c, i, master.data()));
    const float* src = master.data();
    if (c.gpt2 && names == Gpt2Names::kHf && slots[i].transposed) {
      laid_out.resize(p.numel);
      gpt2_to_file_layout(slots[i], names, master.data(), laid_out.data());
      src = laid_out.data();
    }
    const std::string& out_name = decls[i].name;
    if (dtype == DType::kFloat32) {
      STRATA_RETURN_IF_ERROR(w->write_tensor(out_name, src, p.numel * sizeof(float)));
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
  const auto size = std::filesystem::file_size(to, ec);
  return CheckpointExportResult{.checkpoint = ck.dir,
                                .file = to,
                                .steps = ck.steps,
                                .names = names,
                                .tensors = ck.params.size(),
                                .params = ck.total_numel(),
                                .bytes = ec ? 0 : static_cast<uint64_t>(size)};
}

}  // namespace strata::model
