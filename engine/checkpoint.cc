// TrainingEngine::save_checkpoint / load_checkpoint (contract in
// training_engine.h).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/file_util.h"
#include "core/status.h"
#include "engine/training_engine.h"
#include "nlohmann/json.hpp"

namespace strata::engine {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using offload::Access;
using offload::TensorView;
using offload::Tier;

constexpr int kFormatVersion = 1;
constexpr const char* kMetaFile = "meta.json";
constexpr const char* kTensorFile = "tensors.bin";
constexpr const char* kKindNames[4] = {"master", "exp_avg", "exp_avg_sq", "compute"};

std::string hex64(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016" PRIx64, v);
  return buf;
}

absl::Status fsync_path(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno_status(errno, absl::StrCat("cannot open ", path, " to fsync it"));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) return errno_status(err, absl::StrCat("cannot fsync ", path));
  return absl::OkStatus();
}

// The parent directory of `dir` ("." for a relative name without one).
std::string parent_of(const std::string& dir) {
  const fs::path parent = fs::path(dir).parent_path();
  return parent.empty() ? std::string(".") : parent.string();
}

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

}  // namespace

absl::Status TrainingEngine::read_raw(offload::TensorId id, Tier tier, void* dst, uint64_t bytes) {
  STRATA_ASSIGN_OR_RETURN(TensorView v, store_->acquire(id, tier, Access::kRead));
  const absl::Status s = copy_out(v, tier, dst, bytes);
  const absl::Status r = store_->release(id, tier, /*dirty=*/false);
  STRATA_RETURN_IF_ERROR(s);
  return r;
}

absl::Status TrainingEngine::write_raw(offload::TensorId id, Tier tier, const void* src,
                                       uint64_t bytes) {
  STRATA_ASSIGN_OR_RETURN(TensorView v, store_->acquire(id, tier, Access::kWrite));
  const absl::Status s = copy_in(v, tier, src, bytes);
  // Dirty even on a failed copy: the copy's contents are unknown now.
  const absl::Status r = store_->release(id, tier, /*dirty=*/true);
  STRATA_RETURN_IF_ERROR(s);
  return r;
}

