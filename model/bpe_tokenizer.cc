#include "model/bpe_tokenizer.h"

#include <unicode/uchar.h>

#include <algorithm>
#include <array>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/config/json_reader.h"
#include "core/file_util.h"
#include "core/status.h"
#include "nlohmann/json.hpp"

namespace strata::model {
namespace {

using nlohmann::json;

// GPT-2's vocab.json is 1 MiB and its merges 0.5 MiB; a vocabulary of the
// 2^24 ids allowed fits too. Larger is not a tokenizer file.
constexpr uint64_t kMaxTokenizerFileBytes = uint64_t{64} << 20;

// ---- UTF-8 ----------------------------------------------------------------

// The code point at s[i] and its length; an invalid or truncated sequence
// is one byte with code point -1.
std::pair<int32_t, size_t> next_code_point(std::string_view s, size_t i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) return {b0, 1};
  size_t len = 0;
  int32_t cp = 0;
  if ((b0 & 0xe0) == 0xc0) {
    len = 2, cp = b0 & 0x1f;
  } else if ((b0 & 0xf0) == 0xe0) {
    len = 3, cp = b0 & 0x0f;
  } else if ((b0 & 0xf8) == 0xf0) {
    len = 4, cp = b0 & 0x07;
  } else {
    return {-1, 1};
  }
  if (i + len > s.size()) return {-1, 1};
  for (size_t k = 1; k < len; ++k) {
    const auto b = static_cast<unsigned char>(s[i + k]);
    if ((b & 0xc0) != 0x80) return {-1, 1};
    cp = (cp << 6) | (b & 0x3f);
  }
  // Overlong forms, surrogates and values past U+10FFFF are not UTF-8.
  static constexpr int32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < kMin[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return {-1, 1};
  return {cp, len};
}

void append_utf8(int32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xc0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xe0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3f)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
  } else {
    out->push_back(static_cast<char>(0xf0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3f)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3f)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
  }
}

// ---- character classes of GPT-2's pattern ----------------------------------

enum class CharClass { kLetter, kNumber, kSpace, kOther };

CharClass classify(int32_t cp) {
  if (cp < 0) return CharClass::kOther;  // a stray byte
  if (cp < 0x80) {                       // the common case without ICU
    if ((cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z')) return CharClass::kLetter;
    if (cp >= '0' && cp <= '9') return CharClass::kNumber;
    if (cp == ' ' || (cp >= '\t' && cp <= '\r')) return CharClass::kSpace;
    return CharClass::kOther;
  }
  if (u_isUWhiteSpace(cp)) return CharClass::kSpace;
  const uint32_t mask = U_MASK(u_charType(cp));
  if (mask & U_GC_L_MASK) return CharClass::kLetter;
  if (mask & U_GC_N_MASK) return CharClass::kNumber;
  return CharClass::kOther;
}

// Length of a contraction ('s 't 're 've 'm 'll 'd) at the start of s, or 0.
size_t contraction_at(std::string_view s) {
  if (s.size() < 2 || s[0] != '\'') return 0;
  for (std::string_view c : {"s", "t", "m", "d", "re", "ve", "ll"}) {
    if (s.substr(1, c.size()) == c) return 1 + c.size();
  }
  return 0;
}

// ---- GPT-2's byte alphabet ---------------------------------------------------

// Byte b is shown as a printable code point: itself for '!'..'~', U+00A1..
// U+00AC and U+00AE..U+00FF; the other 68 bytes, in order, as U+0100 on.
std::array<int32_t, 256> make_byte_to_code_point() {
  std::array<int32_t, 256> map{};
  int32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
    map[b] = printable ? b : next++;
  }
  return map;
}

const std::array<int32_t, 256>& byte_to_code_point() {
  static const std::array<int32_t, 256> map = make_byte_to_code_point();
  return map;
}

// The inverse: code point -> byte, -1 outside the alphabet.
int code_point_to_byte(int32_t cp) {
  static const std::array<int16_t, 324> inverse = [] {
    std::array<int16_t, 324> inv{};
    inv.fill(-1);
    for (int b = 0; b < 256; ++b) inv[byte_to_code_point()[b]] = static_cast<int16_t>(b);
    return inv;
  }();
  return cp >= 0 && cp < static_cast<int32_t>(inverse.size()) ? inverse[cp] : -1;
}

// ---- file positions for messages -------------------------------------------

int64_t line_at(std::string_view text, size_t offset) {
  offset = std::min(offset, text.size());
  return 1 + std::count(text.begin(), text.begin() + static_cast<std::ptrdiff_t>(offset), '\n');
}

// "FILE:LINE" of the vocabulary entry for `token` when it can be found as
// written (raw UTF-8 or \u-escaped), else "FILE".
std::string where_in_vocab(std::string_view text, const std::string& name,
                           const std::string& token) {
  for (const std::string& quoted :
       {json(token).dump(), json(token).dump(-1, ' ', /*ensure_ascii=*/true)}) {
    const size_t at = text.find(quoted);
    if (at != std::string_view::npos) return absl::StrCat(name, ":", line_at(text, at));
  }
  return name;
}

std::string printable(std::string_view bytes) {
  return json(std::string(bytes)).dump(-1, ' ', true, json::error_handler_t::replace);
}

}  // namespace

