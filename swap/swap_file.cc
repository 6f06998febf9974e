#include "swap/swap_file.h"

#include <xxhash.h>

#include <algorithm>
#include <cstring>
#include <future>
#include <random>
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
constexpr size_t kSumAt = 8;        // the label checksum
constexpr size_t kSummedFrom = 16;  // what it covers: [16, kSwapLabelBytes)
constexpr size_t kPathAt = 80;
constexpr size_t kMaxLabelPath = kSwapLabelBytes - kPathAt - 2;
// A table entry is at most 4,136 bytes: this allows ~60,000 of the largest.
constexpr uint32_t kMaxTableBytes = uint32_t{256} << 20;
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

uint64_t label_sum(const char* label) {
  return XXH3_64bits(label + kSummedFrom, kSwapLabelBytes - kSummedFrom);
}

// Version 1 (before stripe labels) kept its checksum at 48 over [0, 48).
// Recognised only to say "recreate it" instead of "corrupt".
bool is_version1_header(const char* p) {
  uint32_t version = 0;
  uint64_t sum = 0;
  std::memcpy(&version, p + 8, 4);
  std::memcpy(&sum, p + 48, 8);
  return version == 1 && XXH3_64bits(p, 48) == sum;
}

struct Label {
  uint32_t version = 0, state = 0, index = 0, count = 0;
  uint64_t run_id = 0, block_size = 0, header_bytes = 0, data_bytes = 0;
  uint32_t tensor_count = 0, table_bytes = 0;
  uint64_t table_sum = 0;
  std::string path;
};

// Decodes a label whose magic and checksum were verified.
Label decode_label(const char* p) {
  Label l;
  Reader r(p + kSummedFrom, kSwapLabelBytes - kSummedFrom);
  uint16_t path_len = 0;
  r.get(l.version);
  r.get(l.state);
  r.get(l.run_id);
  r.get(l.index);
  r.get(l.count);
  r.get(l.block_size);
  r.get(l.header_bytes);
  r.get(l.data_bytes);
  r.get(l.tensor_count);
  r.get(l.table_bytes);
  r.get(l.table_sum);
  r.get(path_len);
  r.get_string(std::min<size_t>(path_len, kMaxLabelPath), l.path);
  return l;
}

uint64_t random_run_id() {
  std::random_device rd;
  uint64_t id = 0;
  while (id == 0) id = (uint64_t{rd()} << 32) ^ rd();
  return id;
}

}  // namespace

SwapFile::SwapFile(IoEngine& engine, FileId file, std::vector<std::string> paths,
                   SwapFileOptions options)
    : engine_(engine),
      file_(file),
      paths_(std::move(paths)),
      path_(absl::StrJoin(paths_, ",")),
      options_(options) {}

SwapFile::~SwapFile() { (void)engine_.close(file_); }

uint64_t SwapFile::label_stride() const {
  return paths_.size() == 1 ? kSwapLabelBytes : block_size_;
}

absl::StatusOr<std::unique_ptr<SwapFile>> SwapFile::create(IoEngine& engine,
                                                           const std::vector<std::string>& paths,
                                                           const std::vector<TensorSpec>& specs,
                                                           SwapFileOptions options) {
  const std::string where = absl::StrJoin(paths, ",");
  if (paths.empty() || paths.size() > 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("swap file: 1..4096 stripe paths needed, got ", paths.size()));
  }
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
  if (table_bytes_for(specs) > kMaxTableBytes) {
    return absl::InvalidArgumentError(absl::StrCat("swap file ", where, ": the table of ",
                                                   specs.size(), " tensors exceeds ",
                                                   kMaxTableBytes, " bytes; use fewer tensors"));
  }
  STRATA_ASSIGN_OR_RETURN(FileId file, engine.open(paths, {.create = true, .truncate = true}),
                          "creating swap file");
  std::unique_ptr<SwapFile> f(new SwapFile(engine, file, paths, options));
  f->block_size_ = engine.options().block_size;
  f->run_id_ = options.run_id != 0 ? options.run_id : random_run_id();
  f->header_bytes_ = align_up(f->table_offset() + table_bytes_for(specs), kDirectAlignment);
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
  // An all-zero label 0 reads back as "never committed" until commit().
  STRATA_RETURN_IF_ERROR(
      f->write_at(0, std::string(kSwapLabelBytes, '\0'), "initialising the header of"));
  return f;
}

