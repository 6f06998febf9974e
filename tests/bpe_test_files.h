// A small GPT-2-style byte-level BPE vocabulary for tests, built here in
// GPT-2's file formats (vocab.json, merges.txt): the 256 byte tokens with
// id = byte value, then one token per merge in the order added.
#pragma once

#include <string>

#include "nlohmann/json.hpp"

namespace strata::testing {

// GPT-2's printable stand-in for byte b (written independently of the
// tokenizer): itself when printable Latin-1, else U+0100 onwards in order.
inline std::string bpe_byte_symbol(int b) {
  int next = 256, cp = -1;
  for (int x = 0; x <= b; ++x) {
    const bool printable = (x >= '!' && x <= '~') || (x >= 0xa1 && x <= 0xac) || x >= 0xae;
    cp = printable ? x : next++;
  }
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else {
    s += static_cast<char>(0xc0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3f));
  }
  return s;
}

struct BpeFiles {
  nlohmann::json vocab = nlohmann::json::object();
  std::string merges = "#version: 0.2\n";
  BpeFiles() {
    for (int b = 0; b < 256; ++b) vocab[bpe_byte_symbol(b)] = b;
  }
  // Adds the merge "a b" and, when new, the token a + b.
  BpeFiles& merge(const std::string& a, const std::string& b) {
    if (!vocab.contains(a + b)) vocab[a + b] = static_cast<int>(vocab.size());
    merges += a + " " + b + "\n";
    return *this;
  }
  // A few merges that make English text shorter.
  static BpeFiles english() {
    const std::string sp = bpe_byte_symbol(' ');
    BpeFiles f;
    f.merge("h", "e").merge(sp, "t").merge(sp + "t", "he").merge("o", "u").merge(sp, "b");
    f.merge("o", "w").merge(sp, "f").merge(sp + "f", "o").merge(sp + "fo", "x").merge("e", "r");
    return f;
  }
};

}  // namespace strata::testing
