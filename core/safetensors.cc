// safetensors Writer and Reader (contract in safetensors.h).
#include "core/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/config/json_reader.h"
#include "core/dtype.h"
#include "core/file_util.h"
#include "core/status.h"
#include "nlohmann/json.hpp"

namespace strata::safetensors {
namespace {

struct DtypeEntry {
  Dtype dtype;
  const char* name;
  size_t size;
};

constexpr DtypeEntry kDtypes[] = {
    {Dtype::kBool, "BOOL", 1},      {Dtype::kU8, "U8", 1},          {Dtype::kI8, "I8", 1},
    {Dtype::kF8E4M3, "F8_E4M3", 1}, {Dtype::kF8E5M2, "F8_E5M2", 1}, {Dtype::kI16, "I16", 2},
    {Dtype::kU16, "U16", 2},        {Dtype::kF16, "F16", 2},        {Dtype::kBF16, "BF16", 2},
    {Dtype::kI32, "I32", 4},        {Dtype::kU32, "U32", 4},        {Dtype::kF32, "F32", 4},
    {Dtype::kF64, "F64", 8},        {Dtype::kI64, "I64", 8},        {Dtype::kU64, "U64", 8},
};

// The Hugging Face implementation refuses headers above 100 MB; a larger
// length is far more likely a damaged or foreign file than a real header.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;
constexpr const char* kMetadataKey = "__metadata__";

const DtypeEntry& entry(Dtype d) { return kDtypes[static_cast<size_t>(d)]; }

// numel * size, or nullopt on overflow (a hostile shape).
std::optional<uint64_t> byte_size(const std::vector<int64_t>& shape, size_t size) {
  uint64_t n = size;
  for (int64_t d : shape) {
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) return std::nullopt;
  }
  return n;
}

}  // namespace

std::string_view dtype_name(Dtype d) { return entry(d).name; }
size_t dtype_size(Dtype d) { return entry(d).size; }

std::optional<Dtype> parse_dtype(std::string_view name) {
  for (const DtypeEntry& e : kDtypes) {
    if (name == e.name) return e.dtype;
  }
  return std::nullopt;
}

uint64_t TensorInfo::numel() const {
  uint64_t n = 1;
  for (int64_t d : shape) n *= static_cast<uint64_t>(d);
  return n;
}

std::string shape_string(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// ---------------------------------------------------------------- Writer

Writer::Writer(std::string path, std::string tmp_path, int fd, std::vector<TensorDecl> tensors,
               uint64_t data_start)
    : path_(std::move(path)),
      tmp_path_(std::move(tmp_path)),
      fd_(fd),
      tensors_(std::move(tensors)),
      offset_(data_start) {}

Writer::~Writer() {
  if (fd_ >= 0) ::close(fd_);
  if (!finished_) ::unlink(tmp_path_.c_str());
}

absl::StatusOr<std::unique_ptr<Writer>> Writer::create(
    const std::string& path, std::vector<TensorDecl> tensors,
    const std::map<std::string, std::string>& metadata) {
  // Offsets follow declaration order; ordered_json keeps that order in the
  // header too, with __metadata__ first as Hugging Face writes it.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header[kMetadataKey] = metadata;
  std::set<std::string> seen;
  uint64_t offset = 0;
  for (const TensorDecl& t : tensors) {
    const std::string ctx = absl::StrCat("safetensors ", path, ": tensor '", t.name, "'");
    if (t.name.empty() || t.name == kMetadataKey || !seen.insert(t.name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(ctx, ": tensor names must be non-empty, unique and not ", kMetadataKey));
    }
    for (int64_t d : t.shape) {
      if (d < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(ctx, ": negative dimension in shape ", shape_string(t.shape)));
      }
    }
    const std::optional<uint64_t> bytes = byte_size(t.shape, dtype_size(t.dtype));
    if (!bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(ctx, ": shape ", shape_string(t.shape), " is too large"));
    }
    header[t.name] = {{"dtype", std::string(dtype_name(t.dtype))},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + *bytes}}};
    offset += *bytes;
  }
  std::string text = header.dump();
  text.append((8 - (8 + text.size()) % 8) % 8, ' ');
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(uint64_t{text.size()} >> (8 * i));

  // Refused before any byte is written: only a regular file is replaced.
  STRATA_RETURN_IF_ERROR(check_output_path(path));
  const std::string tmp = absl::StrCat(path, ".tmp-", ::getpid());
  auto created = create_new_file(tmp);
  if (!created.ok()) {
    return absl::Status(created.status().code(),
                        absl::StrCat(created.status().message(), "; check that ", parent_dir(path),
                                     " exists and is writable"));
  }
  const int fd = *created;
  std::unique_ptr<Writer> w(new Writer(path, tmp, fd, std::move(tensors), 8 + text.size()));
  STRATA_RETURN_IF_ERROR(pwrite_all(fd, len, 8, 0, tmp));
  STRATA_RETURN_IF_ERROR(pwrite_all(fd, text.data(), text.size(), 8, tmp));
  return w;
}