absl::StatusOr<std::unique_ptr<SwapFile>> SwapFile::open(IoEngine& engine,
                                                         const std::vector<std::string>& paths,
                                                         SwapFileOptions options) {
  if (paths.empty()) return absl::InvalidArgumentError("swap file: no path given");
  STRATA_ASSIGN_OR_RETURN(FileId file, engine.open(paths, {}), "opening swap file");
  std::unique_ptr<SwapFile> f(new SwapFile(engine, file, paths, options));
  STRATA_RETURN_IF_ERROR(f->parse_header());
  f->clean_label_on_disk_ = true;
  f->committed_ = true;
  return f;
}

absl::Status SwapFile::parse_header() {
  const std::string& p = path_;
  STRATA_ASSIGN_OR_RETURN(uint64_t size, engine_.size(file_));
  if (size < kSwapLabelBytes) {
    return absl::DataLossError(absl::StrCat("swap file ", p, " is truncated: ", size,
                                            " bytes, shorter than a header (offset 0)"));
  }
  AlignedBuffer first(kSwapLabelBytes);
  STRATA_RETURN_IF_ERROR(engine_.read(file_, 0, first.data(), first.size()),
                         absl::StrCat("reading the header of ", p));
  if (std::memcmp(first.data(), kSwapMagic, sizeof(kSwapMagic)) != 0) {
    bool zero = std::all_of(first.data(), first.data() + kPathAt, [](char c) { return c == 0; });
    if (zero) {
      return absl::DataLossError(
          absl::StrCat("swap file ", p,
                       " has no header at offset 0: it was created but never committed "
                       "(interrupted run?); delete it and let strata recreate it"));
    }
    return absl::InvalidArgumentError(absl::StrCat(
        "file ", p, " is not a strata swap file (wrong magic at offset 0); check the nvme_path",
        paths_.size() > 1 ? " and the order of the stripe paths" : ""));
  }
  // The checksum first: until it matches, no field (the version included) means anything.
  uint64_t stored_sum = 0;
  std::memcpy(&stored_sum, first.data() + kSumAt, sizeof(stored_sum));
  if (label_sum(first.data()) != stored_sum) {
    if (is_version1_header(first.data())) {
      return absl::FailedPreconditionError(
          absl::StrCat("swap file ", p, " has format version 1 at offset 8; this strata reads ",
                       kSwapVersion, ": delete it and let strata recreate it"));
    }
    return absl::DataLossError(absl::StrCat("swap file ", p,
                                            ": header checksum mismatch at offset 0 (torn or "
                                            "corrupt header)"));
  }
  const Label l = decode_label(first.data());
  if (l.version != kSwapVersion) {
    return absl::FailedPreconditionError(
        absl::StrCat("swap file ", p, " has format version ", l.version,
                     " at offset 16; this strata reads ", kSwapVersion));
  }
  if (l.state == kStateDirty) {
    return absl::DataLossError(
        absl::StrCat("swap file ", p,
                     " (state at offset 20) was being updated and never committed; its "
                     "extents may be torn: recreate it"));
  }
  if (l.index != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("swap file ", p, ": the first path ", paths_[0], " holds stripe ", l.index,
                     " of ", l.count, " (created as ", l.path,
                     "); pass the stripe paths in the order the file was "
                     "created with"));
  }
  if (l.count != paths_.size()) {
    return absl::FailedPreconditionError(
        absl::StrCat("swap file ", p, " was created striped over ", l.count,
                     " path(s) but is "
                     "opened with ",
                     paths_.size(), "; pass all of its stripe paths, in order"));
  }
  run_id_ = l.run_id;
  block_size_ = l.block_size;
  // One path is not striped: the block size does not change where bytes are.
  if (paths_.size() > 1 && l.block_size != engine_.options().block_size) {
    return absl::FailedPreconditionError(
        absl::StrCat("swap file ", p, " was striped with block_size ", l.block_size,
                     " bytes but the I/O engine uses ", engine_.options().block_size,
                     "; reopen it with aio.block_size ", l.block_size, " (or recreate it)"));
  }
  header_bytes_ = l.header_bytes;
  data_bytes_ = l.data_bytes;
  if (l.state != kStateClean || l.block_size % kDirectAlignment != 0 || l.block_size == 0 ||
      header_bytes_ % kDirectAlignment != 0 || l.table_bytes > kMaxTableBytes ||
      table_offset() + l.table_bytes > header_bytes_ || data_bytes_ < header_bytes_) {
    return absl::DataLossError(
        absl::StrCat("swap file ", p, ": inconsistent header fields at offset 16..64"));
  }
  if (size < data_bytes_) {
    return absl::DataLossError(absl::StrCat("swap file ", p, " is truncated: ", size,
                                            " bytes but the header says ", data_bytes_,
                                            "; data past offset ", size, " is missing"));
  }
  for (uint32_t i = 1; i < l.count; ++i) STRATA_RETURN_IF_ERROR(check_member_label(i, l.count));
  committed_table_bytes_ = l.table_bytes;
  committed_table_sum_ = l.table_sum;
  return parse_table(l.tensor_count, l.table_bytes, l.table_sum);
}

