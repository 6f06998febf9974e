#include "model/text_corpus.h"

#include <glob.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <set>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "core/file_util.h"
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

absl::StatusOr<std::unique_ptr<TextCorpus>> TextCorpus::from_text(
    std::string_view text, const std::string& source, const TextCorpusOptions& options) {
  if (options.micro_batch < 1 || options.seq_len < 1 || !(options.val_fraction > 0) ||
      !(options.val_fraction < 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "corpus options: micro batch ", options.micro_batch, ", seq_len ", options.seq_len,
        ", val_fraction ", options.val_fraction, "; need B >= 1, T >= 1 and 0 < fraction < 1"));
  }
  if (text.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--data ", source, ": the corpus is empty; give files with text in them"));
  }
  std::unique_ptr<TextCorpus> c(new TextCorpus());
  if (options.tokenizer != nullptr) {
    c->tokens_ = options.tokenizer->encode(text);
    c->vocab_size_ = options.tokenizer->vocab_size();
  } else {
    c->tokens_.assign(reinterpret_cast<const unsigned char*>(text.data()),
                      reinterpret_cast<const unsigned char*>(text.data()) + text.size());
    c->vocab_size_ = kGpt2ByteVocab;
  }
  const int64_t n = static_cast<int64_t>(c->tokens_.size());
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
  c->options_ = options;
  return c;
}

absl::StatusOr<std::unique_ptr<TextCorpus>> load_text_corpus(const std::string& path,
                                                             const TextCorpusOptions& options) {
  STRATA_ASSIGN_OR_RETURN(std::vector<std::string> files, list_corpus_files(path));
  const bool single_file = files.size() == 1 && files.front() == path;
  std::string text;
  std::vector<std::string> used;
  for (const std::string& f : files) {
    STRATA_ASSIGN_OR_RETURN(std::string contents, read_file(f),
                            absl::StrCat("reading --data ", path));
    // A file given by name is the user's choice; in a folder or glob, skip
    // what looks binary.
    if (!single_file && contents.find('\0') != std::string::npos) continue;
    if (contents.empty()) continue;
    text += contents;
    if (text.back() != '\n') text += '\n';
    used.push_back(f);
  }
  if (text.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--data ", path, ": the corpus is empty (", files.size(),
        " file(s), none with text; binary files are skipped); give files with text in them"));
  }
  STRATA_ASSIGN_OR_RETURN(std::unique_ptr<TextCorpus> c,
                          TextCorpus::from_text(text, path, options));
  c->files_ = std::move(used);
  return c;
}

void TextCorpus::fill_row(int64_t start, int32_t* inputs, int32_t* targets) const {
  const int32_t* p = tokens_.data() + start;
  for (int64_t t = 0; t < options_.seq_len; ++t) {
    inputs[t] = p[t];
    targets[t] = p[t + 1];
  }
}

void TextCorpus::train_batch(int64_t index, int32_t* inputs, int32_t* targets) {
  const int64_t b = options_.micro_batch, t = options_.seq_len;
  // Offsets 0..split_-T-1 keep every target inside the training split.
  const auto starts = static_cast<uint64_t>(split_ - t);
  for (int64_t r = 0; r < b; ++r) {
    const uint64_t key = splitmix64(
        options_.seed ^ splitmix64(static_cast<uint64_t>(index) * b + static_cast<uint64_t>(r)));
    const auto start = static_cast<int64_t>(key % starts);
    fill_row(start, inputs + r * t, targets + r * t);
  }
}

void TextCorpus::val_batch(int64_t index, int32_t* inputs, int32_t* targets) {
  const int64_t b = options_.micro_batch, t = options_.seq_len;
  const int64_t windows = val_windows();
  for (int64_t r = 0; r < b; ++r) {
    const int64_t w = ((index * b + r) % windows + windows) % windows;
    fill_row(split_ + w * t, inputs + r * t, targets + r * t);
  }
}

}  // namespace strata::model
