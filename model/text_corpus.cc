#include "model/text_corpus.h"

#include <fcntl.h>
#include <glob.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <filesystem>
#include <set>
#include <system_error>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "core/file_util.h"
#include "core/host_info.h"
#include "core/status.h"

namespace strata::model {
namespace {

namespace fs = std::filesystem;

bool has_glob_chars(const std::string& s) { return s.find_first_of("*?[") != std::string::npos; }

// Files in a folder that are not text for our purposes: fortune's random
// access indexes (binary, beside every text file) and anything with a NUL.
bool skip_by_name(const fs::path& p) { return p.extension() == ".dat"; }

absl::Status add_folder(const fs::path& dir, std::vector<std::string>* out) {
  std::error_code ec;
  fs::recursive_directory_iterator it(dir, fs::directory_options::skip_permission_denied, ec);
  if (ec) {
    return absl::InvalidArgumentError(absl::StrCat("--data ", dir.string(), ": cannot list (",
                                                   ec.message(), "); check its permissions"));
  }
  for (; it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (ec) break;
    // symlink_status: regular files only, so fortune's ".u8" links to the
    // same text are not read twice.
    if (!it->is_symlink() && it->is_regular_file() && !skip_by_name(it->path())) {
      out->push_back(it->path().string());
    }
  }
  if (ec) {
    return absl::InvalidArgumentError(absl::StrCat("--data ", dir.string(), ": cannot list (",
                                                   ec.message(), "); check its permissions"));
  }
  return absl::OkStatus();
}

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

}  // namespace

absl::StatusOr<std::vector<std::string>> list_corpus_files(const std::string& path) {
  if (path.empty()) {
    return absl::InvalidArgumentError("--data is empty; give a text file, a folder or a glob");
  }
  std::vector<std::string> roots;  // given or matched; files here are taken as is
  bool from_glob = false;
  std::error_code ec;
  if (fs::exists(path, ec)) {
    roots.push_back(path);
  } else if (has_glob_chars(path)) {
    glob_t g{};
    const int rc = ::glob(path.c_str(), 0, nullptr, &g);
    if (rc == 0) {
      for (size_t i = 0; i < g.gl_pathc; ++i) roots.emplace_back(g.gl_pathv[i]);
    }
    ::globfree(&g);
    if (rc != 0 || roots.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--data ", path,
                       ": the pattern matches no file; check the pattern, or "
                       "give a text file or a folder"));
    }
    from_glob = true;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--data ", path,
                     ": no such file or folder; give a text file, a folder of text files or a "
                     "glob (the default corpus is /usr/share/games/fortunes: apt-get install "
                     "fortunes)"));
  }

  std::vector<std::string> files;
  for (const std::string& root : roots) {
    if (fs::is_directory(root, ec)) {
      STRATA_RETURN_IF_ERROR(add_folder(root, &files));
    } else if (fs::is_regular_file(root, ec)) {
      if (!from_glob || !skip_by_name(root)) files.push_back(root);
    }
  }
  // Sorted, each file once (a glob may match a file and a link to it).
  std::sort(files.begin(), files.end());
  std::set<std::string> seen;
  std::erase_if(files, [&](const std::string& f) {
    std::error_code canon_ec;
    const fs::path c = fs::canonical(f, canon_ec);
    return !seen.insert(canon_ec ? f : c.string()).second;
  });
  if (files.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--data ", path, ": no regular file found there; point it at text files"));
  }
  return files;
}

class TextCorpus::MappedFile {
 public:
  // Maps `path` read-only; `size` (> 0) as fstat saw it when the file was checked.
  static absl::StatusOr<std::unique_ptr<MappedFile>> open(const std::string& path) {
    // A FIFO in a glob must not block the open: refused as not a regular file.
    STRATA_ASSIGN_OR_RETURN(const OpenedFile f, open_regular_file(path), "--data");
    const int fd = f.fd;
    std::unique_ptr<MappedFile> m(new MappedFile());
    m->size_ = static_cast<size_t>(f.size);
    if (m->size_ > 0) {
      void* p = ::mmap(nullptr, m->size_, PROT_READ, MAP_PRIVATE, fd, 0);
      const int err = errno;
      ::close(fd);
      if (p == MAP_FAILED) return errno_status(err, absl::StrCat("cannot map ", path));
      m->data_ = static_cast<const char*>(p);
    } else {
      ::close(fd);
    }
    return m;
  }
  ~MappedFile() {
    if (data_ != nullptr) ::munmap(const_cast<char*>(data_), size_);
  }
  std::string_view text() const { return {data_, size_}; }