absl::Status Writer::write_tensor(std::string_view name, const void* data, uint64_t bytes) {
  if (finished_ || next_ >= tensors_.size()) {
    return absl::FailedPreconditionError(absl::StrCat("safetensors ", path_, ": tensor '",
                                                      std::string(name),
                                                      "' written after every declared tensor"));
  }
  const TensorDecl& t = tensors_[next_];
  const uint64_t want = *byte_size(t.shape, dtype_size(t.dtype));
  if (name != t.name || bytes != want) {
    return absl::FailedPreconditionError(absl::StrCat(
        "safetensors ", path_, ": expected tensor '", t.name, "' (", want, " bytes) next, got '",
        std::string(name), "' (", bytes, " bytes); write tensors in declaration order"));
  }
  STRATA_RETURN_IF_ERROR(pwrite_all(fd_, data, bytes, offset_, tmp_path_));
  offset_ += bytes;
  ++next_;
  return absl::OkStatus();
}

absl::Status Writer::finish() {
  if (finished_) return absl::FailedPreconditionError("safetensors: finish() called twice");
  if (next_ < tensors_.size()) {
    return absl::FailedPreconditionError(absl::StrCat("safetensors ", path_, ": tensor '",
                                                      tensors_[next_].name,
                                                      "' and later ones were never written"));
  }
  if (::fsync(fd_) != 0) return errno_status(errno, absl::StrCat("cannot fsync ", tmp_path_));
  const int rc = ::close(fd_);
  fd_ = -1;
  if (rc != 0) return errno_status(errno, absl::StrCat("cannot close ", tmp_path_));
  STRATA_RETURN_IF_ERROR(check_output_path(path_));  // what is there now, minutes later
  if (::rename(tmp_path_.c_str(), path_.c_str()) != 0) {
    return errno_status(errno, absl::StrCat("cannot rename ", tmp_path_, " to ", path_));
  }
  finished_ = true;
  const std::string dir = parent_dir(path_);
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return errno_status(errno, absl::StrCat("cannot open ", dir, " to fsync it"));
  const int src = ::fsync(dfd);
  const int err = errno;
  ::close(dfd);
  if (src != 0) return errno_status(err, absl::StrCat("cannot fsync ", dir));
  return absl::OkStatus();
}

// ---------------------------------------------------------------- Reader

Reader::~Reader() {
  if (map_ != nullptr) ::munmap(const_cast<std::byte*>(map_), map_size_);
}

