// TextCorpus: which files a --data path names, the train/validation split,
// the batches (targets shifted by one, deterministic offsets, validation
// windows in order) and the errors for unusable inputs.
#include "model/text_corpus.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "core/host_info.h"
#include "gtest/gtest.h"
#include "tests/bpe_test_files.h"
#include "tests/cli_test_util.h"

namespace strata::model {
namespace {

namespace fs = std::filesystem;

class TextCorpusTest : public ::testing::Test {
 protected:
  std::string write(const std::string& name, const std::string& contents) {
    return scratch_.write(name, contents);
  }
  strata::testing::ScratchDir scratch_{"strata_corpus_test_"};
  const std::string dir_ = scratch_.path();
};

std::string letters(size_t n, char first = 'a') {
  std::string s;
  for (size_t i = 0; i < n; ++i) s += static_cast<char>(first + i % 26);
  return s;
}

TEST_F(TextCorpusTest, FolderIsWalkedSortedSkippingBinaryDatAndLinks) {
  write("b.txt", "bbb\n");
  write("a/z.txt", "zzz\n");
  write("a/z.dat", "index");
  write("bin", std::string("ab\0cd", 5));
  fs::create_symlink(fs::path(dir_) / "b.txt", fs::path(dir_) / "b.u8");
  auto files = list_corpus_files(dir_);
  ASSERT_TRUE(files.ok()) << files.status();
  // bin is listed (only reading tells it is binary); .dat and the link are not.
  EXPECT_EQ(*files, (std::vector<std::string>{dir_ + "/a/z.txt", dir_ + "/b.txt", dir_ + "/bin"}));

  auto c = load_text_corpus(dir_, {.micro_batch = 1, .seq_len = 2, .val_fraction = 0.4});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ((*c)->files(), (std::vector<std::string>{dir_ + "/a/z.txt", dir_ + "/b.txt"}));
  EXPECT_EQ((*c)->train_tokens() + (*c)->val_tokens(), 8);  // "zzz\nbbb\n"
}

TEST_F(TextCorpusTest, GlobMatchesAndAddsMissingNewline) {
  write("x1.txt", "hello");
  write("x2.txt", "world");
  write("y.txt", "other");
  fs::create_symlink(fs::path(dir_) / "x1.txt", fs::path(dir_) / "x1.txt.u8");
  auto files = list_corpus_files(dir_ + "/x*.txt*");
  ASSERT_TRUE(files.ok()) << files.status();
  EXPECT_EQ(*files, (std::vector<std::string>{dir_ + "/x1.txt", dir_ + "/x2.txt"}));
  auto c =
      load_text_corpus(dir_ + "/x*.txt", {.micro_batch = 1, .seq_len = 3, .val_fraction = 0.3});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ((*c)->train_tokens() + (*c)->val_tokens(), 12);  // "hello\nworld\n"
  // Validation: the last ceil(12*0.3) = 4 tokens, "rld\n".
  EXPECT_EQ((*c)->val_tokens(), 4);
  std::vector<int32_t> in(3), tg(3);
  (*c)->val_batch(0, in.data(), tg.data());
  EXPECT_EQ(in, (std::vector<int32_t>{'r', 'l', 'd'}));
  EXPECT_EQ(tg, (std::vector<int32_t>{'l', 'd', '\n'}));
}

TEST_F(TextCorpusTest, SplitKeepsAtLeastOneValidationSequence) {
  auto c = TextCorpus::from_text(letters(1000), "mem", {.micro_batch = 2, .seq_len = 64});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ((*c)->val_tokens(), 65);  // 5% would be 50 < T + 1
  EXPECT_EQ((*c)->train_tokens(), 935);
  auto big = TextCorpus::from_text(letters(100000), "mem", {.micro_batch = 2, .seq_len = 64});
  ASSERT_TRUE(big.ok());
  EXPECT_EQ((*big)->val_tokens(), 5000);
}

TEST_F(TextCorpusTest, TrainBatchesAreShiftedDeterministicAndInsideTheTrainSplit) {
  std::string text;
  for (int i = 0; i < 4000; ++i) text += static_cast<char>(i % 251);  // position mod 251
  const TextCorpusOptions o{.micro_batch = 4, .seq_len = 16, .seed = 7};
  auto c = TextCorpus::from_text(text, "mem", o);
  ASSERT_TRUE(c.ok());
  std::vector<int32_t> in(64), tg(64), in2(64), tg2(64), in3(64), tg3(64);
  (*c)->train_batch(3, in.data(), tg.data());
  (*c)->train_batch(3, in2.data(), tg2.data());
  (*c)->train_batch(4, in3.data(), tg3.data());
  EXPECT_EQ(in, in2);
  EXPECT_EQ(tg, tg2);
  EXPECT_NE(in, in3);
  std::set<int32_t> row_starts;
  for (int r = 0; r < 4; ++r) {
    row_starts.insert(in[r * 16]);
    for (int t = 0; t < 16; ++t) {
      EXPECT_EQ(tg[r * 16 + t], (in[r * 16 + t] + 1) % 251);
      if (t + 1 < 16) {
        EXPECT_EQ(in[r * 16 + t + 1], tg[r * 16 + t]);
      }
    }
  }
  EXPECT_GT(row_starts.size(), 1u);  // rows start at different offsets

  // Over many batches no row reads a validation token.
  std::string marked(3800, 'a');
  marked += std::string(200, 'V');
  auto m = TextCorpus::from_text(marked, "mem", o);
  ASSERT_TRUE(m.ok());
  ASSERT_EQ((*m)->train_tokens(), 3800);
  for (int64_t i = 0; i < 500; ++i) {
    (*m)->train_batch(i, in.data(), tg.data());
    for (int k = 0; k < 64; ++k) ASSERT_EQ(tg[k], 'a') << "batch " << i;
  }
  // A different seed draws different offsets.
  auto other = TextCorpus::from_text(text, "mem", {.micro_batch = 4, .seq_len = 16, .seed = 8});
  ASSERT_TRUE(other.ok());
  (*other)->train_batch(3, in2.data(), tg2.data());
  EXPECT_NE(in, in2);
}

TEST_F(TextCorpusTest, ValidationWindowsAreConsecutiveAndWrap) {
  std::string text = letters(200, 'a');
  text += "0123456789";  // validation: the last 10 tokens (5% of 210 rounds up to 11)
  auto c = TextCorpus::from_text(text, "mem", {.micro_batch = 2, .seq_len = 4});
  ASSERT_TRUE(c.ok());
  ASSERT_EQ((*c)->val_tokens(), 11);
  EXPECT_EQ((*c)->val_windows(), 2);  // (11 - 1) / 4
  std::vector<int32_t> in(8), tg(8);
  (*c)->val_batch(0, in.data(), tg.data());
  const char first = text[199];  // the split starts one token before "0"
  EXPECT_EQ(in, (std::vector<int32_t>{first, '0', '1', '2', '3', '4', '5', '6'}));
  EXPECT_EQ(tg, (std::vector<int32_t>{'0', '1', '2', '3', '4', '5', '6', '7'}));
  std::vector<int32_t> in1(8), tg1(8);
  (*c)->val_batch(1, in1.data(), tg1.data());  // windows 2, 3 wrap to 0, 1
  EXPECT_EQ(in1, in);
  EXPECT_EQ(tg1, tg);
}

// N ranks at micro batch m read, together, exactly the rows one rank at
// micro batch N*m reads: rank r's batch i is rows r*m..r*m+m-1 of the one
// rank's batch i, for training and validation alike; the shares are disjoint.
TEST_F(TextCorpusTest, RanksSplitEachGlobalBatchDisjointly) {
  std::string text;
  for (int i = 0; i < 20000; ++i) text += static_cast<char>('a' + (i * 7 + i / 26) % 26);
  constexpr int64_t m = 2, t = 8;
  for (int world : {2, 3}) {
    SCOPED_TRACE(world);
    auto one = TextCorpus::from_text(text, "mem", {.micro_batch = world * m, .seq_len = t});
    ASSERT_TRUE(one.ok());
    std::vector<std::unique_ptr<TextCorpus>> ranks;
    for (int r = 0; r < world; ++r) {
      auto c = TextCorpus::from_text(
          text, "mem", {.micro_batch = m, .seq_len = t, .rank = r, .world_size = world});
      ASSERT_TRUE(c.ok()) << c.status();
      ranks.push_back(*std::move(c));
    }
    const size_t whole = static_cast<size_t>(world * m * t), part = static_cast<size_t>(m * t);
    for (int64_t index : {0, 1, 5}) {
      for (bool train : {true, false}) {
        std::vector<int32_t> in(whole), tg(whole), rin(part), rtg(part);
        auto batch = [&](TextCorpus& c, int32_t* i, int32_t* g) {
          train ? c.train_batch(index, i, g) : c.val_batch(index, i, g);
        };
        batch(**one, in.data(), tg.data());
        std::vector<int32_t> joined_in, joined_tg;
        for (int r = 0; r < world; ++r) {
          batch(*ranks[r], rin.data(), rtg.data());
          joined_in.insert(joined_in.end(), rin.begin(), rin.end());
          joined_tg.insert(joined_tg.end(), rtg.begin(), rtg.end());
        }
        EXPECT_EQ(joined_in, in) << "batch " << index << (train ? " train" : " val");
        EXPECT_EQ(joined_tg, tg);
      }
    }
    // Rank 0 and rank 1 read different rows of the same batch.
    std::vector<int32_t> a(m * t), b(m * t), tg(m * t);
    ranks[0]->train_batch(0, a.data(), tg.data());
    ranks[1]->train_batch(0, b.data(), tg.data());
    EXPECT_NE(a, b);
  }
  for (auto [rank, world] : {std::pair{2, 2}, std::pair{-1, 2}, std::pair{0, 0}}) {
    auto bad = TextCorpus::from_text(
        text, "mem", {.micro_batch = 1, .seq_len = t, .rank = rank, .world_size = world});
    ASSERT_FALSE(bad.ok());
    EXPECT_NE(std::string(bad.status().message()).find("need 0 <= rank < world size"),
              std::string::npos)
        << bad.status();
  }
}

TEST_F(TextCorpusTest, BpeTokensReplaceBytes) {
  strata::testing::BpeFiles files;
  files.merge("a", "b");  // "ab" = 256
  auto tok = BpeTokenizer::parse(files.vocab.dump(), files.merges, "vocab.json", "merges.txt");
  ASSERT_TRUE(tok.ok()) << tok.status();
  std::string text;
  for (int i = 0; i < 100; ++i) text += "abc";  // one piece: ab c ab c ...
  auto c = TextCorpus::from_text(text, "mem", {.micro_batch = 1, .seq_len = 4, .tokenizer = &*tok});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ((*c)->vocab_size(), 258);  // 256 bytes, "ab", <|endoftext|>
  EXPECT_EQ((*c)->train_tokens() + (*c)->val_tokens(), 200);
  std::vector<int32_t> in(4), tg(4);
  (*c)->val_batch(0, in.data(), tg.data());
  EXPECT_TRUE((in == std::vector<int32_t>{256, 'c', 256, 'c'}) ||
              (in == std::vector<int32_t>{'c', 256, 'c', 256}))
      << in[0] << " " << in[1];
  EXPECT_EQ(tg[0], in[1]);

  // The byte path is unchanged: one token per byte, vocabulary 256.
  auto bytes = TextCorpus::from_text(text, "mem", {.micro_batch = 1, .seq_len = 4});
  ASSERT_TRUE(bytes.ok());
  EXPECT_EQ((*bytes)->vocab_size(), 256);
  EXPECT_EQ((*bytes)->train_tokens() + (*bytes)->val_tokens(), 300);

  auto short_bpe =
      TextCorpus::from_text("ababab", "mem", {.micro_batch = 1, .seq_len = 4, .tokenizer = &*tok});
  ASSERT_FALSE(short_bpe.ok());
  EXPECT_NE(short_bpe.status().message().find("3 tokens (BPE)"), absl::string_view::npos)
      << short_bpe.status();
}

TEST_F(TextCorpusTest, ErrorsNameThePathAndWhatToDo) {
  auto missing = load_text_corpus(dir_ + "/nope", {});
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(missing.status().message().find(dir_ + "/nope"), absl::string_view::npos);
  EXPECT_NE(missing.status().message().find("no such file"), absl::string_view::npos);

  auto no_match = load_text_corpus(dir_ + "/*.none", {});
  ASSERT_FALSE(no_match.ok());
  EXPECT_NE(no_match.status().message().find("matches no file"), absl::string_view::npos);

  const std::string empty = write("empty/e.txt", "");
  auto e = load_text_corpus(empty, {});
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.status().message().find("empty"), absl::string_view::npos);
  EXPECT_NE(e.status().message().find(empty), absl::string_view::npos);