std::vector<std::string_view> gpt2_pretokenize(std::string_view text) {
  std::vector<std::string_view> pieces;
  size_t i = 0;
  const size_t n = text.size();
  auto class_at = [&](size_t at) { return classify(next_code_point(text, at).first); };
  auto len_at = [&](size_t at) { return next_code_point(text, at).second; };
  // End of the run of characters, from `at`, whose class passes `in_run`.
  auto run_end = [&](size_t at, auto in_run) {
    while (at < n && in_run(class_at(at))) at += len_at(at);
    return at;
  };
  while (i < n) {
    if (const size_t c = contraction_at(text.substr(i)); c > 0) {
      pieces.push_back(text.substr(i, c));
      i += c;
      continue;
    }
    // " ?X+" for letters, numbers and other symbols: one optional space.
    const size_t body = text[i] == ' ' && i + 1 < n ? i + 1 : i;
    const CharClass cls = class_at(body);
    if (cls != CharClass::kSpace) {
      const size_t end = run_end(body, [cls](CharClass k) { return k == cls; });
      pieces.push_back(text.substr(i, end - i));
      i = end;
      continue;
    }
    // Whitespace at i (any, or a space before more whitespace). "\s+(?!\S)":
    // a run followed by a non-space gives up its last character, unless the
    // run is that one character ("\s+").
    const size_t end = run_end(i, [](CharClass k) { return k == CharClass::kSpace; });
    size_t stop = end;
    if (end < n) {
      size_t last = i;  // start of the run's last character
      for (size_t at = i; at < end; at += len_at(at)) last = at;
      if (last > i) stop = last;
    }
    pieces.push_back(text.substr(i, stop - i));
    i = stop;
  }
  return pieces;
}

absl::StatusOr<BpeTokenizer> BpeTokenizer::load(const std::string& vocab_path,
                                                const std::string& merges_path) {
  STRATA_ASSIGN_OR_RETURN(std::string vocab, read_file(vocab_path, kMaxTokenizerFileBytes),
                          "reading the BPE vocabulary (--vocab)");
  STRATA_ASSIGN_OR_RETURN(std::string merges, read_file(merges_path, kMaxTokenizerFileBytes),
                          "reading the BPE merges (--merges)");
  return parse(vocab, merges, vocab_path, merges_path);
}