 private:
  MappedFile() = default;
  const char* data_ = nullptr;
  size_t size_ = 0;
};

TextCorpus::TextCorpus() = default;
TextCorpus::~TextCorpus() = default;

int64_t TextCorpus::size() const {
  if (!tokens_.empty()) return static_cast<int64_t>(tokens_.size());
  return piece_start_.empty() ? 0
                              : piece_start_.back() + static_cast<int64_t>(bytes_.back().size());
}

uint64_t TextCorpus::resident_bytes() const {
  return tokens_.empty() ? static_cast<uint64_t>(size()) : tokens_.size() * sizeof(int32_t);
}

absl::StatusOr<std::unique_ptr<TextCorpus>> TextCorpus::from_text(
    std::string_view text, const std::string& source, const TextCorpusOptions& options) {
  std::unique_ptr<TextCorpus> c(new TextCorpus());
  c->owned_ = std::string(text);
  std::vector<std::string_view> pieces;
  if (!c->owned_.empty()) pieces.push_back(c->owned_);
  return build(std::move(c), pieces, source, options);
}

absl::Status TextCorpus::encode_bpe(const std::vector<std::string_view>& pieces,
                                    const std::string& source) {
  uint64_t text_bytes = 0;
  for (std::string_view p : pieces) text_bytes += p.size();
  const uint64_t available = probe_host().memory.usable_bytes();
  // Half: the model, the optimizer and the host tier need the rest.
  const uint64_t budget = available / 2;
  auto too_large = [&](uint64_t need, std::string_view when) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "--data ", source, ": ", text_bytes, " bytes of text as BPE tokens would take ",
        std::string(when), need, " bytes of memory, more than half of the ", available,
        " bytes available (MemAvailable, within any cgroup limit); use less text, or byte-level "
        "tokens (no --vocab), which are read from the files without a copy"));
  };
  // GPT-2's BPE averages about 4 bytes of English a token, so the tokens take
  // about as many bytes as the text (4 bytes each): refuse before encoding
  // what would clearly not fit, and stop if the text tokenizes worse.
  if (available > 0 && text_bytes > budget) return too_large(text_bytes, "about ");
  tokens_.reserve(text_bytes / 4 + 1);
  constexpr size_t kChunk = size_t{8} << 20;
  for (std::string_view piece : pieces) {
    while (!piece.empty()) {
      // Cut at a newline that follows a non-space byte: GPT-2's pre-tokenizer
      // always ends a piece there, so encoding the chunks one by one gives the
      // same tokens as encoding the whole text.
      size_t cut = piece.size();
      if (piece.size() > kChunk) {
        for (size_t i = kChunk; i < piece.size(); ++i) {
          if (piece[i] == '\n' && !absl::ascii_isspace(static_cast<unsigned char>(piece[i - 1]))) {
            cut = i;
            break;
          }
        }
      }
      std::vector<int32_t> ids = options_.tokenizer->encode(piece.substr(0, cut));
      tokens_.insert(tokens_.end(), ids.begin(), ids.end());
      piece.remove_prefix(cut);
      const uint64_t held = tokens_.capacity() * sizeof(int32_t);
      if (available > 0 && held > budget) return too_large(held, "at least ");
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<TextCorpus>> TextCorpus::build(
    std::unique_ptr<TextCorpus> c, const std::vector<std::string_view>& pieces,
    const std::string& source, const TextCorpusOptions& options) {
  if (options.micro_batch < 1 || options.seq_len < 1 || !(options.val_fraction > 0) ||
      !(options.val_fraction < 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "corpus options: micro batch ", options.micro_batch, ", seq_len ", options.seq_len,
        ", val_fraction ", options.val_fraction, "; need B >= 1, T >= 1 and 0 < fraction < 1"));
  }
  if (options.world_size < 1 || options.rank < 0 || options.rank >= options.world_size) {
    return absl::InvalidArgumentError(absl::StrCat("corpus options: rank ", options.rank,
                                                   " of world size ", options.world_size,
                                                   "; need 0 <= rank < world size"));
  }
  if (pieces.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--data ", source, ": the corpus is empty; give files with text in them"));
  }
  c->options_ = options;
  if (options.tokenizer != nullptr) {
    STRATA_RETURN_IF_ERROR(c->encode_bpe(pieces, source));
    c->vocab_size_ = options.tokenizer->vocab_size();
  } else {
    int64_t at = 0;
    for (std::string_view p : pieces) {
      c->bytes_.push_back(p);
      c->piece_start_.push_back(at);
      at += static_cast<int64_t>(p.size());
    }
    c->vocab_size_ = kGpt2ByteVocab;
  }
  const int64_t n = c->size();
  const int64_t seq = options.seq_len + 1;  // one sequence and its last target
  const int64_t val = std::max<int64_t>(
      seq, static_cast<int64_t>(std::ceil(static_cast<double>(n) * options.val_fraction)));
  if (n - val < seq) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--data ", source, ": the corpus has ", n, " tokens (",
        options.tokenizer != nullptr ? "BPE" : "bytes", "), too few for a sequence of ",
        options.seq_len, " in both the training split and the validation split (",
        options.val_fraction * 100, "%, at least ", seq, " tokens); need at least ", val + seq,
        " tokens: add text or lower --seq-len"));
  }
  c->split_ = n - val;
  return c;
}

