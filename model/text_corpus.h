// TextCorpus: plain text as tokens, split into train and validation, served
// as a model::TokenSource. Tokens are bytes (vocabulary 256, token = byte
// value, no tokenizer, nothing to download) or, given a BpeTokenizer, its
// ids (the whole text encoded at load).
//
// Memory: a byte corpus is not copied: its files are mapped read-only, so a
// corpus larger than RAM costs page cache, not the process's own memory
// (truncating a file while it is in use ends the process with SIGBUS, as
// any mapped file would). A BPE corpus holds its tokens (4 bytes each, about
// one per 4 bytes of text), encoded in pieces from the mapped files; when
// they would take more than half of the memory available (MemAvailable,
// capped by the cgroup limit; core/host_info.h) loading stops with an error
// saying so, before the machine runs out.
//
// Where the text comes from (load_text_corpus / list_corpus_files): PATH is a
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
// train_batch(index) row r is global row g = (index * W + rank) * B + r of
// the data order, W = world_size: it starts at a pseudo-random offset drawn
// by splitmix64 from (seed, g): deterministic for a given index.
// val_batch(index) row r is window g of the validation split (consecutive
// windows, wrapping), so evaluating batches 0..K-1 always scores the same
// text.
// Data parallel: the W ranks' micro-batch `index` are disjoint slices of one
// global batch of W * B rows, and together exactly the rows one rank with
// micro batch W * B reads as its batch `index` (rank r has rows r*B..r*B+B-1
// of it). That is DeepSpeed's batch rule (train_batch_size = micro x
// accumulation x world) made exact: N ranks at micro batch m train on what
// one rank at micro batch N*m does.
//
// Errors (InvalidArgument, naming the path and what to do): a rank outside
// 0..world_size-1, a missing path,
// a glob with no matches, no text file found, an empty corpus, too few
// tokens for one train and one validation sequence; ResourceExhausted for a
// BPE corpus too large for this machine's memory. Threading: loading is a
// pure function; a loaded TextCorpus is immutable and its batch methods may
// be called from any thread.
//
//   STRATA_ASSIGN_OR_RETURN(auto corpus, model::load_text_corpus(
//       "/usr/share/games/fortunes", {.micro_batch = 8, .seq_len = 256}));
//   corpus->train_batch(0, inputs, targets);  // 8 x 256 each
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "model/bpe_tokenizer.h"
#include "model/gpt2_model.h"

namespace strata::model {

struct TextCorpusOptions {
  int64_t micro_batch = 4;     // B
  int64_t seq_len = 256;       // T
  uint64_t seed = 1337;        // training offsets
  double val_fraction = 0.05;  // of all tokens, taken from the end
  // nullptr: byte tokens; else this tokenizer's ids (used while loading only).
  const BpeTokenizer* tokenizer = nullptr;
  // This process's data-parallel rank and the world size (see "Batches").
  int rank = 0;
  int world_size = 1;
};

// The files PATH names (see above), sorted. Errors as above.
absl::StatusOr<std::vector<std::string>> list_corpus_files(const std::string& path);

class TextCorpus final : public TokenSource {
 public:
  // `text` is the whole corpus, tokenized as options.tokenizer says; `source`
  // names it in error messages.
  static absl::StatusOr<std::unique_ptr<TextCorpus>> from_text(std::string_view text,
                                                               const std::string& source,
                                                               const TextCorpusOptions& options);
  ~TextCorpus() override;

  void train_batch(int64_t index, int32_t* inputs, int32_t* targets) override;
  void val_batch(int64_t index, int32_t* inputs, int32_t* targets) override;

  int64_t train_tokens() const { return split_; }
  int64_t val_tokens() const { return size() - split_; }
  // Distinct validation windows of seq_len tokens (val_batch wraps after them).
  int64_t val_windows() const { return (val_tokens() - 1) / options_.seq_len; }
  const TextCorpusOptions& options() const { return options_; }
  // 256 for bytes, else the tokenizer's; every token is below it.
  int64_t vocab_size() const { return vocab_size_; }
  // Bytes of the process's resident memory the tokens can come to: a byte
  // corpus's mapped pages once training has touched them all (1 byte a
  // token, page cache counted in RSS), a BPE corpus's token array (4 bytes).
  uint64_t resident_bytes() const;
  // The files it was loaded from (empty for from_text).
  const std::vector<std::string>& files() const { return files_; }

 private:
  friend absl::StatusOr<std::unique_ptr<TextCorpus>> load_text_corpus(const std::string&,
                                                                      const TextCorpusOptions&);
  class MappedFile;  // a read-only mapping, unmapped with the corpus
  TextCorpus();
  // Tokenizes `pieces` (in order, as one text) into bytes_ or tokens_, then splits.
  static absl::StatusOr<std::unique_ptr<TextCorpus>> build(
      std::unique_ptr<TextCorpus> c, const std::vector<std::string_view>& pieces,
      const std::string& source, const TextCorpusOptions& options);
  absl::Status encode_bpe(const std::vector<std::string_view>& pieces, const std::string& source);
  void fill_row(int64_t start, int32_t* inputs, int32_t* targets) const;
  // Global row of the data order where this rank's batch `index` begins.
  int64_t global_row(int64_t index) const;
  int64_t size() const;

  // Byte tokens: the text as pieces (mapped files, "\n" separators, or
  // owned_) laid end to end; piece_start_[i] is where piece i begins.
  std::vector<std::string_view> bytes_;
  std::vector<int64_t> piece_start_;
  std::vector<std::unique_ptr<MappedFile>> maps_;
  std::string owned_;  // from_text's copy of its text
  // BPE tokens (empty for a byte corpus).
  std::vector<int32_t> tokens_;
  int64_t split_ = 0;  // first validation token
  int64_t vocab_size_ = 0;
  TextCorpusOptions options_;
  std::vector<std::string> files_;
};

// list_corpus_files(path), read and concatenated, then from_text.
absl::StatusOr<std::unique_ptr<TextCorpus>> load_text_corpus(const std::string& path,
                                                             const TextCorpusOptions& options);

// The byte-only names this class had; same behaviour with no tokenizer.
using ByteCorpus = TextCorpus;
using ByteCorpusOptions = TextCorpusOptions;
inline absl::StatusOr<std::unique_ptr<TextCorpus>> load_byte_corpus(
    const std::string& path, const TextCorpusOptions& options) {
  return load_text_corpus(path, options);
}

}  // namespace strata::model