absl::StatusOr<BpeTokenizer> BpeTokenizer::parse(std::string_view vocab_json,
                                                 std::string_view merges_text,
                                                 const std::string& vocab_name,
                                                 const std::string& merges_name) {
  STRATA_ASSIGN_OR_RETURN(json vocab,
                          config::parse_json_strict(vocab_json, vocab_name, "vocab.json"));
  if (!vocab.is_object() || vocab.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        vocab_name, ":1: expected a JSON object from token to id (GPT-2's vocab.json)"));
  }
  constexpr int64_t kMaxVocab = int64_t{1} << 24;
  BpeTokenizer t;
  absl::flat_hash_map<std::string, int32_t> ids;
  ids.reserve(vocab.size());
  t.token_bytes_.resize(vocab.size());
  std::vector<bool> seen(vocab.size());
  for (const auto& [token, id] : vocab.items()) {
    auto at = [&, &token = token] { return where_in_vocab(vocab_json, vocab_name, token); };
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= kMaxVocab) {
      return absl::InvalidArgumentError(absl::StrCat(at(), ": the id of token ", printable(token),
                                                     " is ", id.dump(),
                                                     "; ids are integers from 0"));
    }
    const int64_t v = id.get<int64_t>();
    if (v >= static_cast<int64_t>(vocab.size()) || seen[v]) {
      return absl::InvalidArgumentError(absl::StrCat(
          at(), ": token ", printable(token), " has id ", v, ", but the ", vocab.size(),
          " tokens must have the ids 0..", vocab.size() - 1, " once each"));
    }
    seen[v] = true;
    std::string bytes;
    for (size_t i = 0; i < token.size();) {
      const auto [cp, len] = next_code_point(token, i);
      const int b = code_point_to_byte(cp);
      if (b < 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            at(), ": token ", printable(token), " has a character outside GPT-2's byte alphabet (",
            cp < 0 ? std::string("invalid UTF-8") : absl::StrFormat("U+%04X", cp),
            "); this is not a byte-level BPE vocabulary"));
      }
      bytes.push_back(static_cast<char>(b));
      i += len;
    }
    t.token_bytes_[v] = std::move(bytes);
    ids.emplace(token, static_cast<int32_t>(v));
  }
  for (int b = 0; b < 256; ++b) {
    std::string symbol;
    append_utf8(byte_to_code_point()[b], &symbol);
    auto it = ids.find(symbol);
    if (it == ids.end()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: no token for byte 0x%02X (%s); a byte-level BPE vocabulary has "
                          "one for each of the 256 bytes",
                          vocab_name, b, printable(symbol)));
    }
    t.byte_id_[b] = it->second;
  }
  if (auto it = ids.find(std::string(kEndOfText)); it != ids.end()) {
    t.eot_id_ = it->second;
  } else {
    t.eot_id_ = static_cast<int32_t>(t.token_bytes_.size());
    t.token_bytes_.emplace_back(kEndOfText);
  }

  int64_t line_no = 0;
  for (size_t pos = 0; pos < merges_text.size();) {
    size_t eol = merges_text.find('\n', pos);
    if (eol == std::string_view::npos) eol = merges_text.size();
    std::string_view line = merges_text.substr(pos, eol - pos);
    pos = eol + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty() || (line_no == 1 && line.starts_with("#version"))) continue;
    const size_t sp = line.find(' ');
    const std::string where = absl::StrCat(merges_name, ":", line_no);
    if (sp == 0 || sp == std::string_view::npos || sp + 1 == line.size() ||
        line.find(' ', sp + 1) != std::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat(
          where,
          ": expected two tokens separated by one space (a GPT-2 merges.txt / vocab.bpe "
          "line), got ",
          printable(line)));
    }
    const std::string a(line.substr(0, sp)), b(line.substr(sp + 1));
    const auto ia = ids.find(a), ib = ids.find(b), ir = ids.find(a + b);
    for (const auto& [it, tok] : {std::pair{ia, &a}, std::pair{ib, &b}}) {
      if (it == ids.end()) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": token ", printable(*tok), " is not in ", vocab_name,
                         "; the merges and the vocabulary must come from the same tokenizer"));
      }
    }
    if (ir == ids.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": the merged token ", printable(a + b), " is not in ", vocab_name,
                       "; the merges and the vocabulary must come from the same tokenizer"));
    }
    // A repeated pair keeps its first (best) rank.
    t.merges_.try_emplace(pair_key(ia->second, ib->second),
                          Merge{static_cast<int32_t>(t.merges_.size()), ir->second});
  }
  return t;
}

void BpeTokenizer::encode_piece(std::string_view piece, std::vector<int32_t>* out) const {
  std::vector<int32_t> sym(piece.size());
  for (size_t i = 0; i < piece.size(); ++i) sym[i] = byte_id_[static_cast<unsigned char>(piece[i])];
  while (sym.size() > 1) {
    int32_t best_rank = std::numeric_limits<int32_t>::max(), best_result = -1;
    uint64_t best_pair = 0;
    for (size_t i = 0; i + 1 < sym.size(); ++i) {
      auto it = merges_.find(pair_key(sym[i], sym[i + 1]));
      if (it != merges_.end() && it->second.rank < best_rank) {
        best_rank = it->second.rank;
        best_result = it->second.result;
        best_pair = it->first;
      }
    }
    if (best_result < 0) break;
    // Every occurrence of the best pair, left to right.
    size_t w = 0;
    for (size_t i = 0; i < sym.size(); ++w) {
      if (i + 1 < sym.size() && pair_key(sym[i], sym[i + 1]) == best_pair) {
        sym[w] = best_result;
        i += 2;
      } else {
        sym[w] = sym[i++];
      }
    }
    sym.resize(w);
  }
  out->insert(out->end(), sym.begin(), sym.end());
}

std::vector<int32_t> BpeTokenizer::encode(std::string_view text) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3);
  // Words repeat: a corpus is mostly pieces already seen in this call.
  absl::flat_hash_map<std::string_view, std::pair<size_t, size_t>> seen;  // piece -> out range
  while (!text.empty()) {
    const size_t eot = text.find(kEndOfText);
    for (std::string_view piece : gpt2_pretokenize(text.substr(0, eot))) {
      auto [it, fresh] = seen.try_emplace(piece, out.size(), 0);
      if (fresh) {
        encode_piece(piece, &out);
        it->second.second = out.size() - it->second.first;
      } else {
        const auto [from, count] = it->second;
        for (size_t k = 0; k < count; ++k) {
          const int32_t id = out[from + k];  // push_back may move `out`
          out.push_back(id);
        }
      }
    }
    if (eot == std::string_view::npos) break;
    out.push_back(eot_id_);
    text.remove_prefix(eot + kEndOfText.size());
  }
  return out;
}

std::string BpeTokenizer::decode(std::span<const int32_t> ids) const {
  std::string out;
  for (int32_t id : ids) {
    if (id >= 0 && id < vocab_size()) {
      out += token_bytes_[id];
    } else {
      out += "\xEF\xBF\xBD";
    }
  }
  return out;
}

}  // namespace strata::model