absl::StatusOr<std::unique_ptr<Reader>> Reader::open(const std::string& path) {
  auto bad = [&](const std::string& what) {
    return absl::DataLossError(
        absl::StrCat(path, ": ", what, "; the file is damaged or not a safetensors file"));
  };
  STRATA_ASSIGN_OR_RETURN(const OpenedFile f, open_regular_file(path));
  const int fd = f.fd;
  const uint64_t size = f.size;
  if (size < 8) {
    ::close(fd);
    return bad(absl::StrCat("only ", size, " bytes, too short for the 8-byte header length"));
  }
  void* m = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_err = errno;
  ::close(fd);
  if (m == MAP_FAILED) return errno_status(map_err, absl::StrCat("cannot mmap ", path));
  std::unique_ptr<Reader> r(new Reader());
  r->path_ = path;
  r->map_ = static_cast<const std::byte*>(m);
  r->map_size_ = size;

  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | std::to_integer<uint64_t>(r->map_[i]);
  if (n > size - 8) {
    return bad(absl::StrCat("header length ", n, " runs past the end of the file (", size,
                            " bytes, so at most ", size - 8, " are left for the header)"));
  }
  if (n > kMaxHeaderBytes) {
    return bad(absl::StrCat("header length ", n, " exceeds the ", kMaxHeaderBytes,
                            "-byte limit for a safetensors header"));
  }
  r->data_start_ = 8 + n;
  const uint64_t data_size = size - r->data_start_;

  absl::StatusOr<nlohmann::json> parsed =
      config::parse_json_strict(std::string_view(reinterpret_cast<const char*>(r->map_) + 8, n),
                                absl::StrCat("the ", n, "-byte header"), "safetensors header");
  if (!parsed.ok()) return bad(std::string(parsed.status().message()));
  const nlohmann::json& header = *parsed;
  if (!header.is_object()) return bad("the header is not a JSON object");

  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& v = it.value();
    if (name == kMetadataKey) {
      if (!v.is_object()) return bad("\"__metadata__\" is not an object of strings");
      for (auto m_it = v.begin(); m_it != v.end(); ++m_it) {
        if (!m_it.value().is_string()) {
          return bad(absl::StrCat("\"__metadata__\" entry '", m_it.key(), "' is not a string"));
        }
        r->metadata_[m_it.key()] = m_it.value().get<std::string>();
      }
      continue;
    }
    auto bad_tensor = [&](const std::string& what) {
      return bad(absl::StrCat("tensor '", name, "': ", what));
    };
    if (!v.is_object()) return bad_tensor("entry is not a JSON object");
    TensorInfo t;
    t.name = name;
    auto dt = v.find("dtype");
    if (dt == v.end() || !dt->is_string())
      return bad_tensor("\"dtype\" is missing or not a string");
    const std::optional<Dtype> d = parse_dtype(dt->get<std::string>());
    if (!d) return bad_tensor(absl::StrCat("unknown dtype \"", dt->get<std::string>(), "\""));
    t.dtype = *d;
    auto sh = v.find("shape");
    if (sh == v.end() || !sh->is_array()) return bad_tensor("\"shape\" is missing or not an array");
    for (const nlohmann::json& dim : *sh) {
      if (!dim.is_number_unsigned()) {
        return bad_tensor(absl::StrCat("shape ", sh->dump(), " holds a value that is not a ",
                                       "non-negative integer"));
      }
      const uint64_t u = dim.get<uint64_t>();
      if (u > static_cast<uint64_t>(INT64_MAX)) return bad_tensor("a dimension is too large");
      t.shape.push_back(static_cast<int64_t>(u));
    }
    auto off = v.find("data_offsets");
    if (off == v.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
        !(*off)[1].is_number_unsigned()) {
      return bad_tensor("\"data_offsets\" is missing or not two non-negative integers");
    }
    t.begin = (*off)[0].get<uint64_t>();
    t.end = (*off)[1].get<uint64_t>();
    if (t.begin > t.end) {
      return bad_tensor(
          absl::StrCat("data_offsets [", t.begin, ", ", t.end, "] end before they begin"));
    }
    if (t.end > data_size) {
      return bad_tensor(absl::StrCat("data_offsets [", t.begin, ", ", t.end,
                                     "] run past the end of the data section (", data_size,
                                     " bytes); the file may be truncated"));
    }
    const std::optional<uint64_t> want = byte_size(t.shape, dtype_size(t.dtype));
    if (!want || *want != t.bytes()) {
      return bad_tensor(
          absl::StrCat("shape ", shape_string(t.shape), " of ", std::string(dtype_name(t.dtype)),
                       " needs ", want ? absl::StrCat(*want) : "too many",
                       " bytes but data_offsets [", t.begin, ", ", t.end, "] hold ", t.bytes()));
    }
    r->tensors_.push_back(std::move(t));
  }

  std::stable_sort(r->tensors_.begin(), r->tensors_.end(),
                   [](const TensorInfo& a, const TensorInfo& b) {
                     return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
                   });
  uint64_t covered = 0;
  const TensorInfo* prev = nullptr;
  for (const TensorInfo& t : r->tensors_) {
    if (t.begin < covered) {
      return bad(absl::StrCat("tensors '", prev->name, "' [", prev->begin, ", ", prev->end,
                              ") and '", t.name, "' [", t.begin, ", ", t.end, ") overlap"));
    }
    if (t.begin > covered) {
      return bad(absl::StrCat("bytes [", covered, ", ", t.begin, ") of the data section before '",
                              t.name, "' belong to no tensor"));
    }
    covered = t.end;
    prev = &t;
  }
  if (covered != data_size) {
    return bad(absl::StrCat("bytes [", covered, ", ", data_size,
                            ") at the end of the data section belong to no tensor"));
  }
  for (size_t i = 0; i < r->tensors_.size(); ++i) r->index_.emplace(r->tensors_[i].name, i);
  return r;
}

const TensorInfo* Reader::find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

std::span<const std::byte> Reader::data(const TensorInfo& t) const {
  return {map_ + data_start_ + t.begin, static_cast<size_t>(t.bytes())};
}

absl::Status Reader::to_fp32(const TensorInfo& t, float* out) const {
  const std::span<const std::byte> src = data(t);
  const uint64_t n = t.numel();
  switch (t.dtype) {
    case Dtype::kF32:
      std::memcpy(out, src.data(), src.size());
      return absl::OkStatus();
    case Dtype::kF16:
    case Dtype::kBF16: {
      // The array conversions take uint16_t pointers; a tensor at an odd
      // offset (legal, if unusual) is copied to aligned memory first.
      std::vector<uint16_t> aligned;
      const auto* p = reinterpret_cast<const uint16_t*>(src.data());
      if (reinterpret_cast<uintptr_t>(src.data()) % alignof(uint16_t) != 0) {
        aligned.resize(n);
        std::memcpy(aligned.data(), src.data(), src.size());
        p = aligned.data();
      }
      if (t.dtype == Dtype::kF16) {
        convert_fp16_to_fp32(p, out, n);
      } else {
        convert_bf16_to_fp32(p, out, n);
      }
      return absl::OkStatus();
    }
    default:
      return absl::InvalidArgumentError(
          absl::StrCat(path_, ": tensor '", t.name, "' is ", std::string(dtype_name(t.dtype)),
                       "; only F32, F16 and BF16 tensors convert to fp32"));
  }
}

}  // namespace strata::safetensors
