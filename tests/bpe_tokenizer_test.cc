// BpeTokenizer: GPT-2's pre-tokenizer split, merge ranks, the end-of-text
// token and byte-exact round trips, on a small vocabulary written here in
// GPT-2's file formats; malformed files fail naming the file and line.
#include "model/bpe_tokenizer.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/bpe_test_files.h"
#include "tests/cli_test_util.h"

namespace strata::model {
namespace {

using nlohmann::json;

using Files = strata::testing::BpeFiles;
const auto byte_symbol = strata::testing::bpe_byte_symbol;

const std::string kSpace = byte_symbol(' ');  // "Ġ"

absl::StatusOr<BpeTokenizer> make(const Files& f) {
  return BpeTokenizer::parse(f.vocab.dump(), f.merges, "vocab.json", "merges.txt");
}

std::vector<std::string> split(std::string_view text) {
  std::vector<std::string> out;
  for (std::string_view p : gpt2_pretokenize(text)) out.emplace_back(p);
  return out;
}

TEST(Gpt2PretokenizeTest, SplitsAsGpt2sPattern) {
  using V = std::vector<std::string>;
  EXPECT_EQ(split("Hello world's 123 foo!!  bar"),
            (V{"Hello", " world", "'s", " 123", " foo", "!!", " ", " bar"}));
  // Contractions, case-sensitive; any other apostrophe is a symbol.
  EXPECT_EQ(split("I'm they'll we've you're he'd it't O'NEIL"),
            (V{"I", "'m", " they", "'ll", " we", "'ve", " you", "'re", " he", "'d", " it", "'t",
               " O", "'", "NEIL"}));
  // A whitespace run before a word leaves its last character to it; a lone
  // newline is its own piece; trailing whitespace stays together.
  EXPECT_EQ(split("a\n\nb   c \td  "), (V{"a", "\n", "\n", "b", "  ", " c", " ", "\t", "d", "  "}));
  EXPECT_EQ(split(" "), (V{" "}));
  EXPECT_EQ(split("x ?!"), (V{"x", " ?!"}));
  // Unicode letters and numbers (ICU categories): é, CJK, Arabic-Indic digits;
  // U+3000 (ideographic space) is whitespace.
  EXPECT_EQ(split("naïve café 東京\xE3\x80\x80١٢٣ 4x"),
            (V{"naïve", " café", " 東京", "\xE3\x80\x80", "١٢٣", " 4", "x"}));
  // Invalid UTF-8 bytes are symbols.
  EXPECT_EQ(split("ab\xff\xfe cd"), (V{"ab", "\xff\xfe", " cd"}));
  EXPECT_TRUE(split("").empty());
}

TEST(BpeTokenizerTest, MergesByRankAndMapsToIds) {
  Files f;
  f.merge("h", "e").merge(kSpace, "t").merge(kSpace + "t", "he");
  auto tok = make(f);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(tok->vocab_size(), 256 + 3 + 1);  // + <|endoftext|>
  EXPECT_EQ(tok->merge_count(), 3);
  const int he = f.vocab["he"], sp_the = f.vocab[kSpace + "the"];
  EXPECT_EQ(tok->encode(" the"), (std::vector<int32_t>{sp_the}));
  EXPECT_EQ(tok->encode("the the"), (std::vector<int32_t>{'t', he, sp_the}));
  EXPECT_EQ(tok->encode("<|endoftext|>he"), (std::vector<int32_t>{259, he}));
  EXPECT_EQ(tok->end_of_text_id(), 259);

  // The lower rank wins: "ab" before "bc" gives ab|c, the other order a|bc.
  Files first, second;
  first.merge("a", "b").merge("b", "c");
  second.merge("b", "c").merge("a", "b");
  auto t1 = make(first), t2 = make(second);
  ASSERT_TRUE(t1.ok() && t2.ok());
  EXPECT_EQ(t1->encode("abc"), (std::vector<int32_t>{256, 'c'}));
  EXPECT_EQ(t2->encode("abc"), (std::vector<int32_t>{'a', 256}));
  // All occurrences of the best pair merge at once, left to right.
  Files aa;
  aa.merge("a", "a");
  auto t3 = make(aa);
  ASSERT_TRUE(t3.ok());
  EXPECT_EQ(t3->encode("aaaaa"), (std::vector<int32_t>{256, 256, 'a'}));
}

TEST(BpeTokenizerTest, EndOfTextFromTheVocabulary) {
  Files f;
  f.vocab["<|endoftext|>"] = 256;
  auto tok = make(f);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(tok->vocab_size(), 257);
  EXPECT_EQ(tok->end_of_text_id(), 256);
  EXPECT_EQ(tok->encode("a<|endoftext|>"), (std::vector<int32_t>{'a', 256}));
  EXPECT_EQ(tok->decode(std::vector<int32_t>{256, 'x', 999}), "<|endoftext|>x\xEF\xBF\xBD");
}

TEST(BpeTokenizerTest, DecodeInvertsEncode) {
  Files f;
  f.merge(kSpace, "t").merge("h", "e").merge(kSpace + "t", "he").merge("i", "n").merge("in", "g");
  f.merge(byte_symbol(0xc3), byte_symbol(0xa9));  // é
  auto tok = make(f);
  ASSERT_TRUE(tok.ok()) << tok.status();
  const std::vector<std::string> texts = {
      "",
      "the thing is singing in the rain\n",
      "  leading and trailing  \n\n\t",
      "café naïve résumé — “quotes” and emoji 🙂🚀",
      "日本語のテキスト 中文 한국어 Ελληνικά Русский العربية ١٢٣",
      "I'm sure they'll've said 'yes' <|endoftext|> then <|endoftext|><|endoftext|>",
      std::string("bytes ") + '\0' + "\x01\xff\xfe\xc3 not utf-8",
      "<|endoftext",
  };
  for (const std::string& t : texts) {
    const std::vector<int32_t> ids = tok->encode(t);
    for (int32_t id : ids) ASSERT_TRUE(id >= 0 && id < tok->vocab_size()) << id;
    EXPECT_EQ(tok->decode(ids), t) << json(t).dump(-1, ' ', true, json::error_handler_t::replace);
  }
  // The merges apply: fewer tokens than bytes.
  EXPECT_LT(tok->encode("the thing the café").size(), std::string("the thing the café").size());
}

struct BadCase {
  const char* what;
  std::string vocab, merges;
  const char* expect;  // in the message
};

TEST(BpeTokenizerTest, MalformedFilesNameFileAndLine) {
  Files good;
  good.merge("a", "b");
  const std::string vocab = good.vocab.dump(1);  // one entry per line
  json gap = good.vocab;
  gap["zz"] = 1000;
  json non_byte = good.vocab;
  non_byte["a\xE2\x82\xAC"] = 257;  // €: not in the byte alphabet
  json missing_byte = good.vocab;
  missing_byte.erase(byte_symbol('q'));
  missing_byte["ab"] = static_cast<int>('q');
  const std::vector<BadCase> cases = {
      {"bad json", "{\n\"a\": 1,\n\"b\" 2\n}", good.merges,
       "vocab.json: not valid JSON: parse error at line 3"},
      // The one strict, depth-limited reader: no silent last-one-wins, no
      // recursion off the stack.
      {"duplicate token", "{\"a\": 1,\n\"a\": 2}", good.merges, "a: duplicate key"},
      {"deeply nested", std::string(100000, '['), good.merges, "nested more than 256 levels"},
      {"not an object", "[1, 2]", good.merges, "vocab.json:1: expected a JSON object"},
      {"id gap", gap.dump(1), good.merges, "has id 1000"},
      {"string id", "{\n\"a\": \"x\"\n}", good.merges, "vocab.json:2: the id of token \"a\""},
      {"outside alphabet", non_byte.dump(1), good.merges, "outside GPT-2's byte alphabet (U+20AC)"},
      {"missing byte", missing_byte.dump(1), good.merges, "vocab.json: no token for byte 0x71"},
      {"three tokens", vocab, "#version: 0.2\na b\nc d e\n", "merges.txt:3: expected two tokens"},
      {"one token", vocab, "ab\n", "merges.txt:1: expected two tokens"},
      {"unknown token", vocab, "#version: 0.2\na b\nab xyz\n",
       "merges.txt:3: token \"xyz\" is not in vocab.json"},
      {"unknown result", vocab, "a b\nb c\n", "merges.txt:2: the merged token \"bc\""},
  };
  for (const BadCase& c : cases) {
    auto tok = BpeTokenizer::parse(c.vocab, c.merges, "vocab.json", "merges.txt");
    ASSERT_FALSE(tok.ok()) << c.what;
    EXPECT_NE(std::string(tok.status().message()).find(c.expect), std::string::npos)
        << c.what << ": " << tok.status();
  }
  // The gap names its line in the file.
  auto g = BpeTokenizer::parse(gap.dump(1), good.merges, "vocab.json", "merges.txt");
  EXPECT_NE(std::string(g.status().message()).find("vocab.json:"), std::string::npos);
}

TEST(BpeTokenizerTest, LoadsFilesAndNamesMissingOnes) {
  strata::testing::ScratchDir dir("strata_bpe_test_");
  Files f;
  f.merge("a", "b");
  const std::string v = dir.write("vocab.json", f.vocab.dump(-1, ' ', /*ensure_ascii=*/true));
  const std::string m = dir.write("merges.txt", f.merges);
  auto tok = BpeTokenizer::load(v, m);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(tok->encode("abab"), (std::vector<int32_t>{256, 256}));
  auto missing = BpeTokenizer::load(dir.path() + "/nope.json", m);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(std::string(missing.status().message()).find(dir.path() + "/nope.json"),
            std::string::npos)
      << missing.status();
}

}  // namespace
}  // namespace strata::model