  write("binonly/x", std::string("a\0b", 3));
  auto b = load_text_corpus(dir_ + "/binonly", {});
  ASSERT_FALSE(b.ok());
  EXPECT_NE(b.status().message().find("empty"), absl::string_view::npos);

  auto empty_dir = load_text_corpus((fs::create_directories(dir_ + "/none"), dir_ + "/none"), {});
  ASSERT_FALSE(empty_dir.ok());
  EXPECT_NE(empty_dir.status().message().find("no regular file"), absl::string_view::npos);

  const std::string small = write("small.txt", letters(100));
  auto s = load_text_corpus(small, {.micro_batch = 1, .seq_len = 64});
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.status().message().find("too few"), absl::string_view::npos) << s.status();
  EXPECT_NE(s.status().message().find("--seq-len"), absl::string_view::npos);
  EXPECT_TRUE(load_text_corpus(small, {.micro_batch = 1, .seq_len = 32}).ok());
}

// This process's anonymous resident memory (not page cache), in bytes.
int64_t rss_anon_bytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("RssAnon:", 0) == 0) return std::stoll(line.substr(8)) * 1024;
  }
  return -1;
}

// A byte corpus is mapped, not copied: a file larger than the 256 MiB that
// read_file allows (it was read whole, 4 bytes a byte) loads, and costs
// page cache, not the process's own memory.
TEST_F(TextCorpusTest, ByteCorpusIsMappedNotCopied) {
  const std::string path = dir_ + "/big.txt";
  const int64_t size = int64_t{1} << 30;
  {
    std::ofstream(path) << letters(4096);
    if (::truncate(path.c_str(), size) != 0) GTEST_SKIP() << "no sparse 1 GiB file here";
  }
  const int64_t before = rss_anon_bytes();
  if (before < 0) GTEST_SKIP() << "no RssAnon in /proc/self/status";
  auto c = load_text_corpus(path, {.micro_batch = 4, .seq_len = 64});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ((*c)->train_tokens() + (*c)->val_tokens(), size + 1);  // + the closing newline
  std::vector<int32_t> in(4 * 64), tg(4 * 64);
  for (int i = 0; i < 16; ++i) (*c)->train_batch(i, in.data(), tg.data());
  EXPECT_LT(rss_anon_bytes() - before, int64_t{64} << 20);
  EXPECT_EQ((*c)->resident_bytes(), static_cast<uint64_t>(size + 1));  // 1 byte a token
}