namespace {

// Writes one checkpoint directory: DIR.tmp-PID first (tensors.bin appended
// tensor by tensor, then meta.json), fsynced, then swapped in for DIR so that
// DIR or DIR.old holds a complete checkpoint at every point. Owns no engine
// state, so it can run on another thread.
class CheckpointWriter {
 public:
  static absl::StatusOr<std::unique_ptr<CheckpointWriter>> create(const std::string& dir_in) {
    std::string dir = dir_in;
    while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
    if (dir.empty()) return absl::InvalidArgumentError("save_checkpoint: empty directory name");
    std::unique_ptr<CheckpointWriter> w(new CheckpointWriter(dir));
    std::error_code ec;
    fs::remove_all(w->tmp_, ec);  // our own leftover from an earlier failed save
    if (!fs::create_directories(w->tmp_, ec) || ec) {
      return absl::FailedPreconditionError(absl::StrCat(
          "cannot create checkpoint directory ", w->tmp_, " (", ec ? ec.message() : "it exists",
          "); check that ", parent_of(dir), " is writable"));
    }
    w->fd_ = ::open(w->bin_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (w->fd_ < 0) {
      return w->fail(errno_status(errno, absl::StrCat("cannot create ", w->bin_path_)));
    }
    return w;
  }

  ~CheckpointWriter() {
    if (fd_ >= 0) ::close(fd_);
    if (!done_) {
      std::error_code ignored;
      fs::remove_all(tmp_, ignored);
    }
  }

  // Appends one tensor's bytes; returns its entry (offset, bytes, xxh3).
  absl::StatusOr<json> append(const void* data, uint64_t bytes) {
    absl::Status s = pwrite_all(fd_, data, bytes, offset_, bin_path_);
    if (!s.ok()) return fail(s);
    json entry = {{"offset", offset_}, {"bytes", bytes}, {"xxh3", hex64(XXH3_64bits(data, bytes))}};
    offset_ += bytes;
    return entry;
  }

  absl::Status finish(const json& meta) {
    if (::fsync(fd_) != 0) {
      return fail(errno_status(errno, absl::StrCat("cannot fsync ", bin_path_)));
    }
    ::close(fd_);
    fd_ = -1;
    absl::Status s = write_file_atomic((fs::path(tmp_) / kMetaFile).string(), meta.dump(2) + "\n");
    if (!s.ok()) return fail(s);
    s = fsync_path(tmp_);
    if (!s.ok()) return fail(s);

    // Swap in: DIR -> DIR.old, DIR.tmp -> DIR, drop DIR.old. A DIR.old
    // without a DIR is the only complete copy (a save killed between the
    // renames): it stays until the new DIR is in place.
    std::error_code ec;
    const bool had_previous = fs::exists(dir_, ec);
    if (had_previous) fs::remove_all(old_, ec);
    if (had_previous && ::rename(dir_.c_str(), old_.c_str()) != 0) {
      return fail(errno_status(
          errno, absl::StrCat("cannot move the previous checkpoint ", dir_, " to ", old_)));
    }
    if (::rename(tmp_.c_str(), dir_.c_str()) != 0) {
      const absl::Status err =
          errno_status(errno, absl::StrCat("cannot rename ", tmp_, " to ", dir_));
      if (had_previous) ::rename(old_.c_str(), dir_.c_str());
      return fail(err);
    }
    done_ = true;
    STRATA_RETURN_IF_ERROR(fsync_path(parent_of(dir_)), absl::StrCat("saving checkpoint ", dir_));
    fs::remove_all(old_, ec);
    return absl::OkStatus();
  }

  absl::Status fail(const absl::Status& s) const {
    return annotate(s, absl::StrCat("saving checkpoint ", dir_));
  }

 private:
  explicit CheckpointWriter(std::string dir)
      : dir_(std::move(dir)),
        tmp_(absl::StrCat(dir_, ".tmp-", ::getpid())),
        old_(dir_ + ".old"),
        bin_path_((fs::path(tmp_) / kTensorFile).string()) {}

  std::string dir_, tmp_, old_, bin_path_;
  int fd_ = -1;
  uint64_t offset_ = 0;
  bool done_ = false;
};

}  // namespace

absl::StatusOr<json> TrainingEngine::checkpoint_meta(
    const std::function<absl::StatusOr<json>(const void*, uint64_t)>& sink) {
  json tensors = json::array();
  std::vector<uint8_t> buf;
  for (int l = 0; l < static_cast<int>(layers_.size()); ++l) {
    for (int i = 0; i < static_cast<int>(layers_[l].size()); ++i) {
      const ParamIds& p = layers_[l][i];
      const offload::TensorId ids[4] = {p.master, p.exp_avg, p.exp_avg_sq, p.param};
      json entry = {{"layer", l}, {"param", i}, {"name", p.name}, {"numel", p.numel}};
      for (int k = 0; k < 4; ++k) {
        const bool compute = k == 3;
        const uint64_t bytes = p.numel * (compute ? dtype_size(dtype_) : 4);
        const Tier tier = compute ? param_tier(p) : opt_tier_;
        buf.resize(bytes);
        STRATA_RETURN_IF_ERROR(read_raw(ids[k], tier, buf.data(), bytes),
                               store_->spec(ids[k]).name);
        STRATA_ASSIGN_OR_RETURN(entry[kKindNames[k]], sink(buf.data(), bytes));
      }
      tensors.push_back(std::move(entry));
    }
  }
  json meta = {{"format", "strata-checkpoint"},
               {"format_version", kFormatVersion},
               {"compute_dtype", std::string(dtype_name(dtype_))},
               {"steps", steps_},
               {"optimizer_steps", adam_step_},
               {"micro_batches", micro_batches_},
               {"lr_schedule_iteration", schedule_->iteration()},
               {"tensor_file", kTensorFile},
               {"params", std::move(tensors)}};
  if (scaler_ != nullptr) {
    const LossScaler::State st = scaler_->state();
    meta["loss_scaler"] = {{"scale", st.scale},
                           {"hysteresis", st.hysteresis},
                           {"iteration", st.iteration},
                           {"last_overflow_iteration", st.last_overflow_iteration},
                           {"skipped", st.skipped}};
  }
  if (!user_meta_.is_null()) meta["user"] = user_meta_;
  return meta;
}

absl::Status TrainingEngine::save_checkpoint(const std::string& dir) {
  STRATA_RETURN_IF_ERROR(wait_for_checkpoint(), "an earlier asynchronous save");
  STRATA_RETURN_IF_ERROR(finish_pending_update());
  // Streams tensor by tensor: no more memory than the largest tensor.
  STRATA_ASSIGN_OR_RETURN(std::unique_ptr<CheckpointWriter> w, CheckpointWriter::create(dir));
  auto meta =
      checkpoint_meta([&](const void* data, uint64_t bytes) { return w->append(data, bytes); });
  if (!meta.ok()) return w->fail(meta.status());
  return w->finish(*meta);
}

absl::Status TrainingEngine::save_checkpoint_async(const std::string& dir) {
  STRATA_RETURN_IF_ERROR(wait_for_checkpoint(), "an earlier asynchronous save");
  STRATA_RETURN_IF_ERROR(finish_pending_update());
  // The snapshot: every tensor copied out now, between steps; the files are
  // written from it while training goes on.
  auto snapshot = std::make_shared<std::vector<uint8_t>>();
  uint64_t total = 0;
  for (const auto& ps : layers_) {
    for (const ParamIds& p : ps) total += p.numel * (12 + dtype_size(dtype_));
  }
  snapshot->reserve(total);
  STRATA_ASSIGN_OR_RETURN(json meta, checkpoint_meta([&](const void* data, uint64_t bytes) {
                            const uint64_t offset = snapshot->size();
                            const auto* p = static_cast<const uint8_t*>(data);
                            snapshot->insert(snapshot->end(), p, p + bytes);
                            return absl::StatusOr<json>(json{{"offset", offset}, {"bytes", bytes}});
                          }),
                          absl::StrCat("saving checkpoint ", dir));
  pending_save_ = std::async(std::launch::async, [dir, snapshot, meta = std::move(meta)]() mutable {
    STRATA_ASSIGN_OR_RETURN(std::unique_ptr<CheckpointWriter> w, CheckpointWriter::create(dir));
    // The same file as a streamed save: entries get their checksums here.
    for (json& entry : meta["params"]) {
      for (const char* kind : kKindNames) {
        json& e = entry[kind];
        const uint64_t offset = e["offset"].get<uint64_t>(), bytes = e["bytes"].get<uint64_t>();
        STRATA_ASSIGN_OR_RETURN(e, w->append(snapshot->data() + offset, bytes));
      }
    }
    snapshot.reset();
    return w->finish(meta);
  });
  return absl::OkStatus();
}

absl::Status TrainingEngine::wait_for_checkpoint() {
  if (!pending_save_.valid()) return absl::OkStatus();
  return pending_save_.get();
}

namespace {

// The checkpoint directory a load reads (DIR, or DIR.old when a save was
// interrupted between its renames) and its parsed meta.json.
struct CheckpointMeta {
  std::string dir;
  std::string meta_path;
  json meta;
};

absl::StatusOr<CheckpointMeta> read_meta(const std::string& dir_in) {
  CheckpointMeta cm;
  cm.dir = dir_in;
  std::string& dir = cm.dir;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  std::error_code ec;
  if (!fs::is_directory(dir, ec) && fs::is_directory(dir + ".old", ec)) dir += ".old";
  const std::string ctx = absl::StrCat("loading checkpoint ", dir);
  cm.meta_path = (fs::path(dir) / kMetaFile).string();
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrCat(ctx,
                                            ": no such directory; pass the directory a "
                                            "save wrote (it holds ",
                                            kMetaFile, " and ", kTensorFile, ")"));
  }
  STRATA_ASSIGN_OR_RETURN(std::string text, read_file(cm.meta_path), ctx);
  cm.meta = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (cm.meta.is_discarded() || !cm.meta.is_object() ||
      cm.meta.value("format", "") != "strata-checkpoint") {
    return absl::DataLossError(absl::StrCat(ctx, ": ", cm.meta_path,
                                            " is not a strata checkpoint's meta.json; the "
                                            "checkpoint is damaged or not a strata one"));
  }
  return cm;
}

}  // namespace

