// core/safetensors: the writer's files read back bit for bit in every float
// dtype (and follow the byte layout of the format), and the reader rejects
// each kind of malformed file with an error naming the file, the tensor and
// the problem.
#include "core/safetensors.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "gtest/gtest.h"
#include "tests/cli_test_util.h"

namespace strata::safetensors {
namespace {

namespace fs = std::filesystem;
using ::strata::testing::ScratchDir;
using ::strata::testing::slurp;

template <typename T>
std::vector<T> iota_values(size_t n, T (*make)(float)) {
  std::vector<T> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = make(static_cast<float>(i) * 0.25f - 3.0f);
  return v;
}

float same(float f) { return f; }

// A file from a literal header and data section, as a foreign writer (or a
// damaged disk) might produce; `length` overrides the header length field.
std::string raw_file(const std::string& header, const std::string& data,
                     std::optional<uint64_t> length = std::nullopt) {
  const uint64_t n = length.value_or(header.size());
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(n >> (8 * i));
  return out + header + data;
}

class SafetensorsTest : public ::testing::Test {
 protected:
  // Opens a file holding `contents` and expects a DataLoss error whose
  // message contains the path and every one of `parts`.
  void expect_rejected(const std::string& contents, const std::vector<std::string>& parts) {
    const std::string path = dir_.write("bad.safetensors", contents);
    auto r = Reader::open(path);
    ASSERT_FALSE(r.ok()) << "accepted: " << contents.substr(8);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << r.status();
    const std::string msg(r.status().message());
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    for (const std::string& p : parts)
      EXPECT_NE(msg.find(p), std::string::npos) << p << " / " << msg;
  }

  ScratchDir dir_{"strata_safetensors_test_"};
};

TEST_F(SafetensorsTest, RoundTripsEveryFloatDtype) {
  const std::vector<float> f32 = iota_values<float>(6, same);
  const std::vector<uint16_t> bf16 = iota_values<uint16_t>(12, fp32_to_bf16);
  const std::vector<uint16_t> f16 = iota_values<uint16_t>(5, fp32_to_fp16);
  const std::vector<float> scalar = {42.5f};
  const std::string path = dir_.path() + "/m.safetensors";
  {
    auto w = Writer::create(path,
                            {{"a.f32", Dtype::kF32, {2, 3}},
                             {"b.bf16", Dtype::kBF16, {3, 2, 2}},
                             {"c.f16", Dtype::kF16, {5}},
                             {"empty", Dtype::kF32, {0, 4}},
                             {"scalar", Dtype::kF32, {}}},
                            {{"format", "pt"}, {"note", "x y"}});
    ASSERT_TRUE(w.ok()) << w.status();
    ASSERT_TRUE((*w)->write_tensor("a.f32", f32.data(), 24).ok());
    ASSERT_TRUE((*w)->write_tensor("b.bf16", bf16.data(), 24).ok());
    ASSERT_TRUE((*w)->write_tensor("c.f16", f16.data(), 10).ok());
    ASSERT_TRUE((*w)->write_tensor("empty", nullptr, 0).ok());
    ASSERT_TRUE((*w)->write_tensor("scalar", scalar.data(), 4).ok());
    EXPECT_FALSE(fs::exists(path)) << "visible before finish()";
    ASSERT_TRUE((*w)->finish().ok());
  }
  // Only the final file is left in the directory (no temporary).
  size_t files = 0;
  for (const auto& e : fs::directory_iterator(dir_.path()))
    files += e.path().filename().string()[0] != '.';
  EXPECT_EQ(files, 1u);

  // Byte layout: little-endian length, header padded with spaces to 8 bytes,
  // data right after it.
  const std::string bytes = slurp(path);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(bytes[i]);
  EXPECT_EQ((8 + n) % 8, 0u);
  EXPECT_EQ(bytes.size(), 8 + n + 24 + 24 + 10 + 0 + 4);
  EXPECT_EQ(bytes[8], '{');
  EXPECT_NE(bytes.substr(8, n).find("\"__metadata__\""), std::string::npos);

  auto r = Reader::open(path);
  ASSERT_TRUE(r.ok()) << r.status();
  const Reader& rd = **r;
  EXPECT_EQ(rd.metadata().at("format"), "pt");
  EXPECT_EQ(rd.metadata().at("note"), "x y");
  ASSERT_EQ(rd.tensors().size(), 5u);
  EXPECT_EQ(rd.tensors()[0].name, "a.f32");  // data order
  EXPECT_EQ(rd.find("nope"), nullptr);

  const TensorInfo* a = rd.find("a.f32");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->dtype, Dtype::kF32);
  EXPECT_EQ(a->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(a->begin, 0u);
  EXPECT_EQ(a->end, 24u);
  EXPECT_EQ(std::memcmp(rd.data(*a).data(), f32.data(), 24), 0);

  const TensorInfo* b = rd.find("b.bf16");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->dtype, Dtype::kBF16);
  EXPECT_EQ(b->shape, (std::vector<int64_t>{3, 2, 2}));
  EXPECT_EQ(b->numel(), 12u);
  EXPECT_EQ(std::memcmp(rd.data(*b).data(), bf16.data(), 24), 0);
  std::vector<float> wide(12);
  ASSERT_TRUE(rd.to_fp32(*b, wide.data()).ok());
  for (size_t i = 0; i < 12; ++i) EXPECT_EQ(wide[i], bf16_to_fp32(bf16[i])) << i;

