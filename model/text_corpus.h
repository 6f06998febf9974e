// ByteCorpus: plain text as byte-level tokens (vocabulary 256, token = byte
// value, no tokenizer, nothing to download), split into train and validation,
// served as a model::TokenSource.
//
// Where the text comes from (load_byte_corpus / list_corpus_files): PATH is a
// file (taken as is), a folder (walked recursively, regular files only; files
// that look binary, i.e. contain a NUL byte, and fortune's ".dat" index files
// are skipped) or a glob(3) pattern (each match as a file or folder; ".dat"
// matches skipped). Files are read in sorted path order, each once (a link
// to a file already listed is dropped), and concatenated (a newline is
// added after a file that does not end with one).
//
// Split: the last val_fraction (5%) of the tokens is validation, at least
// seq_len + 1 tokens (one sequence and its next-token target); the rest is
// training, which must also hold seq_len + 1 tokens.
//
// Batches (B x T int32, row-major; targets are the inputs shifted by one):
// train_batch(index) row r starts at a pseudo-random offset drawn by
// splitmix64 from (seed, index, r): deterministic for a given index.
// val_batch(index) rows are consecutive windows of the validation split
// (window index * B + r, wrapping), so evaluating batches 0..K-1 always
// scores the same text.
//
// Errors (InvalidArgument, naming the path and what to do): a missing path,
// a glob with no matches, no text file found, an empty corpus, too few
// tokens for one train and one validation sequence. Threading: loading is a
// pure function; a loaded ByteCorpus is immutable and its batch methods may
// be called from any thread.
//
//   STRATA_ASSIGN_OR_RETURN(auto corpus, model::load_byte_corpus(
//       "/usr/share/games/fortunes", {.micro_batch = 8, .seq_len = 256}));
//   corpus->train_batch(0, inputs, targets);  // 8 x 256 each
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/gpt2_model.h"

namespace strata::model {

struct ByteCorpusOptions {
  int64_t micro_batch = 4;     // B
  int64_t seq_len = 256;       // T
  uint64_t seed = 1337;        // training offsets
  double val_fraction = 0.05;  // of all tokens, taken from the end
};

// The files PATH names (see above), sorted. Errors as above.
absl::StatusOr<std::vector<std::string>> list_corpus_files(const std::string& path);

class ByteCorpus final : public TokenSource {
 public:
  // `text` is the whole corpus; `source` names it in error messages.
  static absl::StatusOr<std::unique_ptr<ByteCorpus>> from_text(std::string text,
                                                               const std::string& source,
                                                               const ByteCorpusOptions& options);

  void train_batch(int64_t index, int32_t* inputs, int32_t* targets) override;
  void val_batch(int64_t index, int32_t* inputs, int32_t* targets) override;

  int64_t train_tokens() const { return split_; }
  int64_t val_tokens() const { return static_cast<int64_t>(text_.size()) - split_; }
  // Distinct validation windows of seq_len tokens (val_batch wraps after them).
  int64_t val_windows() const { return (val_tokens() - 1) / options_.seq_len; }
  const ByteCorpusOptions& options() const { return options_; }
  // The files it was loaded from (empty for from_text).
  const std::vector<std::string>& files() const { return files_; }

 private:
  friend absl::StatusOr<std::unique_ptr<ByteCorpus>> load_byte_corpus(const std::string&,
                                                                      const ByteCorpusOptions&);
  ByteCorpus() = default;
  void fill_row(int64_t start, int32_t* inputs, int32_t* targets) const;

  std::string text_;
  int64_t split_ = 0;  // first validation token
  ByteCorpusOptions options_;
  std::vector<std::string> files_;
};

// list_corpus_files(path), read and concatenated, then from_text.
absl::StatusOr<std::unique_ptr<ByteCorpus>> load_byte_corpus(const std::string& path,
                                                             const ByteCorpusOptions& options);

}  // namespace strata::model