absl::StatusOr<std::unique_ptr<TextCorpus>> load_text_corpus(const std::string& path,
                                                             const TextCorpusOptions& options) {
  STRATA_ASSIGN_OR_RETURN(std::vector<std::string> files, list_corpus_files(path));
  const bool single_file = files.size() == 1 && files.front() == path;
  std::unique_ptr<TextCorpus> c(new TextCorpus());
  static constexpr std::string_view kNewline = "\n";
  std::vector<std::string_view> pieces;
  for (const std::string& f : files) {
    STRATA_ASSIGN_OR_RETURN(std::unique_ptr<TextCorpus::MappedFile> m,
                            TextCorpus::MappedFile::open(f), absl::StrCat("reading --data ", path));
    const std::string_view text = m->text();
    if (text.empty()) continue;
    // A file given by name is the user's choice; in a folder or glob, skip
    // what looks binary.
    if (!single_file && text.find('\0') != std::string_view::npos) continue;
    pieces.push_back(text);
    if (text.back() != '\n') pieces.push_back(kNewline);
    c->files_.push_back(f);
    c->maps_.push_back(std::move(m));
  }
  if (pieces.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--data ", path, ": the corpus is empty (", files.size(),
        " file(s), none with text; binary files are skipped); give files with text in them"));
  }
  STRATA_ASSIGN_OR_RETURN(c, TextCorpus::build(std::move(c), pieces, path, options));
  // BPE tokens are a copy: the files are no longer needed.
  if (options.tokenizer != nullptr) c->maps_.clear();
  return c;
}

void TextCorpus::fill_row(int64_t start, int32_t* inputs, int32_t* targets) const {
  const int64_t t_len = options_.seq_len;
  if (!tokens_.empty()) {
    const int32_t* p = tokens_.data() + start;
    for (int64_t t = 0; t < t_len; ++t) {
      inputs[t] = p[t];
      targets[t] = p[t + 1];
    }
    return;
  }
  // The piece holding `start`, then on through the next ones.
  size_t i = static_cast<size_t>(std::upper_bound(piece_start_.begin(), piece_start_.end(), start) -
                                 piece_start_.begin() - 1);
  int64_t off = start - piece_start_[i];
  auto next = [&]() -> int32_t {
    while (off >= static_cast<int64_t>(bytes_[i].size())) {
      ++i;
      off = 0;
    }
    return static_cast<unsigned char>(bytes_[i][off++]);
  };
  int32_t prev = next();
  for (int64_t t = 0; t < t_len; ++t) {
    inputs[t] = prev;
    prev = next();
    targets[t] = prev;
  }
}

int64_t TextCorpus::global_row(int64_t index) const {
  return (index * options_.world_size + options_.rank) * options_.micro_batch;
}

void TextCorpus::train_batch(int64_t index, int32_t* inputs, int32_t* targets) {
  const int64_t b = options_.micro_batch, t = options_.seq_len;
  // Offsets 0..split_-T-1 keep every target inside the training split.
  const auto starts = static_cast<uint64_t>(split_ - t);
  const int64_t first = global_row(index);
  for (int64_t r = 0; r < b; ++r) {
    const uint64_t key = splitmix64(options_.seed ^ splitmix64(static_cast<uint64_t>(first + r)));
    const auto start = static_cast<int64_t>(key % starts);
    fill_row(start, inputs + r * t, targets + r * t);
  }
}

void TextCorpus::val_batch(int64_t index, int32_t* inputs, int32_t* targets) {
  const int64_t b = options_.micro_batch, t = options_.seq_len;
  const int64_t windows = val_windows();
  const int64_t first = global_row(index);
  for (int64_t r = 0; r < b; ++r) {
    const int64_t w = ((first + r) % windows + windows) % windows;
    fill_row(split_ + w * t, inputs + r * t, targets + r * t);
  }
}

}  // namespace strata::model