  const TensorInfo* c = rd.find("c.f16");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->dtype, Dtype::kF16);
  EXPECT_EQ(std::memcmp(rd.data(*c).data(), f16.data(), 10), 0);
  wide.assign(5, 0);
  ASSERT_TRUE(rd.to_fp32(*c, wide.data()).ok());
  for (size_t i = 0; i < 5; ++i) EXPECT_EQ(wide[i], fp16_to_fp32(f16[i])) << i;

  const TensorInfo* e = rd.find("empty");
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->numel(), 0u);
  EXPECT_EQ(e->bytes(), 0u);
  const TensorInfo* s = rd.find("scalar");
  ASSERT_NE(s, nullptr);
  EXPECT_TRUE(s->shape.empty());
  float v = 0;
  ASSERT_TRUE(rd.to_fp32(*s, &v).ok());
  EXPECT_EQ(v, 42.5f);
}

TEST_F(SafetensorsTest, WriterEnforcesDeclarationOrderAndSizes) {
  const std::string path = dir_.path() + "/w.safetensors";
  EXPECT_FALSE(Writer::create(path, {{"x", Dtype::kF32, {1}}, {"x", Dtype::kF32, {1}}}).ok());
  EXPECT_FALSE(Writer::create(path, {{"__metadata__", Dtype::kF32, {1}}}).ok());
  EXPECT_FALSE(Writer::create(path, {{"x", Dtype::kF32, {-1}}}).ok());
  EXPECT_FALSE(Writer::create(dir_.path() + "/no/such/dir/w.safetensors", {}).ok());
  {
    auto w = Writer::create(path, {{"x", Dtype::kF32, {2}}, {"y", Dtype::kF16, {2}}});
    ASSERT_TRUE(w.ok()) << w.status();
    const float two[2] = {1, 2};
    absl::Status s = (*w)->write_tensor("y", two, 4);
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_NE(std::string(s.message()).find("expected tensor 'x'"), std::string::npos) << s;
    EXPECT_FALSE((*w)->write_tensor("x", two, 4).ok());  // 8 bytes expected
    ASSERT_TRUE((*w)->write_tensor("x", two, 8).ok());
    s = (*w)->finish();
    EXPECT_NE(std::string(s.message()).find("'y'"), std::string::npos) << s;
  }
  // Dropped without finish(): nothing is left behind.
  EXPECT_FALSE(fs::exists(path));
  size_t files = 0;
  for (const auto& e : fs::directory_iterator(dir_.path()))
    files += e.path().filename().string()[0] != '.';
  EXPECT_EQ(files, 0u);
}

TEST_F(SafetensorsTest, RejectsTruncatedFiles) {
  expect_rejected("abc", {"too short"});
  // A valid file cut short: the last tensor runs past the end.
  const std::string ok =
      raw_file(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", std::string(16, '\0'));
  ASSERT_TRUE(Reader::open(dir_.write("ok.safetensors", ok)).ok());
  expect_rejected(ok.substr(0, ok.size() - 3), {"'w'", "run past the end", "truncated"});
}

TEST_F(SafetensorsTest, RejectsAHeaderLengthPastTheEnd) {
  expect_rejected(raw_file("{}", "", 1000), {"header length 1000", "past the end"});
  expect_rejected(raw_file("{}", "", uint64_t{1} << 62), {"past the end"});
}

TEST_F(SafetensorsTest, RejectsBadJson) {
  expect_rejected(raw_file(R"({"w":{"dtype":"F32",)", ""), {"not valid JSON"});
  expect_rejected(raw_file("[1, 2]", ""), {"not a JSON object"});
  expect_rejected(raw_file(R"({"__metadata__":{"k":3}})", ""), {"__metadata__", "'k'"});
  expect_rejected(raw_file(R"({"w":{"dtype":"F32","shape":[1]}})", std::string(4, '\0')),
                  {"'w'", "data_offsets"});
  expect_rejected(raw_file(R"({"w":{"shape":[1],"data_offsets":[0,4]}})", std::string(4, '\0')),
                  {"'w'", "dtype"});
  expect_rejected(
      raw_file(R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", std::string(4, 'x')),
      {"'w'", "non-negative"});
}

// The header is read by the one strict JSON reader: nlohmann's own parser
// keeps the last of two tensors of one name and recurses without a limit.
TEST_F(SafetensorsTest, RejectsRepeatedNamesAndDeepNesting) {
  expect_rejected(raw_file(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},
                              "w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                           std::string(8, '\0')),
                  {"w: duplicate key"});
  expect_rejected(
      raw_file(R"({"m":)" + std::string(100000, '[') + std::string(100000, ']') + "}", ""),
      {"nested more than 256 levels"});
}

// A FIFO would block open() until a writer came; it is refused at once.
TEST_F(SafetensorsTest, RefusesAFifoWithoutBlocking) {
  const std::string fifo = dir_.path() + "/model.safetensors";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  auto r = Reader::open(fifo);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(r.status().message()).find("not a regular file"), std::string::npos)
      << r.status();
}

TEST_F(SafetensorsTest, RejectsOverlapsGapsAndTrailingBytes) {
  expect_rejected(raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},
                               "b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                           std::string(12, '\0')),
                  {"'a'", "'b'", "overlap"});
  expect_rejected(raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},
                               "b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                           std::string(12, '\0')),
                  {"[4, 8)", "before 'b'", "belong to no tensor"});
  expect_rejected(
      raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", std::string(6, '\0')),
      {"[4, 6)", "belong to no tensor"});
  expect_rejected(
      raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}})", std::string(4, '\0')),
      {"'a'", "end before they begin"});
}

