#include "swap/swap_file.h"

#include <xxhash.h>

#include <algorithm>
#include <cstring>
#include <future>
#include <unordered_set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/status.h"
#include "swap/aligned_buffer.h"

namespace strata::swap {
namespace {

constexpr uint32_t kStateClean = 1;
constexpr uint32_t kStateDirty = 2;
constexpr size_t kFixedHeader = 56;
constexpr uint8_t kFlagWritten = 1;
constexpr uint8_t kFlagChecksummed = 2;

template <typename T>
void put(std::string& out, T v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof(v));
}

// Bounds-checked little reader over the header bytes.
class Reader {
 public:
  Reader(const char* p, size_t n) : p_(p), n_(n) {}
  template <typename T>
  bool get(T& v) {
    if (pos_ + sizeof(T) > n_) return false;
    std::memcpy(&v, p_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return true;
  }
  bool get_string(size_t len, std::string& s) {
    if (pos_ + len > n_) return false;
    s.assign(p_ + pos_, len);
    pos_ += len;
    return true;
  }
  size_t pos() const { return pos_; }

 private:
  const char* p_;
  size_t n_;
  size_t pos_ = 0;
};

size_t table_bytes_for(const std::vector<TensorSpec>& specs) {
  size_t n = 0;
  for (const TensorSpec& s : specs) n += 2 + s.name.size() + 2 + 8 * 4;
  return n;
}

}  // namespace

SwapFile::SwapFile(IoEngine& engine, FileId file, std::string path, SwapFileOptions options)
    : engine_(engine), file_(file), path_(std::move(path)), options_(options) {}

SwapFile::~SwapFile() { (void)engine_.close(file_); }

absl::StatusOr<std::unique_ptr<SwapFile>> SwapFile::create(IoEngine& engine,
                                                           const std::vector<std::string>& paths,
                                                           const std::vector<TensorSpec>& specs,
                                                           SwapFileOptions options) {
  const std::string where = absl::StrJoin(paths, ",");
  std::unordered_set<std::string> names;
  for (const TensorSpec& s : specs) {
    if (s.name.empty() || s.name.size() > 4096) {
      return absl::InvalidArgumentError(
          absl::StrCat("swap file ", where, ": tensor names must be 1..4096 bytes"));
    }
    if (!names.insert(s.name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("swap file ", where, ": tensor '", s.name, "' listed twice"));
    }
  }
  STRATA_ASSIGN_OR_RETURN(FileId file, engine.open(paths, {.create = true, .truncate = true}),
                          "creating swap file");
  std::unique_ptr<SwapFile> f(new SwapFile(engine, file, where, options));
  f->header_bytes_ = align_up(kFixedHeader + table_bytes_for(specs), kDirectAlignment);
  uint64_t offset = f->header_bytes_;
  for (const TensorSpec& s : specs) {
    TensorExtent e;
    e.name = s.name;
    e.dtype = s.dtype;
    e.numel = s.numel;
    e.length = s.numel * dtype_size(s.dtype);
    e.capacity = align_up(e.length, kDirectAlignment);
    e.offset = offset;
    offset += e.capacity;
    f->tensors_.push_back(std::move(e));
  }
  f->data_bytes_ = offset;
  STRATA_RETURN_IF_ERROR(engine.preallocate(file, f->data_bytes_),
                         absl::StrCat("creating swap file for ", specs.size(), " tensors (",
                                      f->data_bytes_, " bytes)"));
  // An all-zero header reads back as "never committed" until commit().
  AlignedBuffer zeros(f->header_bytes_);
  STRATA_RETURN_IF_ERROR(engine.write(file, 0, zeros.data(), zeros.size()),
                         absl::StrCat("initialising swap file ", where));
  return f;
}

absl::StatusOr<std::unique_ptr<SwapFile>> SwapFile::open(IoEngine& engine,
                                                         const std::vector<std::string>& paths,
                                                         SwapFileOptions options) {
  STRATA_ASSIGN_OR_RETURN(FileId file, engine.open(paths, {}), "opening swap file");
  std::unique_ptr<SwapFile> f(new SwapFile(engine, file, absl::StrJoin(paths, ","), options));
  STRATA_RETURN_IF_ERROR(f->parse_header());
  f->clean_on_disk_ = true;
  return f;
}

absl::Status SwapFile::parse_header() {
  const std::string& p = path_;
  STRATA_ASSIGN_OR_RETURN(uint64_t size, engine_.size(file_));
  if (size < kDirectAlignment) {
    return absl::DataLossError(absl::StrCat("swap file ", p, " is truncated: ", size,
                                            " bytes, shorter than a header (offset 0)"));
  }
  AlignedBuffer first(kDirectAlignment);
  STRATA_RETURN_IF_ERROR(engine_.read(file_, 0, first.data(), first.size()),
                         absl::StrCat("reading the header of ", p));
  if (std::memcmp(first.data(), kSwapMagic, sizeof(kSwapMagic)) != 0) {
    bool zero =
        std::all_of(first.data(), first.data() + kFixedHeader, [](char c) { return c == 0; });
    if (zero) {
      return absl::DataLossError(
          absl::StrCat("swap file ", p,
                       " has no header at offset 0: it was created but never committed "
                       "(interrupted run?); delete it and let strata recreate it"));
    }
    return absl::InvalidArgumentError(absl::StrCat(
        "file ", p, " is not a strata swap file (wrong magic at offset 0); check the nvme_path"));
  }
  Reader r(first.data(), kFixedHeader);
  char magic[8];
  uint32_t version = 0, state = 0, count = 0, table_bytes = 0;
  uint64_t table_sum = 0, header_sum = 0;
  for (char& c : magic) r.get(c);
  r.get(version);
  r.get(state);
  r.get(header_bytes_);
  r.get(data_bytes_);
  r.get(count);
  r.get(table_bytes);
  r.get(table_sum);
  if (version != kSwapVersion) {
    return absl::FailedPreconditionError(absl::StrCat("swap file ", p, " has format version ",
                                                      version, " at offset 8; this strata reads ",
                                                      kSwapVersion));
  }
  const size_t sum_at = r.pos();
  r.get(header_sum);
  if (XXH3_64bits(first.data(), sum_at) != header_sum) {
    return absl::DataLossError(absl::StrCat("swap file ", p,
                                            ": header checksum mismatch at offset 0 (torn or "
                                            "corrupt header)"));
  }
  if (state == kStateDirty) {
    return absl::DataLossError(
        absl::StrCat("swap file ", p,
                     " (state at offset 12) was being updated and never committed; its "
                     "extents may be torn: recreate it"));
  }
  if (state != kStateClean || header_bytes_ % kDirectAlignment != 0 ||
      kFixedHeader + table_bytes > header_bytes_ || data_bytes_ < header_bytes_) {
    return absl::DataLossError(
        absl::StrCat("swap file ", p, ": inconsistent header fields at offset 12..40"));
  }
  if (size < data_bytes_) {
    return absl::DataLossError(absl::StrCat("swap file ", p, " is truncated: ", size,
                                            " bytes but the header says ", data_bytes_,
                                            "; data past offset ", size, " is missing"));
  }
  AlignedBuffer header(header_bytes_);
  if (header_bytes_ > kDirectAlignment) {
    STRATA_RETURN_IF_ERROR(engine_.read(file_, 0, header.data(), header.size()),
                           absl::StrCat("reading the tensor table of ", p));
  } else {
    std::memcpy(header.data(), first.data(), kDirectAlignment);
  }
  const char* table = header.data() + kFixedHeader;
  if (XXH3_64bits(table, table_bytes) != table_sum) {
    return absl::DataLossError(absl::StrCat("swap file ", p,
                                            ": tensor table checksum mismatch (offset ",
                                            kFixedHeader, ", ", table_bytes, " bytes)"));
  }
  Reader t(table, table_bytes);
  uint64_t next = header_bytes_;
  for (uint32_t i = 0; i < count; ++i) {
    TensorExtent e;
    uint16_t name_len = 0;
    uint8_t dtype = 0, flags = 0;
    bool ok = t.get(name_len) && t.get_string(name_len, e.name) && t.get(dtype) && t.get(flags) &&
              t.get(e.numel) && t.get(e.offset) && t.get(e.length) && t.get(e.checksum);
    const uint64_t entry_at = kFixedHeader + t.pos();
    if (!ok || dtype > static_cast<uint8_t>(DType::kBFloat16)) {
      return absl::DataLossError(absl::StrCat("swap file ", p, ": tensor table entry ", i,
                                              " is malformed (offset ", entry_at, ")"));
    }
    e.dtype = static_cast<DType>(dtype);
    e.capacity = align_up(e.length, kDirectAlignment);
    e.written = flags & kFlagWritten;
    e.checksummed = flags & kFlagChecksummed;
    if (e.length != e.numel * dtype_size(e.dtype) || e.offset % kDirectAlignment != 0 ||
        e.offset < next || e.offset + e.capacity > data_bytes_) {
      return absl::DataLossError(absl::StrCat("swap file ", p, ": tensor '", e.name,
                                              "' has an invalid extent (offset ", e.offset,
                                              ", length ", e.length, ")"));
    }
    next = e.offset + e.capacity;
    tensors_.push_back(std::move(e));
  }
  return absl::OkStatus();
}

std::string SwapFile::encode_header(uint32_t state) const {
  std::string table;
  for (const TensorExtent& e : tensors_) {
    put<uint16_t>(table, static_cast<uint16_t>(e.name.size()));
    table += e.name;
    put<uint8_t>(table, static_cast<uint8_t>(e.dtype));
    put<uint8_t>(table, static_cast<uint8_t>((e.written ? kFlagWritten : 0) |
                                             (e.checksummed ? kFlagChecksummed : 0)));
    put<uint64_t>(table, e.numel);
    put<uint64_t>(table, e.offset);
    put<uint64_t>(table, e.length);
    put<uint64_t>(table, e.checksum);
  }
  std::string out(kSwapMagic, sizeof(kSwapMagic));
  put<uint32_t>(out, kSwapVersion);
  put<uint32_t>(out, state);
  put<uint64_t>(out, header_bytes_);
  put<uint64_t>(out, data_bytes_);
  put<uint32_t>(out, static_cast<uint32_t>(tensors_.size()));
  put<uint32_t>(out, static_cast<uint32_t>(table.size()));
  put<uint64_t>(out, XXH3_64bits(table.data(), table.size()));
  put<uint64_t>(out, XXH3_64bits(out.data(), out.size()));
  out += table;
  return out;
}

absl::Status SwapFile::write_header(uint32_t state) {
  std::string bytes = encode_header(state);
  AlignedBuffer buf(header_bytes_);
  std::memcpy(buf.data(), bytes.data(), bytes.size());
  STRATA_RETURN_IF_ERROR(engine_.write(file_, 0, buf.data(), buf.size()),
                         absl::StrCat("writing the header of swap file ", path_));
  return engine_.sync(file_);
}

absl::Status SwapFile::commit() {
  std::lock_guard lock(mu_);
  // Extents first (durable), then the header that vouches for them.
  STRATA_RETURN_IF_ERROR(engine_.sync(file_), absl::StrCat("committing swap file ", path_));
  STRATA_RETURN_IF_ERROR(write_header(kStateClean), "committing");
  dirty_on_disk_ = false;
  clean_on_disk_ = true;
  return absl::OkStatus();
}

absl::StatusOr<TensorExtent> SwapFile::find(const std::string& name) const {
  for (const TensorExtent& e : tensors_) {
    if (e.name == name) return e;
  }
  return absl::NotFoundError(absl::StrCat("swap file ", path_, " has no tensor '", name, "'"));
}

absl::StatusOr<size_t> SwapFile::index_of(const std::string& name, const void* buffer,
                                          size_t buffer_bytes) const {
  for (size_t i = 0; i < tensors_.size(); ++i) {
    if (tensors_[i].name != name) continue;
    if (buffer_bytes < tensors_[i].capacity) {
      return absl::InvalidArgumentError(absl::StrCat(
          "swap file ", path_, ": buffer of ", buffer_bytes, " bytes for tensor '", name,
          "' is smaller than its extent (", tensors_[i].capacity, " bytes, 4 KiB padded)"));
    }
    return i;
  }
  return absl::NotFoundError(absl::StrCat("swap file ", path_, " has no tensor '", name, "'"));
}

namespace {
// Runs an async form and blocks until its callback has run.
template <typename Submit>
absl::Status run_blocking(Submit submit) {
  std::promise<absl::Status> result;
  std::future<absl::Status> future = result.get_future();
  STRATA_RETURN_IF_ERROR(submit([&result](const absl::Status& s) { result.set_value(s); }));
  return future.get();
}
}  // namespace

absl::Status SwapFile::write_tensor(const std::string& name, const void* buffer,
                                    size_t buffer_bytes) {
  return run_blocking(
      [&](Done done) { return write_tensor_async(name, buffer, buffer_bytes, std::move(done)); });
}

absl::Status SwapFile::read_tensor(const std::string& name, void* buffer, size_t buffer_bytes) {
  return run_blocking(
      [&](Done done) { return read_tensor_async(name, buffer, buffer_bytes, std::move(done)); });
}

absl::Status SwapFile::write_tensor_async(const std::string& name, const void* buffer,
                                          size_t buffer_bytes, Done done) {
  STRATA_ASSIGN_OR_RETURN(size_t i, index_of(name, buffer, buffer_bytes));
  TensorExtent e;
  {
    std::lock_guard lock(mu_);
    // A committed header must not vouch for an extent being rewritten.
    if (clean_on_disk_ && !dirty_on_disk_) {
      STRATA_RETURN_IF_ERROR(write_header(kStateDirty), "marking swap file dirty");
      dirty_on_disk_ = true;
    }
    e = tensors_[i];
  }
  const bool checksums = options_.checksums;
  const uint64_t sum = checksums ? XXH3_64bits(buffer, e.length) : 0;
  auto on_written = [this, i, sum, checksums, name, done = std::move(done)](const absl::Status& s) {
    if (s.ok()) {
      std::lock_guard lock(mu_);
      tensors_[i].written = true;
      tensors_[i].checksummed = checksums;
      tensors_[i].checksum = sum;
    }
    done(annotate(s, absl::StrCat("writing tensor '", name, "' to swap file")));
  };
  return engine_
      .submit({IoOp::kWrite, file_, e.offset, const_cast<void*>(buffer), e.capacity,
               std::move(on_written)})
      .status();
}

absl::Status SwapFile::read_tensor_async(const std::string& name, void* buffer, size_t buffer_bytes,
                                         Done done) {
  STRATA_ASSIGN_OR_RETURN(size_t i, index_of(name, buffer, buffer_bytes));
  TensorExtent e;
  {
    std::lock_guard lock(mu_);
    e = tensors_[i];
  }
  if (!e.written) {
    return absl::FailedPreconditionError(
        absl::StrCat("swap file ", path_, ": tensor '", name, "' was never written"));
  }
  const bool verify = options_.checksums && e.checksummed;
  auto on_read = [this, e, buffer, verify, done = std::move(done)](const absl::Status& s) {
    if (!s.ok()) {
      done(annotate(s, absl::StrCat("reading tensor '", e.name, "' from swap file")));
      return;
    }
    if (verify) {
      const uint64_t got = XXH3_64bits(buffer, e.length);
      if (got != e.checksum) {
        done(absl::DataLossError(absl::StrFormat(
            "swap file %s: checksum mismatch in tensor '%s', extent at offset %u length %u "
            "(expected xxh3 %016x, got %016x): the file is corrupt or was torn by a crash",
            path_, e.name, e.offset, e.length, e.checksum, got)));
        return;
      }
    }
    done(absl::OkStatus());
  };
  return engine_.submit({IoOp::kRead, file_, e.offset, buffer, e.capacity, std::move(on_read)})
      .status();
}

}  // namespace strata::swap
