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
#include "engine/zero_partition.h"
#include "nlohmann/json.hpp"

namespace strata::model {

namespace {

// The world size zero.json records (the one key export needs of it).
absl::StatusOr<int> shard_count(const std::string& dir) {
  const std::string path = (std::filesystem::path(dir) / "zero.json").string();
  STRATA_ASSIGN_OR_RETURN(const std::string text, read_file(path));
  const nlohmann::json zero = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  const nlohmann::json ws =
      zero.is_object() ? zero.value("world_size", nlohmann::json()) : nlohmann::json();
  if (!ws.is_number_integer() || ws.get<int64_t>() < 1 || ws.get<int64_t>() > (1 << 20)) {
    return absl::DataLossError(
        absl::StrCat(path,
                     ": world_size must be an integer from 1 to 2^20; the checkpoint is "
                     "damaged"));
  }
  return ws.get<int>();
}

// Reads every shard, checks they agree (same step, same parameters, rank
// r's slice in shard r) and sets c->ck to the whole model's table.
absl::Status read_shards(const std::string& dir, ModelCheckpoint* c) {
  STRATA_ASSIGN_OR_RETURN(const int world, shard_count(dir));
  for (int r = 0; r < world; ++r) {
    STRATA_ASSIGN_OR_RETURN(engine::Checkpoint shard,
                            engine::read_checkpoint(engine::checkpoint_shard_dir(dir, r)));
    c->shards.push_back(std::move(shard));
  }
  const engine::Checkpoint& first = c->shards[0];
  std::vector<uint64_t> whole(first.params.size(), 0);
  for (const engine::Checkpoint& s : c->shards) {
    if (s.steps != first.steps || s.params.size() != first.params.size()) {
      return absl::DataLossError(absl::StrCat("shard ", s.dir, " holds step ", s.steps, " and ",
                                              s.params.size(), " parameters, shard ", first.dir,
                                              " step ", first.steps, " and ", first.params.size(),
                                              "; the save did not finish: use another checkpoint"));
    }
    for (size_t i = 0; i < whole.size(); ++i) whole[i] += s.params[i].numel;
  }
  for (int r = 0; r < world; ++r) {
    const engine::Checkpoint& s = c->shards[r];
    for (size_t i = 0; i < whole.size(); ++i) {
      const engine::CheckpointParam& p = s.params[i];
      const engine::CheckpointParam& p0 = first.params[i];
      const uint64_t want = engine::partition_slice(whole[i], r, world).numel;
      if (p.layer != p0.layer || p.param != p0.param || p.name != p0.name || p.numel != want) {
        return absl::DataLossError(absl::StrCat(
            "shard ", s.dir, ": parameter ", i, " is layer", p.layer, ".", p.name, " with ",
            p.numel, " elements; rank ", r, " of ", world, " should hold ", want, " of layer",
            p0.layer, ".", p0.name, "'s ", whole[i], "; the checkpoint is damaged"));
      }
    }
  }
  c->ck = first;
  c->ck.dir = dir;
  for (size_t i = 0; i < whole.size(); ++i) c->ck.params[i].numel = whole[i];
  return absl::OkStatus();
}

}  // namespace

uint64_t ModelCheckpoint::tensor_file_bytes() const {
  if (shards.empty()) return ck.tensor_file_bytes;
  uint64_t bytes = 0;
  for (const engine::Checkpoint& s : shards) bytes += s.tensor_file_bytes;
  return bytes;
}

absl::Status read_master(const ModelCheckpoint& c, size_t index, float* out) {
  auto read = [&](const engine::Checkpoint& ck, float* dst) {
    const engine::CheckpointParam& p = ck.params[index];
    return engine::read_checkpoint_tensor(ck, p.tensors[0],
                                          absl::StrCat("layer", p.layer, ".", p.name), dst);
  };
  if (c.shards.empty()) return read(c.ck, out);
  // Rank order is element order (engine/zero_partition.h).
  for (const engine::Checkpoint& s : c.shards) {
    STRATA_RETURN_IF_ERROR(read(s, out));
    out += s.params[index].numel;
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelCheckpoint> open_model_checkpoint(const std::string& dir) {
  ModelCheckpoint c;
  if (engine::is_sharded_checkpoint(dir)) {
    STRATA_RETURN_IF_ERROR(read_shards(dir, &c));
  } else {
    STRATA_ASSIGN_OR_RETURN(c.ck, engine::read_checkpoint(dir));
  }
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
  for (const engine::Checkpoint& s : c.shards) {
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
