#include "engine/checkpoint_format.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/config/json_reader.h"
#include "core/file_util.h"
#include "core/status.h"

namespace strata::engine {

// tensors.bin, opened once by read_checkpoint: every later read sees the file
// whose size the table was checked against.
class CheckpointFile {
 public:
  CheckpointFile(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  ~CheckpointFile() { ::close(fd_); }
  CheckpointFile(const CheckpointFile&) = delete;
  CheckpointFile& operator=(const CheckpointFile&) = delete;
  int fd() const { return fd_; }
  const std::string& path() const { return path_; }

 private:
  int fd_;
  std::string path_;
};

namespace {

namespace fs = std::filesystem;
using config::ObjectReader;
using nlohmann::json;

constexpr uint64_t kMaxMetaBytes = uint64_t{64} << 20;
constexpr int64_t kInt64Max = std::numeric_limits<int64_t>::max();
constexpr int kIntMax = std::numeric_limits<int>::max();

// meta.json errors: a damaged or foreign checkpoint.
absl::Status damaged(const absl::Status& s) {
  return absl::DataLossError(
      absl::StrCat(s.message(), "; the checkpoint is damaged or not a strata one"));
}

absl::Status require(ObjectReader& r, std::string_view key, const config::Diagnostics& diag) {
  if (r.has(key)) return absl::OkStatus();
  return damaged(diag.error(r.key_path(key), "missing"));
}

absl::Status read_int(ObjectReader& r, std::string_view key, int64_t* out, int64_t min, int64_t max,
                      const config::Diagnostics& diag) {
  STRATA_RETURN_IF_ERROR(require(r, key, diag));
  if (absl::Status s = r.read_int(key, out, min, max); !s.ok()) return damaged(s);
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> parse_hex64(const std::string& s) {
  if (s.size() != 16) return absl::InvalidArgumentError("not 16 hex digits");
  uint64_t v = 0;
  for (char c : s) {
    int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (d < 0) return absl::InvalidArgumentError("not 16 lowercase hex digits");
    v = (v << 4) | static_cast<uint64_t>(d);
  }
  return v;
}

absl::Status read_tensor_entry(ObjectReader& parent, const char* kind, CheckpointTensor* t,
                               const config::Diagnostics& diag) {
  STRATA_RETURN_IF_ERROR(require(parent, kind, diag));
  auto child = parent.child(kind);
  if (!child.ok()) return damaged(child.status());
  ObjectReader& r = **child;
  int64_t offset = 0, bytes = 0;
  STRATA_RETURN_IF_ERROR(read_int(r, "offset", &offset, 0, kInt64Max, diag));
  STRATA_RETURN_IF_ERROR(read_int(r, "bytes", &bytes, 0, kInt64Max, diag));
  std::string sum;
  STRATA_RETURN_IF_ERROR(require(r, "xxh3", diag));
  if (absl::Status s = r.read_string("xxh3", &sum); !s.ok()) return damaged(s);
  auto v = parse_hex64(sum);
  if (!v.ok()) {
    return damaged(diag.error(
        r.key_path("xxh3"), absl::StrCat("\"", sum.substr(0, 40), "\" is ", v.status().message())));
  }
  *t = {static_cast<uint64_t>(offset), static_cast<uint64_t>(bytes), *v};
  return absl::OkStatus();
}

absl::StatusOr<CheckpointParam> read_param(const json& value, size_t index,
                                           config::Diagnostics& diag, DType compute) {
  const std::string path = absl::StrCat("params[", index, "]");
  if (!value.is_object()) {
    return damaged(
        diag.error(path, absl::StrCat("expected an object, got ", config::describe(value))));
  }
  ObjectReader r(value, path, &diag);
  CheckpointParam p;
  int64_t layer = 0, param = 0, numel = 0;
  STRATA_RETURN_IF_ERROR(read_int(r, "layer", &layer, 0, kIntMax, diag));
  STRATA_RETURN_IF_ERROR(read_int(r, "param", &param, 0, kIntMax, diag));
  // 2^60 elements: no byte count below overflows.
  STRATA_RETURN_IF_ERROR(read_int(r, "numel", &numel, 0, int64_t{1} << 60, diag));
  STRATA_RETURN_IF_ERROR(require(r, "name", diag));
  if (absl::Status s = r.read_string("name", &p.name); !s.ok()) return damaged(s);
  p.layer = static_cast<int>(layer);
  p.param = static_cast<int>(param);
  p.numel = static_cast<uint64_t>(numel);
  for (int k = 0; k < kCheckpointKinds; ++k) {
    CheckpointTensor& t = p.tensors[k];
    STRATA_RETURN_IF_ERROR(read_tensor_entry(r, kCheckpointKindNames[k], &t, diag));
    const uint64_t want = p.numel * (k == kCheckpointCompute ? dtype_size(compute) : 4);
    if (t.bytes != want) {
      return damaged(diag.error(
          absl::StrCat(path, ".", kCheckpointKindNames[k], ".bytes"),
          absl::StrCat(t.bytes, " bytes for ", p.numel, " ",
                       k == kCheckpointCompute ? std::string(dtype_name(compute)) : "fp32",
                       " elements, expected ", want)));
    }
  }
  return p;
}

absl::Status read_loss_scaler(ObjectReader& top, Checkpoint& ck, const config::Diagnostics& diag) {
  auto child = top.child("loss_scaler");
  if (!child.ok()) return damaged(child.status());
  if (!child->has_value()) return absl::OkStatus();
  ObjectReader& r = **child;
  CheckpointLossScaler ls;
  STRATA_RETURN_IF_ERROR(require(r, "scale", diag));
  // A scale the fp32 loss can be multiplied by; NaN and inf never pass.
  if (absl::Status s = r.read_double("scale", &ls.scale, std::numeric_limits<double>::min(),
                                     std::numeric_limits<float>::max());
      !s.ok()) {
    return damaged(s);
  }
  int64_t hysteresis = 0;
  STRATA_RETURN_IF_ERROR(read_int(r, "hysteresis", &hysteresis, 0, kIntMax, diag));
  ls.hysteresis = static_cast<int>(hysteresis);
  STRATA_RETURN_IF_ERROR(read_int(r, "iteration", &ls.iteration, 0, ck.steps, diag));
  STRATA_RETURN_IF_ERROR(
      read_int(r, "last_overflow_iteration", &ls.last_overflow_iteration, -1, ls.iteration, diag));
  STRATA_RETURN_IF_ERROR(read_int(r, "skipped", &ls.skipped, 0, ck.steps, diag));
  ck.loss_scaler = ls;
  return absl::OkStatus();
}

uint64_t physical_memory_bytes() {
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page <= 0) return std::numeric_limits<uint64_t>::max();
  return static_cast<uint64_t>(pages) * static_cast<uint64_t>(page);
}

absl::Status checksum_mismatch(const Checkpoint& ck, const std::string& name, uint64_t got,
                               uint64_t recorded) {
  return absl::DataLossError(absl::StrCat(
      "checksum mismatch for tensor ", name, " in ", ck.tensor_path, " (xxh3 ", xxh3_hex(got),
      ", recorded ", xxh3_hex(recorded), "); the file is damaged; use an earlier checkpoint"));
}

}  // namespace

std::string xxh3_hex(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016" PRIx64, v);
  return buf;
}

std::string CheckpointParam::tensor_name(int kind) const {
  return absl::StrCat("layer", layer, ".", name, ".",
                      kind == kCheckpointCompute ? "param" : kCheckpointKindNames[kind]);
}

uint64_t Checkpoint::total_numel() const {
  uint64_t n = 0;
  for (const CheckpointParam& p : params) n += p.numel;
  return n;
}

uint64_t Checkpoint::largest_tensor_bytes() const {
  uint64_t n = 0;
  for (const CheckpointParam& p : params) {
    for (const CheckpointTensor& t : p.tensors) n = std::max(n, t.bytes);
  }
  return n;
}

absl::StatusOr<Checkpoint> read_checkpoint(const std::string& dir_in) {
  Checkpoint ck;
  ck.dir = strip_trailing_slashes(dir_in);
  if (ck.dir.empty()) return absl::InvalidArgumentError("empty checkpoint directory name");
  std::error_code ec;
  if (!fs::is_directory(ck.dir, ec) && fs::is_directory(ck.dir + ".old", ec)) ck.dir += ".old";
  if (!fs::is_directory(ck.dir, ec) && fs::exists(fs::symlink_status(ck.dir, ec))) {
    return absl::InvalidArgumentError(
        absl::StrCat(ck.dir, " is not a directory; pass the directory a save wrote (it holds ",
                     kCheckpointMetaFile, " and ", kCheckpointTensorFile, ")"));
  }
  if (!fs::is_directory(ck.dir, ec)) {
    return absl::NotFoundError(absl::StrCat(ck.dir,
                                            ": no such directory; pass the directory a save "
                                            "wrote (it holds ",
                                            kCheckpointMetaFile, " and ", kCheckpointTensorFile,
                                            ")"));
  }
  ck.meta_path = (fs::path(ck.dir) / kCheckpointMetaFile).string();
  STRATA_ASSIGN_OR_RETURN(const std::string text, read_file(ck.meta_path, kMaxMetaBytes));
  auto parsed = config::parse_json_strict(text, ck.meta_path);
  if (!parsed.ok()) return damaged(parsed.status());
  const json& meta = *parsed;
  config::Diagnostics diag{ck.meta_path};
  if (!meta.is_object()) return damaged(diag.error("", "not a JSON object"));
  ObjectReader top(meta, "", &diag);

  std::string format;
  if (absl::Status s = top.read_string("format", &format); !s.ok()) return damaged(s);
  if (format != kCheckpointFormat) {
    return absl::DataLossError(
        absl::StrCat(ck.meta_path, " is not a strata checkpoint's meta.json (no \"format\": \"",
                     kCheckpointFormat, "\"); the checkpoint is damaged or not a strata one"));
  }
  int64_t version = 0;
  STRATA_RETURN_IF_ERROR(read_int(top, "format_version", &version, 0, kIntMax, diag));
  if (version != kCheckpointFormatVersion) {
    return absl::FailedPreconditionError(
        absl::StrCat(ck.meta_path, ": format version ", version, ", this build reads version ",
                     kCheckpointFormatVersion, "; use the strata version that wrote it"));
  }
  std::string dtype;
  STRATA_RETURN_IF_ERROR(require(top, "compute_dtype", diag));
  if (absl::Status s = top.read_enum("compute_dtype", &dtype, {"fp32", "fp16", "bf16"}); !s.ok()) {
    return damaged(s);
  }
  STRATA_ASSIGN_OR_RETURN(ck.compute_dtype, parse_dtype(dtype));
  if (absl::Status s = top.read_string("optimizer", &ck.optimizer); !s.ok()) return damaged(s);
  auto stage = top.read_optional_int("zero_stage", 0, 3);
  if (!stage.ok()) return damaged(stage.status());
  if (stage->has_value()) ck.zero_stage = static_cast<int>(**stage);

  STRATA_RETURN_IF_ERROR(read_int(top, "steps", &ck.steps, 0, kMaxCheckpointCounter, diag));
  STRATA_RETURN_IF_ERROR(read_int(top, "optimizer_steps", &ck.optimizer_steps, 0, ck.steps, diag));
  // Every step consumes at least one micro-batch.
  STRATA_RETURN_IF_ERROR(
      read_int(top, "micro_batches", &ck.micro_batches, ck.steps, kMaxCheckpointCounter, diag));
  STRATA_RETURN_IF_ERROR(
      read_int(top, "lr_schedule_iteration", &ck.lr_schedule_iteration, -1, ck.steps, diag));
  STRATA_RETURN_IF_ERROR(read_loss_scaler(top, ck, diag));

  std::string tensor_file = kCheckpointTensorFile;
  if (absl::Status s = top.read_string("tensor_file", &tensor_file); !s.ok()) return damaged(s);
  if (tensor_file.empty() || tensor_file == "." || tensor_file == ".." ||
      tensor_file.find('/') != std::string::npos) {
    return damaged(diag.error("tensor_file", absl::StrCat("\"", tensor_file.substr(0, 80),
                                                          "\" is not a file name in ", ck.dir)));
  }
  ck.tensor_path = (fs::path(ck.dir) / tensor_file).string();

  STRATA_RETURN_IF_ERROR(require(top, "params", diag));
  const json& params = *top.get("params");
  if (!params.is_array()) {
    return damaged(
        diag.error("params", absl::StrCat("expected an array, got ", config::describe(params))));
  }
  ck.params.reserve(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    STRATA_ASSIGN_OR_RETURN(CheckpointParam p, read_param(params[i], i, diag, ck.compute_dtype));
    ck.params.push_back(std::move(p));
  }
  if (const json* user = top.get("user"); user != nullptr) ck.user = *user;

  // tensors.bin: a regular file (a FIFO is refused, not waited on) holding
  // every extent the table names.
  STRATA_ASSIGN_OR_RETURN(const OpenedFile f, open_regular_file(ck.tensor_path));
  ck.file = std::make_shared<const CheckpointFile>(f.fd, ck.tensor_path);
  ck.tensor_file_bytes = f.size;
  for (size_t i = 0; i < ck.params.size(); ++i) {
    for (int k = 0; k < kCheckpointKinds; ++k) {
      const CheckpointTensor& t = ck.params[i].tensors[k];
      if (t.offset > ck.tensor_file_bytes || t.bytes > ck.tensor_file_bytes - t.offset) {
        return absl::DataLossError(absl::StrCat(
            ck.meta_path, ": params[", i, "].", kCheckpointKindNames[k], ": bytes [", t.offset,
            ", ", t.offset + t.bytes, ") run past the end of ", ck.tensor_path, " (",
            ck.tensor_file_bytes, " bytes); the checkpoint is truncated or damaged"));
      }
    }
  }
  // A load holds the largest tensor in memory at once.
  const uint64_t largest = ck.largest_tensor_bytes(), memory = physical_memory_bytes();
  if (largest > memory) {
    return absl::ResourceExhaustedError(absl::StrCat(
        ck.meta_path, ": the largest tensor is ", largest, " bytes, more than this machine's ",
        memory, " bytes of memory; read it on a machine with more memory"));
  }
  return ck;
}

absl::Status read_checkpoint_tensor(const Checkpoint& ck, const CheckpointTensor& t,
                                    const std::string& name, void* dst) {
  STRATA_RETURN_IF_ERROR(pread_all(ck.file->fd(), dst, t.bytes, t.offset, ck.tensor_path),
                         absl::StrCat("tensor ", name));
  const uint64_t sum = XXH3_64bits(dst, t.bytes);
  if (sum != t.xxh3) return checksum_mismatch(ck, name, sum, t.xxh3);
  return absl::OkStatus();
}

absl::Status verify_checkpoint_tensors(const Checkpoint& ck, uint64_t chunk_bytes,
                                       uint64_t* peak_buffer_bytes) {
  if (chunk_bytes == 0) return absl::InvalidArgumentError("verify: chunk_bytes must be > 0");
  std::vector<uint8_t> buf(std::min(chunk_bytes, std::max<uint64_t>(ck.largest_tensor_bytes(), 1)));
  if (peak_buffer_bytes != nullptr) *peak_buffer_bytes = buf.size();
  std::unique_ptr<XXH3_state_t, decltype(&XXH3_freeState)> state(XXH3_createState(),
                                                                 &XXH3_freeState);
  if (state == nullptr) return absl::ResourceExhaustedError("cannot allocate an xxh3 state");
  for (const CheckpointParam& p : ck.params) {
    for (int k = 0; k < kCheckpointKinds; ++k) {
      const CheckpointTensor& t = p.tensors[k];
      XXH3_64bits_reset(state.get());
      for (uint64_t done = 0; done < t.bytes;) {
        const uint64_t n = std::min<uint64_t>(buf.size(), t.bytes - done);
        STRATA_RETURN_IF_ERROR(
            pread_all(ck.file->fd(), buf.data(), n, t.offset + done, ck.tensor_path),
            absl::StrCat("tensor ", p.tensor_name(k)));
        XXH3_64bits_update(state.get(), buf.data(), n);
        done += n;
      }
      const uint64_t sum = XXH3_64bits_digest(state.get());
      if (sum != t.xxh3) return checksum_mismatch(ck, p.tensor_name(k), sum, t.xxh3);
    }
  }
  return absl::OkStatus();
}

bool has_checkpoint_marker(const std::string& dir) {
  auto text = read_file((fs::path(dir) / kCheckpointMetaFile).string(), kMaxMetaBytes);
  if (!text.ok()) return false;
  auto meta = config::parse_json_strict(*text, dir);
  if (!meta.ok() || !meta->is_object()) return false;
  auto it = meta->find("format");
  return it != meta->end() && it->is_string() && it->get<std::string>() == kCheckpointFormat;
}

}  // namespace strata::engine