// Files are pieces of one text, each ending in a newline: batches are those
// of the concatenated text, across file boundaries.
TEST_F(TextCorpusTest, FilesReadAsOneTextAcrossBoundaries) {
  write("parts/a.txt", "abc");
  write("parts/b.txt", "defghij\n");
  write("parts/c.txt", letters(300, 'k'));
  const std::string text = "abc\ndefghij\n" + letters(300, 'k') + "\n";
  const TextCorpusOptions o{.micro_batch = 3, .seq_len = 8, .seed = 5, .val_fraction = 0.2};
  auto files = load_text_corpus(dir_ + "/parts", o);
  auto mem = TextCorpus::from_text(text, "mem", o);
  ASSERT_TRUE(files.ok()) << files.status();
  ASSERT_TRUE(mem.ok()) << mem.status();
  ASSERT_EQ((*files)->train_tokens(), (*mem)->train_tokens());
  ASSERT_EQ((*files)->val_tokens(), (*mem)->val_tokens());
  std::vector<int32_t> a_in(24), a_tg(24), b_in(24), b_tg(24);
  for (int i = 0; i < 40; ++i) {
    (*files)->train_batch(i, a_in.data(), a_tg.data());
    (*mem)->train_batch(i, b_in.data(), b_tg.data());
    ASSERT_EQ(a_in, b_in) << i;
    ASSERT_EQ(a_tg, b_tg) << i;
    (*files)->val_batch(i, a_in.data(), a_tg.data());
    (*mem)->val_batch(i, b_in.data(), b_tg.data());
    ASSERT_EQ(a_in, b_in) << i;
    ASSERT_EQ(a_tg, b_tg) << i;
  }
}