absl::Status SwapFile::check_member_label(uint32_t index, uint32_t count) {
  const uint64_t at = uint64_t{index} * label_stride();
  const std::string& member = paths_[index];
  AlignedBuffer buf(kSwapLabelBytes);
  STRATA_RETURN_IF_ERROR(engine_.read(file_, at, buf.data(), buf.size()),
                         absl::StrCat("reading the stripe label of ", member));
  uint64_t stored_sum = 0;
  std::memcpy(&stored_sum, buf.data() + kSumAt, sizeof(stored_sum));
  if (std::memcmp(buf.data(), kSwapMagic, sizeof(kSwapMagic)) != 0 ||
      label_sum(buf.data()) != stored_sum) {
    return absl::FailedPreconditionError(absl::StrCat(
        "swap file ", path_, ": stripe path ", index, " (", member,
        ") has no valid stripe label at its offset 0; it is not a member of this file or the "
        "stripe paths are in another order than at creation"));
  }
  const Label l = decode_label(buf.data());
  if (l.run_id != run_id_ || l.count != count || l.index != index) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "swap file %s: stripe path %u (%s) holds stripe %u of %u of run %016x (created as %s), "
        "not stripe %u of run %016x; pass the stripe paths in the order the file was created with",
        path_, index, member, l.index, l.count, l.run_id, l.path, index, run_id_));
  }
  return absl::OkStatus();
}