absl::StatusOr<json> TrainingEngine::read_checkpoint_user_metadata(const std::string& dir) {
  STRATA_ASSIGN_OR_RETURN(CheckpointMeta cm, read_meta(dir));
  auto it = cm.meta.find("user");
  return it == cm.meta.end() ? json() : *it;
}

absl::Status TrainingEngine::load_checkpoint(const std::string& dir_in) {
  STRATA_RETURN_IF_ERROR(wait_for_checkpoint(), "an earlier asynchronous save");
  STRATA_RETURN_IF_ERROR(finish_pending_update());  // a load replaces it anyway
  STRATA_ASSIGN_OR_RETURN(CheckpointMeta cm, read_meta(dir_in));
  const std::string& dir = cm.dir;
  const std::string& meta_path = cm.meta_path;
  const json& meta = cm.meta;
  const std::string ctx = absl::StrCat("loading checkpoint ", dir);
  auto corrupt = [&](const std::string& what) {
    return absl::DataLossError(absl::StrCat(ctx, ": ", meta_path, " ", what,
                                            "; the checkpoint is damaged or not a strata one"));
  };

  try {
    const int version = meta.at("format_version").get<int>();
    if (version != kFormatVersion) {
      return absl::FailedPreconditionError(
          absl::StrCat(ctx, ": format version ", version, ", this build reads version ",
                       kFormatVersion, "; load it with the strata version that wrote it"));
    }
    const std::string dtype = meta.at("compute_dtype").get<std::string>();
    if (dtype != std::string(dtype_name(dtype_))) {
      return absl::FailedPreconditionError(
          absl::StrCat(ctx, ": saved with compute dtype ", dtype, " but this engine runs ",
                       std::string(dtype_name(dtype_)),
                       "; set fp16 / bf16 in ds_config as the saved run had them"));
    }
    if (meta.contains("loss_scaler") != (scaler_ != nullptr)) {
      return absl::FailedPreconditionError(
          absl::StrCat(ctx, ": the checkpoint ", scaler_ != nullptr ? "has no" : "has a",
                       " loss-scaler state but this engine ", scaler_ != nullptr ? "has" : "has no",
                       " loss scaler; use the saved run's fp16 settings"));
    }

    // The parameter table against this model: count, then each entry.
    const json& params = meta.at("params");
    size_t total = 0;
    for (const auto& ps : layers_) total += ps.size();
    size_t idx = 0;
    for (int l = 0; l < static_cast<int>(layers_.size()); ++l) {
      for (int i = 0; i < static_cast<int>(layers_[l].size()); ++i, ++idx) {
        const ParamIds& p = layers_[l][i];
        const std::string here =
            absl::StrCat("layer ", l, " param ", i, " (", p.name, ", ", p.numel, " elements)");
        if (idx >= params.size()) {
          return absl::FailedPreconditionError(absl::StrCat(
              ctx, ": the checkpoint has ", params.size(), " parameters, this model ", total,
              "; first missing: ", here, "; load it into the model it was saved from"));
        }
        const json& e = params[idx];
        const int el = e.at("layer").get<int>(), ei = e.at("param").get<int>();
        const std::string en = e.at("name").get<std::string>();
        const uint64_t nn = e.at("numel").get<uint64_t>();
        if (el != l || ei != i || en != p.name || nn != p.numel) {
          return absl::FailedPreconditionError(absl::StrCat(
              ctx, ": parameter table mismatch at entry ", idx, ": the checkpoint has layer ", el,
              " param ", ei, " (", en, ", ", nn, " elements), this model has ", here,
              "; load it into the model it was saved from"));
        }
      }
    }
    if (params.size() != total) {
      return absl::FailedPreconditionError(
          absl::StrCat(ctx, ": the checkpoint has ", params.size(), " parameters, this model ",
                       total, "; load it into the model it was saved from"));
    }

    // Read and verify every tensor before anything is written into the engine.
    const std::string bin_path =
        (fs::path(dir) / meta.value("tensor_file", std::string(kTensorFile))).string();
    Fd fd(::open(bin_path.c_str(), O_RDONLY | O_CLOEXEC));
    if (fd.get() < 0) {
      return annotate(errno_status(errno, absl::StrCat("cannot open ", bin_path)), ctx);
    }
    std::vector<std::vector<uint8_t>> data;
    data.reserve(total * 4);
    idx = 0;
    for (int l = 0; l < static_cast<int>(layers_.size()); ++l) {
      for (int i = 0; i < static_cast<int>(layers_[l].size()); ++i, ++idx) {
        const ParamIds& p = layers_[l][i];
        const offload::TensorId ids[4] = {p.master, p.exp_avg, p.exp_avg_sq, p.param};
        for (int k = 0; k < 4; ++k) {
          const std::string& tname = store_->spec(ids[k]).name;
          const json& t = params[idx].at(kKindNames[k]);
          const uint64_t want = p.numel * (k == 3 ? dtype_size(dtype_) : 4);
          const uint64_t bytes = t.at("bytes").get<uint64_t>();
          if (bytes != want) {
            return corrupt(absl::StrCat("gives ", tname, " ", bytes, " bytes, expected ", want));
          }
          std::vector<uint8_t> buf(bytes);
          STRATA_RETURN_IF_ERROR(
              pread_all(fd.get(), buf.data(), bytes, t.at("offset").get<uint64_t>(), bin_path),
              absl::StrCat(ctx, ", tensor ", tname));
          const std::string sum = hex64(XXH3_64bits(buf.data(), bytes));
          if (sum != t.at("xxh3").get<std::string>()) {
            return absl::DataLossError(
                absl::StrCat(ctx, ": checksum mismatch for tensor ", tname, " in ", bin_path,
                             " (xxh3 ", sum, ", recorded ", t.at("xxh3").get<std::string>(),
                             "); the file is damaged; load an earlier checkpoint"));
          }
          data.push_back(std::move(buf));
        }
      }
    }

    const int64_t steps = meta.at("steps").get<int64_t>();
    const int64_t adam_step = meta.at("optimizer_steps").get<int64_t>();
    const int64_t micro_batches = meta.at("micro_batches").get<int64_t>();
    const int64_t lr_iteration = meta.at("lr_schedule_iteration").get<int64_t>();
    if (steps < 0 || adam_step < 0 || adam_step > steps || micro_batches < 0 || lr_iteration < -1) {
      return corrupt("has inconsistent step counters");
    }
    LossScaler::State scaler_state{};
    if (scaler_ != nullptr) {
      const json& ls = meta.at("loss_scaler");
      scaler_state = LossScaler::State{
          .scale = ls.at("scale").get<double>(),
          .hysteresis = ls.at("hysteresis").get<int>(),
          .iteration = ls.at("iteration").get<int64_t>(),
          .last_overflow_iteration = ls.at("last_overflow_iteration").get<int64_t>(),
          .skipped = ls.at("skipped").get<int64_t>()};
    }

    // Everything checked: write the tensors and the counters.
    size_t n = 0;
    for (const auto& ps : layers_) {
      for (const ParamIds& p : ps) {
        const offload::TensorId ids[4] = {p.master, p.exp_avg, p.exp_avg_sq, p.param};
        for (int k = 0; k < 4; ++k, ++n) {
          // The compute param on its home (its device copy is then stale and
          // dropped); the fp32 tensors on the optimizer's tier, reaching NVMe
          // by write-back as at initialization.
          const Tier tier = k == 3 ? param_tier(p) : opt_tier_;
          STRATA_RETURN_IF_ERROR(write_raw(ids[k], tier, data[n].data(), data[n].size()),
                                 absl::StrCat(ctx, ", tensor ", store_->spec(ids[k]).name));
          std::vector<uint8_t>().swap(data[n]);
        }
      }
    }
    steps_ = steps;
    adam_step_ = adam_step;
    micro_batches_ = micro_batches;
    schedule_->set_iteration(lr_iteration);
    if (scaler_ != nullptr) scaler_->restore(scaler_state);
  } catch (const json::exception& e) {
    return corrupt(
        absl::StrCat("is missing a field or has one of the wrong type (", e.what(), ")"));
  }
  return absl::OkStatus();
}

}  // namespace strata::engine