// A BPE corpus is encoded in pieces cut where GPT-2's pre-tokenizer cuts
// anyway: the same tokens as the whole text at once.
TEST_F(TextCorpusTest, BpeEncodedInPiecesGivesTheWholeTextsTokens) {
  strata::testing::BpeFiles files;
  files.merge("a", "b");
  auto tok = BpeTokenizer::parse(files.vocab.dump(), files.merges, "vocab.json", "merges.txt");
  ASSERT_TRUE(tok.ok()) << tok.status();
  std::string text;
  while (text.size() < (size_t{9} << 20)) text += "ab abc\n\n  cab\nab\n";
  const std::vector<int32_t> whole = tok->encode(text);
  const std::string path = write("bpe.txt", text);
  auto c = load_text_corpus(path, {.micro_batch = 1, .seq_len = 16, .tokenizer = &*tok});
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ((*c)->train_tokens() + (*c)->val_tokens(), static_cast<int64_t>(whole.size()));
  std::vector<int32_t> in(16), tg(16);
  (*c)->val_batch(0, in.data(), tg.data());
  EXPECT_EQ(in, std::vector<int32_t>(whole.begin() + (*c)->train_tokens(),
                                     whole.begin() + (*c)->train_tokens() + 16));
}

// A BPE corpus whose tokens would not fit in memory is refused, saying so,
// before it is encoded (not bad_alloc, not the OOM killer).
TEST_F(TextCorpusTest, BpeCorpusTooLargeForMemoryIsRefused) {
  strata::testing::BpeFiles files;
  files.merge("a", "b");
  auto tok = BpeTokenizer::parse(files.vocab.dump(), files.merges, "vocab.json", "merges.txt");
  ASSERT_TRUE(tok.ok()) << tok.status();
  const uint64_t available = probe_host().memory.usable_bytes();
  if (available == 0) GTEST_SKIP() << "MemAvailable unknown";
  const std::string path = dir_ + "/huge.txt";
  std::ofstream(path) << letters(4096);
  if (::truncate(path.c_str(), static_cast<off_t>(available)) != 0) {
    GTEST_SKIP() << "no sparse file of " << available << " bytes here";
  }
  auto c = load_text_corpus(path, {.micro_batch = 1, .seq_len = 16, .tokenizer = &*tok});
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kResourceExhausted) << c.status();
  EXPECT_NE(c.status().message().find("more than half of the"), absl::string_view::npos)
      << c.status();
  EXPECT_NE(c.status().message().find("no --vocab"), absl::string_view::npos) << c.status();
}

TEST(FortunesCorpus, DefaultCorpusLoadsWhenInstalled) {
  const std::string path = "/usr/share/games/fortunes";
  if (!fs::is_directory(path)) GTEST_SKIP() << path << " missing (apt-get install fortunes)";
  auto c = load_text_corpus(path, {.micro_batch = 8, .seq_len = 256});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_GT((*c)->train_tokens(), 1'000'000);
  for (const std::string& f : (*c)->files()) EXPECT_NE(fs::path(f).extension(), ".dat");
}

}  // namespace
}  // namespace strata::model