absl::Status SwapFile::parse_table(uint32_t count, uint32_t table_bytes, uint64_t table_sum) {
  const std::string& p = path_;
  const uint64_t from = table_offset() / kDirectAlignment * kDirectAlignment;
  AlignedBuffer region(align_up(table_offset() + table_bytes, kDirectAlignment) - from);
  STRATA_RETURN_IF_ERROR(engine_.read(file_, from, region.data(), region.size()),
                         absl::StrCat("reading the tensor table of ", p));
  const char* table = region.data() + (table_offset() - from);
  if (XXH3_64bits(table, table_bytes) != table_sum) {
    return absl::DataLossError(absl::StrCat("swap file ", p,
                                            ": tensor table checksum mismatch (offset ",
                                            table_offset(), ", ", table_bytes, " bytes)"));
  }
  Reader t(table, table_bytes);
  uint64_t next = header_bytes_;
  for (uint32_t i = 0; i < count; ++i) {
    TensorExtent e;
    uint16_t name_len = 0;
    uint8_t dtype = 0, flags = 0;
    bool ok = t.get(name_len) && t.get_string(name_len, e.name) && t.get(dtype) && t.get(flags) &&
              t.get(e.numel) && t.get(e.offset) && t.get(e.length) && t.get(e.checksum);
    const uint64_t entry_at = table_offset() + t.pos();
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

std::string SwapFile::encode_table() const {
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
  return table;
}

std::string SwapFile::encode_label(uint32_t state, uint32_t index, uint32_t table_bytes,
                                   uint64_t table_sum) const {
  std::string out(kSwapMagic, sizeof(kSwapMagic));
  put<uint64_t>(out, 0);  // the checksum, filled in below
  put<uint32_t>(out, kSwapVersion);
  put<uint32_t>(out, state);
  put<uint64_t>(out, run_id_);
  put<uint32_t>(out, index);
  put<uint32_t>(out, static_cast<uint32_t>(paths_.size()));
  put<uint64_t>(out, block_size_);
  put<uint64_t>(out, header_bytes_);
  put<uint64_t>(out, data_bytes_);
  put<uint32_t>(out, static_cast<uint32_t>(tensors_.size()));
  put<uint32_t>(out, table_bytes);
  put<uint64_t>(out, table_sum);
  const std::string& member = paths_[index];
  const size_t len = std::min(member.size(), kMaxLabelPath);
  put<uint16_t>(out, static_cast<uint16_t>(len));
  out.append(member, 0, len);
  out.resize(kSwapLabelBytes, '\0');
  const uint64_t sum = label_sum(out.data());
  std::memcpy(out.data() + kSumAt, &sum, sizeof(sum));
  return out;
}

absl::Status SwapFile::write_at(uint64_t offset, const std::string& bytes, const char* what) {
  const uint64_t from = offset / kDirectAlignment * kDirectAlignment;
  AlignedBuffer buf(offset - from + bytes.size());
  if (from != offset) {  // keep what precedes the bytes in their first block
    STRATA_RETURN_IF_ERROR(engine_.read(file_, from, buf.data(), kDirectAlignment),
                           absl::StrCat(what, " swap file ", path_));
  }
  std::memcpy(buf.data() + (offset - from), bytes.data(), bytes.size());
  return annotate(engine_.write(file_, from, buf.data(), buf.size()),
                  absl::StrCat(what, " swap file ", path_));
}

absl::Status SwapFile::mark_dirty() {
  STRATA_RETURN_IF_ERROR(
      write_at(0, encode_label(kStateDirty, 0, committed_table_bytes_, committed_table_sum_),
               "marking dirty"));
  return annotate(engine_.sync(file_), absl::StrCat("marking swap file ", path_, " dirty"));
}

absl::Status SwapFile::write_clean_header(const std::string& table) {
  const uint32_t table_bytes = static_cast<uint32_t>(table.size());
  const uint64_t table_sum = XXH3_64bits(table.data(), table.size());
  // The table and the other members' labels, then one fsync for them and the
  // extents; label 0, which vouches for all of it, last.
  STRATA_RETURN_IF_ERROR(write_at(table_offset(), table, "writing the tensor table of"));
  for (uint32_t i = 1; i < paths_.size(); ++i) {
    STRATA_RETURN_IF_ERROR(write_at(i * label_stride(),
                                    encode_label(kStateClean, i, table_bytes, table_sum),
                                    "writing a stripe label of"));
  }
  STRATA_RETURN_IF_ERROR(engine_.sync(file_), absl::StrCat("committing swap file ", path_));
  STRATA_RETURN_IF_ERROR(
      write_at(0, encode_label(kStateClean, 0, table_bytes, table_sum), "writing the header of"));
  STRATA_RETURN_IF_ERROR(engine_.sync(file_), absl::StrCat("committing swap file ", path_));
  std::lock_guard lock(mu_);
  committed_table_bytes_ = table_bytes;
  committed_table_sum_ = table_sum;
  return absl::OkStatus();
}

absl::Status SwapFile::commit() {
  std::unique_lock lock(mu_);
  idle_.wait(lock, [&] { return !header_busy_; });
  header_busy_ = true;  // holds new writes back until the header is on disk
  idle_.wait(lock, [&] { return writes_in_flight_ == 0; });
  if (committed_) {  // nothing written since the last commit
    header_busy_ = false;
    idle_.notify_all();
    return absl::OkStatus();
  }
  const std::string table = encode_table();
  lock.unlock();
  absl::Status s = write_clean_header(table);
  lock.lock();
  header_busy_ = false;
  committed_ = s.ok();
  // Even a failed commit may have left a clean label 0: the next write marks it dirty again.
  clean_label_on_disk_ = true;
  idle_.notify_all();
  return annotate(s, "committing");
}

std::vector<TensorExtent> SwapFile::tensors() const {
  std::lock_guard lock(mu_);
  return tensors_;
}

absl::StatusOr<TensorExtent> SwapFile::find(const std::string& name) const {
  std::lock_guard lock(mu_);
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
    std::unique_lock lock(mu_);
    idle_.wait(lock, [&] { return !header_busy_; });
    // A committed header must not vouch for an extent being rewritten.
    if (clean_label_on_disk_) {
      header_busy_ = true;
      lock.unlock();
      absl::Status s = mark_dirty();
      lock.lock();
      header_busy_ = false;
      if (s.ok()) clean_label_on_disk_ = false;
      idle_.notify_all();
      STRATA_RETURN_IF_ERROR(s);
    }
    ++writes_in_flight_;
    committed_ = false;
    e = tensors_[i];
  }
  const bool checksums = options_.checksums;
  const uint64_t sum = checksums ? XXH3_64bits(buffer, e.length) : 0;
  auto on_written = [this, i, sum, checksums, name, done = std::move(done)](const absl::Status& s) {
    {
      std::lock_guard lock(mu_);
      if (s.ok()) {
        tensors_[i].written = true;
        tensors_[i].checksummed = checksums;
        tensors_[i].checksum = sum;
      }
      --writes_in_flight_;
      idle_.notify_all();
    }
    done(annotate(s, absl::StrCat("writing tensor '", name, "' to swap file")));
  };
  absl::Status submitted = engine_
                               .submit({IoOp::kWrite, file_, e.offset, const_cast<void*>(buffer),
                                        e.capacity, std::move(on_written)})
                               .status();
  if (!submitted.ok()) {  // the callback will not run
    std::lock_guard lock(mu_);
    --writes_in_flight_;
    idle_.notify_all();
  }
  return submitted;
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