TEST_F(SafetensorsTest, RejectsDtypeAndShapeThatDisagreeWithTheBytes) {
  expect_rejected(raw_file(R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}})",
                           std::string(12, '\0')),
                  {"'w'", "shape [2, 2] of F32 needs 16 bytes", "hold 12"});
  expect_rejected(raw_file(R"({"w":{"dtype":"BF16","shape":[4],"data_offsets":[0,16]}})",
                           std::string(16, '\0')),
                  {"'w'", "BF16 needs 8 bytes"});
  expect_rejected(
      raw_file(R"({"w":{"dtype":"F17","shape":[1],"data_offsets":[0,4]}})", std::string(4, '\0')),
      {"'w'", "unknown dtype \"F17\""});
  expect_rejected(
      raw_file(R"({"w":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}})",
               std::string(8, '\0')),
      {"'w'", "needs too many bytes"});
}

TEST_F(SafetensorsTest, ConvertsOnlyFloatDtypes) {
  const std::string path =
      dir_.write("i.safetensors", raw_file(R"({"i":{"dtype":"I32","shape":[1],"data_offsets":[0,4]},
                              "h":{"dtype":"F16","shape":[1],"data_offsets":[4,6]}})",
                                           std::string("\1\0\0\0\0\x3c", 6)));
  auto r = Reader::open(path);
  ASSERT_TRUE(r.ok()) << r.status();
  float v = 0;
  const absl::Status s = (*r)->to_fp32(*(*r)->find("i"), &v);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(s.message()).find("'i' is I32"), std::string::npos) << s;
  ASSERT_TRUE((*r)->to_fp32(*(*r)->find("h"), &v).ok());  // at an offset that is not 4-aligned
  EXPECT_EQ(v, 1.0f);
}

}  // namespace
// The writer renames over a regular file only: a FIFO and a symlink at the
// output path are refused before anything is written, and stay as they were.
TEST_F(SafetensorsTest, WriterReplacesOnlyARegularFile) {
  const std::string fifo = dir_.path() + "/out.fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  auto w = Writer::create(fifo, {{"w", Dtype::kF32, {1}}});
  EXPECT_EQ(w.status().code(), absl::StatusCode::kFailedPrecondition) << w.status();
  struct stat st;
  ASSERT_EQ(::lstat(fifo.c_str(), &st), 0);
  EXPECT_TRUE(S_ISFIFO(st.st_mode));

  const std::string target = dir_.write("target.txt", "keep");
  const std::string link = dir_.path() + "/link.safetensors";
  ASSERT_EQ(::symlink(target.c_str(), link.c_str()), 0);
  w = Writer::create(link, {{"w", Dtype::kF32, {1}}});
  EXPECT_EQ(w.status().code(), absl::StatusCode::kFailedPrecondition) << w.status();
  EXPECT_EQ(slurp(target), "keep");

  // A symlink put in place while the writer runs is refused by finish().
  const std::string later = dir_.path() + "/later.safetensors";
  w = Writer::create(later, {{"w", Dtype::kF32, {1}}});
  ASSERT_TRUE(w.ok()) << w.status();
  const float one = 1;
  ASSERT_TRUE((*w)->write_tensor("w", &one, 4).ok());
  ASSERT_EQ(::symlink(target.c_str(), later.c_str()), 0);
  EXPECT_EQ((*w)->finish().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(slurp(target), "keep");
}

}  // namespace strata::safetensors
