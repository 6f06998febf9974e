// BpeTokenizer: OpenAI's GPT-2 byte-level BPE, loaded from the two files
// every GPT-2 release ships: vocab.json (encoder.json), a JSON object from
// token to id, and merges.txt (vocab.bpe), one merge "A B" per line in rank
// order after an optional "#version" line. Nothing is downloaded.
//
// Encoding, as GPT-2 does it:
//  1. "<|endoftext|>" in the text becomes the special end-of-text id.
//  2. The rest is split into pieces by GPT-2's pre-tokenizer
//     (gpt2_pretokenize): the contractions 's 't 're 've 'm 'll 'd, an
//     optional space then letters, an optional space then numbers, an
//     optional space then other symbols, and runs of whitespace (a run before
//     a non-space keeps its last character for the next piece, so " word"
//     stays one piece). Letters, numbers and whitespace are Unicode's (ICU's
//     general categories L* and N*, and White_Space). Bytes that are not
//     valid UTF-8 count as symbols, one byte each.
//  3. Each piece's bytes start as one symbol per byte (GPT-2's byte-to-unicode
//     alphabet); the adjacent pair with the lowest merge rank is merged, all
//     its occurrences at once, until no pair has a rank; symbols become ids.
// decode(encode(text)) == text for any bytes. The vocabulary is ids
// 0..N-1 with no gaps; the end-of-text token is the vocabulary's
// "<|endoftext|>" or, when it has none, the extra id N.
//
// Errors (load): a missing or unreadable file, malformed JSON, an id that is
// not a non-negative integer or a gap in the ids, a token with a character
// outside the byte alphabet, a byte with no token of its own, a merges line
// that is not two tokens, or a merge of or into a token the vocabulary lacks;
// each names the file and, where it can be found, the line. Either file
// larger than 64 MiB, or not a regular file (a FIFO, a device), is refused
// before it is read; vocab.json is read by the strict JSON reader
// (core/config/json_reader.h: a duplicate token or nesting is an error).
//
// Threading: a loaded tokenizer is immutable; encode/decode may be called
// from any thread.
//
//   STRATA_ASSIGN_OR_RETURN(model::BpeTokenizer tok,
//                           model::BpeTokenizer::load("vocab.json", "merges.txt"));
//   std::vector<int32_t> ids = tok.encode("Hello world");  // {15496, 995} with GPT-2's files
//   std::string text = tok.decode(ids);
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"

namespace strata::model {

inline constexpr std::string_view kEndOfText = "<|endoftext|>";

// GPT-2's pre-tokenizer: the pieces of `text` in order; they concatenate
// back to `text`. Views into `text`.
std::vector<std::string_view> gpt2_pretokenize(std::string_view text);

class BpeTokenizer {
 public:
  // Reads and parses both files (see above for the errors).
  static absl::StatusOr<BpeTokenizer> load(const std::string& vocab_path,
                                           const std::string& merges_path);
  // The same from the files' contents; the names appear in errors.
  static absl::StatusOr<BpeTokenizer> parse(std::string_view vocab_json,
                                            std::string_view merges_text,
                                            const std::string& vocab_name,
                                            const std::string& merges_name);

  std::vector<int32_t> encode(std::string_view text) const;
  // Ids outside [0, vocab_size()) decode to U+FFFD.
  std::string decode(std::span<const int32_t> ids) const;

  int64_t vocab_size() const { return static_cast<int64_t>(token_bytes_.size()); }
  int32_t end_of_text_id() const { return eot_id_; }
  int64_t merge_count() const { return static_cast<int64_t>(merges_.size()); }

 private:
  struct Merge {
    int32_t rank;
    int32_t result;
  };
  BpeTokenizer() = default;
  static uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  // Appends the ids of one pre-tokenizer piece.
  void encode_piece(std::string_view piece, std::vector<int32_t>* out) const;

  std::vector<std::string> token_bytes_;  // id -> the bytes it stands for
  int32_t byte_id_[256] = {};             // byte -> its single-byte token
  absl::flat_hash_map<uint64_t, Merge> merges_;
  int32_t eot_id_ = -1;
};

}  // namespace strata::model
