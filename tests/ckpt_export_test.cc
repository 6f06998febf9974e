// `strata ckpt export / info` and `strata train --init`, run as a user would:
// gpt2-tiny is trained for two short steps into a checkpoint, which is
// exported and the file read back by a safetensors reader written here (not
// core/safetensors), each tensor compared with the checkpoint's fp32 master
// read straight from tensors.bin. The round trip export -> train --init
// (one step at learning rate 0) -> export gives bit-identical tensors; bad
// inputs fail naming the tensor. With python3's safetensors package the
// export is also loaded there and run through a NumPy GPT-2 forward written
// in Hugging Face's conventions, which must agree with strata's own greedy
// sample from the same weights.
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/cli_test_util.h"

namespace {

using nlohmann::json;
namespace fs = std::filesystem;
using strata::testing::CliRun;
using strata::testing::ScratchDir;
using strata::testing::slurp;

constexpr int64_t kC = 128;  // gpt2-tiny: n_embd
constexpr int64_t kLayers = 4;
constexpr int64_t kVocab = 256;  // byte-level
constexpr int64_t kPositions = 256;

// fp32 compute (the greedy-sample comparison wants the exact weights) and
// AdamW; the second config leaves every weight where it is.
constexpr char kConfig[] = R"({
  "train_micro_batch_size_per_gpu": 1,
  "gradient_accumulation_steps": 1,
  "optimizer": {"type": "AdamW", "params": {"lr": 3e-3, "weight_decay": 0.01}},
  "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}
})";
constexpr char kFrozenConfig[] = R"({
  "train_micro_batch_size_per_gpu": 1,
  "gradient_accumulation_steps": 1,
  "optimizer": {"type": "AdamW", "params": {"lr": 0, "weight_decay": 0.01}},
  "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}
})";

// ---- an independent safetensors reader ----

struct StTensor {
  std::string dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;
};

struct StFile {
  uint64_t header_len = 0;
  json header;
  std::string data;  // the data section
  std::map<std::string, StTensor> tensors;
  std::string bytes(const std::string& name) const {
    const StTensor& t = tensors.at(name);
    return data.substr(t.begin, t.end - t.begin);
  }
};

StFile parse_safetensors(const std::string& path) {
  StFile f;
  const std::string raw = slurp(path);
  EXPECT_GE(raw.size(), 8u) << path;
  if (raw.size() < 8) return f;
  for (int i = 7; i >= 0; --i) f.header_len = (f.header_len << 8) | static_cast<uint8_t>(raw[i]);
  EXPECT_LE(8 + f.header_len, raw.size()) << path;
  EXPECT_EQ((8 + f.header_len) % 8, 0u) << "header not padded to 8 bytes: " << path;
  f.header = json::parse(raw.substr(8, f.header_len));
  f.data = raw.substr(8 + f.header_len);
  for (const auto& [name, v] : f.header.items()) {
    if (name == "__metadata__") continue;
    StTensor t;
    t.dtype = v.at("dtype").get<std::string>();
    t.shape = v.at("shape").get<std::vector<int64_t>>();
    t.begin = v.at("data_offsets")[0].get<uint64_t>();
    t.end = v.at("data_offsets")[1].get<uint64_t>();
    f.tensors[name] = t;
  }
  return f;
}

// Writes a safetensors file from a header object and a data section.
void write_safetensors(const std::string& path, const json& header, const std::string& data) {
  std::string text = header.dump();
  text.append((8 - (8 + text.size()) % 8) % 8, ' ');
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(uint64_t{text.size()} >> (8 * i));
  std::ofstream(path, std::ios::binary) << out << text << data;
}

// ---- what the export of a gpt2-tiny parameter must look like ----

struct Expected {
  std::string name;            // Hugging Face name
  std::vector<int64_t> shape;  // Hugging Face shape
  bool transposed = false;     // strata holds [out, in], HF Conv1D [in, out]
};

Expected expected_hf(int layer, const std::string& param) {
  if (layer == 0) return {param + ".weight", {param == "wte" ? kVocab : kPositions, kC}};
  const std::string p = layer == kLayers + 1 ? "" : "h." + std::to_string(layer - 1) + ".";
  const std::string suffix = param.substr(param.size() - 2) == ".w" ? "weight" : "bias";
  const std::string base = p + param.substr(0, param.size() - 1) + suffix;
  const std::map<std::string, std::vector<int64_t>> weights = {{"attn.c_attn.w", {kC, 3 * kC}},
                                                               {"attn.c_proj.w", {kC, kC}},
                                                               {"mlp.c_fc.w", {kC, 4 * kC}},
                                                               {"mlp.c_proj.w", {4 * kC, kC}}};
  if (auto it = weights.find(param); it != weights.end()) return {base, it->second, true};
  const int64_t n = param == "attn.c_attn.b" ? 3 * kC : param == "mlp.c_fc.b" ? 4 * kC : kC;
  return {base, {n}};
}

// The HF layout of a strata [out, in] weight: element [i][o] = strata[o][i].
std::string transpose_fp32(const std::string& bytes, int64_t in, int64_t out) {
  std::string t(bytes.size(), '\0');
  for (int64_t o = 0; o < out; ++o) {
    for (int64_t i = 0; i < in; ++i)
      std::memcpy(&t[(i * out + o) * 4], &bytes[(o * in + i) * 4], 4);
  }
  return t;
}

uint16_t to_bf16(float f) {  // round to nearest even (no NaNs here)
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

class CkptExportTest : public ::testing::Test {
 protected:
  // One trained checkpoint for the whole suite.
  static void SetUpTestSuite() {
    scratch_ = new ScratchDir("strata_ckpt_export_test_");
    std::string text;
    for (int i = 0; i < 300; ++i) {
      text += "the quick brown fox jumps over the lazy dog " + std::to_string(i % 10) + "\n";
    }
    scratch_->write("corpus/a.txt", text);
    scratch_->write("ds.json", kConfig);
    scratch_->write("frozen.json", kFrozenConfig);
    const CliRun r =
        scratch_->run_strata(train_args("ds.json", 2) + " --save-dir '" + ckpt() + "'");
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  static void TearDownTestSuite() {
    delete scratch_;
    scratch_ = nullptr;
  }

  static std::string dir() { return scratch_->path(); }
  static std::string ckpt() { return dir() + "/ckpt"; }
  static std::string train_args(const std::string& config, int steps) {
    return "train --model gpt2-tiny --data '" + dir() + "/corpus' --deepspeed_config '" + dir() +
           "/" + config + "' --seq-len 16 --eval-batches 1 --steps " + std::to_string(steps);
  }
  static CliRun strata(const std::string& args, const std::string& prefix = "") {
    return scratch_->run_strata(args, prefix);
  }

  // meta.json's parameter table and the fp32 master bytes of each entry.
  static json meta(const std::string& ck) { return json::parse(slurp(ck + "/meta.json")); }
  static std::string master(const std::string& ck, const json& param) {
    static std::map<std::string, std::string> files;  // each tensors.bin read once
    auto it = files.find(ck);
    if (it == files.end()) it = files.emplace(ck, slurp(ck + "/tensors.bin")).first;
    return it->second.substr(param["master"]["offset"].get<uint64_t>(),
                             param["master"]["bytes"].get<uint64_t>());
  }

  static ScratchDir* scratch_;
};

ScratchDir* CkptExportTest::scratch_ = nullptr;

TEST_F(CkptExportTest, ExportHoldsTheMasterWeightsUnderHuggingFaceNames) {
  const std::string out = dir() + "/hf.safetensors";
  const CliRun r = strata("ckpt export '" + ckpt() + "' --to '" + out + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
  EXPECT_NE(r.err.find("exported 52 tensors"), std::string::npos) << r.err;

  const StFile f = parse_safetensors(out);
  const json& md = f.header.at("__metadata__");
  EXPECT_EQ(md.at("format"), "pt");
  EXPECT_EQ(json::parse(md.at("strata.model").get<std::string>()).at("name"), "gpt2-tiny");

  const json m = meta(ckpt());
  ASSERT_EQ(m["params"].size(), 2 + 12 * kLayers + 2);
  ASSERT_EQ(f.tensors.size(), m["params"].size());
  uint64_t covered = 0;
  for (const json& p : m["params"]) {
    const Expected e = expected_hf(p["layer"].get<int>(), p["name"].get<std::string>());
    SCOPED_TRACE(e.name);
    ASSERT_EQ(f.tensors.count(e.name), 1u);
    const StTensor& t = f.tensors.at(e.name);
    EXPECT_EQ(t.dtype, "F32");
    EXPECT_EQ(t.shape, e.shape);
    // Written in the checkpoint's order, back to back.
    EXPECT_EQ(t.begin, covered);
    EXPECT_EQ(t.end - t.begin, p["numel"].get<uint64_t>() * 4);
    covered = t.end;
    const std::string want = e.transposed
                                 ? transpose_fp32(master(ckpt(), p), e.shape[0], e.shape[1])
                                 : master(ckpt(), p);
    EXPECT_TRUE(f.bytes(e.name) == want) << "bytes differ from the checkpoint's master";
  }
  EXPECT_EQ(covered, f.data.size());
}

TEST_F(CkptExportTest, ExportsStrataNamesAndHalfPrecision) {
  const std::string out = dir() + "/strata_bf16.safetensors";
  const CliRun r =
      strata("ckpt export '" + ckpt() + "' --to '" + out + "' --names strata --dtype bf16 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json j = json::parse(r.out);  // exactly one object on stdout
  EXPECT_EQ(j["dtype"], "bf16");
  EXPECT_EQ(j["names"], "strata");
  EXPECT_EQ(j["tensors"], 52);
  EXPECT_EQ(j["bytes"].get<uint64_t>(), fs::file_size(out));

  const StFile f = parse_safetensors(out);
  const json m = meta(ckpt());
  ASSERT_EQ(m["params"].size(), 52u);
  for (const json& p : m["params"]) {
    const std::string name =
        "layer" + std::to_string(p["layer"].get<int>()) + "." + p["name"].get<std::string>();
    SCOPED_TRACE(name);
    ASSERT_EQ(f.tensors.count(name), 1u);
    const StTensor& t = f.tensors.at(name);
    EXPECT_EQ(t.dtype, "BF16");
    uint64_t numel = 1;
    for (int64_t d : t.shape) numel *= d;
    EXPECT_EQ(numel, p["numel"].get<uint64_t>());
    const Expected e = expected_hf(p["layer"].get<int>(), p["name"].get<std::string>());
    if (e.transposed) {
      EXPECT_EQ(t.shape, (std::vector<int64_t>{e.shape[1], e.shape[0]}));
    }
    // strata's layout, each element the master rounded to bf16.
    const std::string mb = master(ckpt(), p), got = f.bytes(name);
    ASSERT_EQ(got.size(), mb.size() / 2);
    size_t bad = 0;
    for (size_t i = 0; i < numel; ++i) {
      float x;
      uint16_t h;
      std::memcpy(&x, &mb[i * 4], 4);
      std::memcpy(&h, &got[i * 2], 2);
      bad += h != to_bf16(x);
    }
    EXPECT_EQ(bad, 0u);
  }

  const std::string f16 = dir() + "/hf_f16.safetensors";
  ASSERT_EQ(strata("ckpt export '" + ckpt() + "' --to '" + f16 + "' --dtype fp16").exit_code, 0);
  const StFile h = parse_safetensors(f16);
  EXPECT_EQ(h.tensors.at("h.0.mlp.c_fc.weight").dtype, "F16");
  EXPECT_EQ(h.tensors.at("h.0.mlp.c_fc.weight").shape, (std::vector<int64_t>{kC, 4 * kC}));
  EXPECT_EQ(h.data.size(), parse_safetensors(dir() + "/strata_bf16.safetensors").data.size());
}

// export -> train --init (one step at learning rate 0) -> export: the same
// tensors bit for bit; a bf16 file initialises to its widened values.
TEST_F(CkptExportTest, InitFromAnExportRoundTripsBitForBit) {
  const std::string a = dir() + "/rt_a.safetensors", b = dir() + "/rt_b.safetensors";
  const std::string d2 = dir() + "/rt_ckpt";
  ASSERT_EQ(strata("ckpt export '" + ckpt() + "' --to '" + a + "'").exit_code, 0);
  CliRun r = strata(train_args("frozen.json", 1) + " --init '" + a + "' --save-dir '" + d2 + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("weights initialised from " + a), std::string::npos) << r.err;
  ASSERT_EQ(strata("ckpt export '" + d2 + "' --to '" + b + "'").exit_code, 0);
  const StFile fa = parse_safetensors(a), fb = parse_safetensors(b);
  ASSERT_EQ(fa.tensors.size(), 52u);
  ASSERT_EQ(fb.tensors.size(), fa.tensors.size());
  for (const auto& [name, t] : fa.tensors) {
    SCOPED_TRACE(name);
    ASSERT_EQ(fb.tensors.count(name), 1u);
    EXPECT_EQ(fb.tensors.at(name).shape, t.shape);
    EXPECT_TRUE(fb.bytes(name) == fa.bytes(name));
  }

  // Strata names and bf16 read back too: the model starts from the bf16
  // values widened exactly.
  const std::string s16 = dir() + "/rt_s16.safetensors", c = dir() + "/rt_c.safetensors";
  const std::string d3 = dir() + "/rt_ckpt3";
  ASSERT_EQ(strata("ckpt export '" + ckpt() + "' --to '" + s16 + "' --names strata --dtype bf16")
                .exit_code,
            0);
  r = strata(train_args("frozen.json", 1) + " --init '" + s16 + "' --save-dir '" + d3 + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_EQ(strata("ckpt export '" + d3 + "' --to '" + c + "' --names strata").exit_code, 0);
  const StFile f16 = parse_safetensors(s16), fc = parse_safetensors(c);
  for (const auto& [name, t] : f16.tensors) {
    SCOPED_TRACE(name);
    const std::string h = f16.bytes(name), w = fc.bytes(name);
    ASSERT_EQ(w.size(), h.size() * 2);
    size_t bad = 0;
    for (size_t i = 0; i < h.size() / 2; ++i) {
      uint16_t x;
      uint32_t y;
      std::memcpy(&x, &h[i * 2], 2);
      std::memcpy(&y, &w[i * 4], 4);
      bad += y != uint32_t{x} << 16;
    }
    EXPECT_EQ(bad, 0u);
  }
}

TEST_F(CkptExportTest, InitRejectsFilesThatDoNotFitTheModel) {
  const std::string a = dir() + "/init_a.safetensors";
  ASSERT_EQ(strata("ckpt export '" + ckpt() + "' --to '" + a + "'").exit_code, 0);
  StFile f = parse_safetensors(a);

  // Shape mismatch: c_attn's weight declared as strata's [3C, C].
  json header = f.header;
  header["h.0.attn.c_attn.weight"]["shape"] = {3 * kC, kC};
  const std::string swapped = dir() + "/init_swapped.safetensors";
  write_safetensors(swapped, header, f.data);
  CliRun r = strata(train_args("frozen.json", 1) + " --init '" + swapped + "'");
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_EQ(r.err.rfind("strata: error: --init: ", 0), 0u) << r.err;
  EXPECT_NE(r.err.find("'h.0.attn.c_attn.weight' has shape [384, 128]"), std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("needs [128, 384]"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("step "), std::string::npos) << "trained anyway: " << r.err;

  // A missing tensor is named.
  header = f.header;
  header["h.3.ln_2.biax"] = header["h.3.ln_2.bias"];
  header.erase("h.3.ln_2.bias");
  const std::string renamed = dir() + "/init_renamed.safetensors";
  write_safetensors(renamed, header, f.data);
  r = strata(train_args("frozen.json", 1) + " --init '" + renamed + "'");
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("no tensor 'h.3.ln_2.bias'"), std::string::npos) << r.err;

  // GPT-2's BPE embedding offered to the byte-level model (a sparse file).
  const std::string bpe = dir() + "/init_bpe.safetensors";
  const uint64_t bytes = uint64_t{50257} * kC * 4;
  write_safetensors(
      bpe,
      {{"wte.weight", {{"dtype", "F32"}, {"shape", {50257, kC}}, {"data_offsets", {0, bytes}}}}},
      "");
  fs::resize_file(bpe, fs::file_size(bpe) + bytes);
  r = strata(train_args("frozen.json", 1) + " --init '" + bpe + "'");
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("[50257, 128]"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("byte-level"), std::string::npos) << r.err;

  // A block the model does not have (a deeper model's file).
  header = f.header;
  header["h.4.ln_1.weight"] = {
      {"dtype", "F32"}, {"shape", {kC}}, {"data_offsets", {f.data.size(), f.data.size() + 4 * kC}}};
  const std::string deeper = dir() + "/init_deeper.safetensors";
  write_safetensors(deeper, header, f.data + std::string(4 * kC, '\0'));
  r = strata(train_args("frozen.json", 1) + " --init '" + deeper + "'");
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("'h.4.ln_1.weight', which model gpt2-tiny (4 layers) has no place for"),
            std::string::npos)
      << r.err;

  // A damaged file is refused by the reader, naming the file.
  const std::string cut = dir() + "/init_cut.safetensors";
  fs::copy_file(a, cut);
  fs::resize_file(cut, fs::file_size(a) - 100);
  r = strata(train_args("frozen.json", 1) + " --init '" + cut + "'");
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find(cut), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("run past the end"), std::string::npos) << r.err;

  // --init with --resume: two sources of weights, a usage error.
  r = strata(train_args("frozen.json", 1) + " --init '" + a + "' --resume '" + ckpt() + "'");
  EXPECT_EQ(r.exit_code, 2) << r.err;
}

// A file as transformers' GPT2LMHeadModel saves it: names under
// "transformer.", the attention-mask buffers and a separate lm_head.weight,
// none of which strata needs.
TEST_F(CkptExportTest, InitReadsHuggingFaceLmHeadFiles) {
  const std::string a = dir() + "/lm_a.safetensors", b = dir() + "/lm_b.safetensors";
  ASSERT_EQ(strata("ckpt export '" + ckpt() + "' --to '" + a + "'").exit_code, 0);
  const StFile f = parse_safetensors(a);
  json header = {{"__metadata__", {{"format", "pt"}}}};
  for (const auto& [name, v] : f.header.items()) {
    if (name != "__metadata__") header["transformer." + name] = v;
  }
  uint64_t end = f.data.size();
  auto extra = [&](const std::string& name, const std::string& dtype, std::vector<int64_t> shape,
                   uint64_t bytes) {
    header[name] = {{"dtype", dtype}, {"shape", shape}, {"data_offsets", {end, end + bytes}}};
    end += bytes;
  };
  for (int i = 0; i < kLayers; ++i) {
    const std::string h = "transformer.h." + std::to_string(i);
    extra(h + ".attn.bias", "F32", {1, 1, 16, 16}, 16 * 16 * 4);
    extra(h + ".attn.masked_bias", "F32", {}, 4);
  }
  extra("lm_head.weight", "F16", {kVocab, kC}, kVocab * kC * 2);
  const std::string lm = dir() + "/lm_head.safetensors";
  write_safetensors(lm, header, f.data + std::string(end - f.data.size(), '\0'));

  const std::string d2 = dir() + "/lm_ckpt";
  const CliRun r =
      strata(train_args("frozen.json", 1) + " --init '" + lm + "' --save-dir '" + d2 + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_EQ(strata("ckpt export '" + d2 + "' --to '" + b + "'").exit_code, 0);
  const StFile fb = parse_safetensors(b);
  EXPECT_TRUE(fb.data == f.data) << "the weights changed on the way through --init";
}

TEST_F(CkptExportTest, CorruptCheckpointFailsNamingTheTensor) {
  const std::string bad = dir() + "/corrupt";
  fs::copy(ckpt(), bad, fs::copy_options::recursive);
  const json m = meta(bad);
  const json* target = nullptr;
  for (const json& p : m["params"]) {
    if (p["layer"] == 2 && p["name"] == "mlp.c_fc.w") target = &p;
  }
  ASSERT_NE(target, nullptr);
  {
    std::fstream bin(bad + "/tensors.bin", std::ios::in | std::ios::out | std::ios::binary);
    bin.seekp(static_cast<std::streamoff>((*target)["master"]["offset"].get<uint64_t>() + 1001));
    bin.put('\x5a');
  }
  const std::string out = dir() + "/corrupt_out/x.safetensors";
  fs::create_directories(dir() + "/corrupt_out");
  const CliRun r = strata("ckpt export '" + bad + "' --to '" + out + "'");
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_EQ(r.err.rfind("strata: error: ", 0), 0u) << r.err;
  EXPECT_NE(r.err.find("checksum mismatch for tensor layer2.mlp.c_fc.w"), std::string::npos)
      << r.err;
  EXPECT_TRUE(fs::is_empty(dir() + "/corrupt_out")) << "a partial export was left behind";
}

TEST_F(CkptExportTest, CheckpointWithoutAModelExportsStrataNames) {
  const std::string plain = dir() + "/plain";
  fs::copy(ckpt(), plain, fs::copy_options::recursive);
  json m = meta(plain);
  m.erase("user");
  std::ofstream(plain + "/meta.json") << m.dump(2);

  const std::string out = dir() + "/plain.safetensors";
  CliRun r = strata("ckpt export '" + plain + "' --to '" + out + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const StFile f = parse_safetensors(out);
  const StTensor& t = f.tensors.at("layer1.attn.c_attn.w");
  EXPECT_EQ(t.shape, (std::vector<int64_t>{3 * kC * kC}));  // flat: no model to shape it
  EXPECT_TRUE(f.bytes("layer1.attn.c_attn.w") == master(plain, m["params"][4]));

  r = strata("ckpt export '" + plain + "' --to '" + out + "' --names hf");
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("--names strata"), std::string::npos) << r.err;
  r = strata("ckpt info '" + plain + "' --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(json::parse(r.out)["model"].is_null());
}

TEST_F(CkptExportTest, InfoDescribesTheCheckpoint) {
  CliRun r = strata("ckpt info '" + ckpt() + "' --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json j = json::parse(r.out);
  EXPECT_EQ(j["steps"], 2);
  EXPECT_EQ(j["compute_dtype"], "fp32");
  EXPECT_EQ(j["model"]["name"], "gpt2-tiny");
  EXPECT_EQ(j["tokenizer"]["kind"], "bytes");
  EXPECT_EQ(j["train_seq_len"], 16);
  EXPECT_EQ(j["tensors"], 52);
  uint64_t numel = 0;
  const json m = meta(ckpt());
  for (const json& p : m["params"]) numel += p["numel"].get<uint64_t>();
  EXPECT_EQ(j["params"].get<uint64_t>(), numel);
  EXPECT_EQ(j["tensor_file_bytes"].get<uint64_t>(), fs::file_size(ckpt() + "/tensors.bin"));

  r = strata("ckpt info '" + ckpt() + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(r.out.empty());
  EXPECT_NE(r.err.find("gpt2-tiny"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("52 parameters"), std::string::npos) << r.err;

  r = strata("ckpt info '" + dir() + "/nope'");
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("nope"), std::string::npos) << r.err;
  EXPECT_EQ(strata("ckpt export '" + ckpt() + "' --to x --dtype fp64").exit_code, 2);
  EXPECT_EQ(strata("ckpt").exit_code, 2);
}

// `ckpt export CK --to CK/tensors.bin` would overwrite the checkpoint it
// reads (and a hard link or symlink to it is the same file); --to a FIFO, a
// symlink or a directory would be replaced by a regular file. All refused,
// with the checkpoint and the path as they were.
TEST_F(CkptExportTest, ExportNeverReplacesItsInputOrANonRegularFile) {
  const std::string ck = dir() + "/self";
  fs::copy(ckpt(), ck, fs::copy_options::recursive);
  const std::string bin = slurp(ck + "/tensors.bin");
  fs::create_hard_link(ck + "/tensors.bin", dir() + "/self_hard");
  fs::create_symlink(ck + "/meta.json", dir() + "/self_soft");
  for (const std::string& to :
       {ck + "/tensors.bin", ck + "/meta.json", dir() + "/self_hard", dir() + "/self_soft"}) {
    const CliRun r = strata("ckpt export '" + ck + "' --to '" + to + "'");
    EXPECT_EQ(r.exit_code, 1) << to << ": " << r.err;
    EXPECT_EQ(r.err.rfind("strata: error: ", 0), 0u) << r.err;
    EXPECT_NE(r.err.find("--to"), std::string::npos) << r.err;
  }
  EXPECT_TRUE(slurp(ck + "/tensors.bin") == bin) << "the checkpoint was overwritten";
  EXPECT_TRUE(fs::is_symlink(dir() + "/self_soft"));
  ASSERT_EQ(strata("ckpt info '" + ck + "'").exit_code, 0);

  const std::string fifo = dir() + "/out.fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  CliRun r = strata("ckpt export '" + ck + "' --to '" + fifo + "'", "timeout 60 ");
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("a FIFO"), std::string::npos) << r.err;
  EXPECT_TRUE(fs::is_fifo(fifo));
  r = strata("ckpt export '" + ck + "' --to '" + dir() + "'");
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("a directory"), std::string::npos) << r.err;
}

// A damaged meta.json (a wrong JSON type, absurd sizes, deep nesting) or a
// FIFO for tensors.bin: info, export and sample each fail with one error line
// naming the file and the key, never an abort or a hang.
TEST_F(CkptExportTest, DamagedCheckpointsFailWithOneErrorLine) {
  const std::string ck = dir() + "/damaged";
  fs::copy(ckpt(), ck, fs::copy_options::recursive);
  const json good = meta(ck);
  const std::string out = dir() + "/damaged.safetensors";
  auto expect_refused = [&](const std::string& what, const std::string& key) {
    for (const std::string& cmd :
         {"ckpt info '" + ck + "' --json", "ckpt export '" + ck + "' --to '" + out + "'",
          "sample --ckpt '" + ck + "' --prompt a --tokens 1"}) {
      const CliRun r = strata(cmd, "timeout 60 ");
      EXPECT_EQ(r.exit_code, 1) << what << ": " << cmd << "\n" << r.err;
      EXPECT_EQ(r.err.rfind("strata: error: ", 0), 0u) << what << ": " << r.err;
      EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << what << ": " << r.err;
      EXPECT_NE(r.err.find(key), std::string::npos) << what << ": " << r.err;
      EXPECT_TRUE(r.out.empty()) << what << ": " << r.out;
    }
    EXPECT_FALSE(fs::exists(out)) << what;
  };
  json m = good;
  m["steps"] = "two";
  std::ofstream(ck + "/meta.json") << m.dump();
  expect_refused("steps as a string", "meta.json: steps: expected an integer");
  m = good;
  m["params"][3]["master"]["offset"] = json::array();
  std::ofstream(ck + "/meta.json") << m.dump();
  expect_refused("an offset as an array", "params[3].master.offset");
  m = good;
  m["params"][0]["numel"] = uint64_t{1} << 58;
  for (const char* k : {"master", "exp_avg", "exp_avg_sq"}) {
    m["params"][0][k]["bytes"] = uint64_t{1} << 60;
  }
  m["params"][0]["compute"]["bytes"] = uint64_t{1} << 60;
  std::ofstream(ck + "/meta.json") << m.dump();
  expect_refused("a numel of 2^58", "run past the end of");
  m = good;
  m["user"]["model"]["name"] = 5;
  std::ofstream(ck + "/meta.json") << m.dump();
  expect_refused("user.model.name as a number", "\"name\" is not a string");
  m = good;
  m["user"]["tokenizer"]["kind"] = 5;
  std::ofstream(ck + "/meta.json") << m.dump();
  const CliRun r = strata("sample --ckpt '" + ck + "' --prompt a --tokens 1");
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("user.tokenizer.kind"), std::string::npos) << r.err;
  {
    std::string deep = good.dump();
    deep.pop_back();
    std::ofstream(ck + "/meta.json")
        << deep + ", \"x\": " + std::string(200000, '[') + std::string(200000, ']') + "}";
  }
  expect_refused("nested 200000 deep", "nested more than");

  std::ofstream(ck + "/meta.json") << good.dump();
  fs::remove(ck + "/tensors.bin");
  ASSERT_EQ(::mkfifo((ck + "/tensors.bin").c_str(), 0600), 0);
  expect_refused("a FIFO for tensors.bin", "tensors.bin is not a regular file");
}

// The Python side: safetensors loads the export, and a NumPy GPT-2 written in
// Hugging Face's conventions (Conv1D: x @ W[in, out]) scores each byte of
// strata's greedy sample from the same weights as its most likely next byte.
constexpr char kPythonCheck[] = R"PY(
import json, sys
import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file

path, sample_hex, seq_len = sys.argv[1], sys.argv[2], int(sys.argv[3])
w = {k: v.astype(np.float64) for k, v in load_file(path).items()}
with safe_open(path, "np") as f:
    cfg = json.loads(f.metadata()["strata.model"])
C, L, H = cfg["n_embd"], cfg["n_layer"], cfg["n_head"]
assert w["wte.weight"].shape == (cfg["vocab_size"], C), w["wte.weight"].shape
assert w["h.0.attn.c_attn.weight"].shape == (C, 3 * C)
assert w["h.0.mlp.c_proj.weight"].shape == (4 * C, C)

def ln(x, g, b):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + 1e-5) * g + b

def gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))

def logits(ids):
    t, hs = len(ids), C // H
    x = w["wte.weight"][ids] + w["wpe.weight"][:t]
    for i in range(L):
        p = lambda n: w["h.%d.%s" % (i, n)]
        qkv = ln(x, p("ln_1.weight"), p("ln_1.bias")) @ p("attn.c_attn.weight") + p("attn.c_attn.bias")
        q, k, v = (a.reshape(t, H, hs).transpose(1, 0, 2) for a in np.split(qkv, 3, axis=-1))
        s = q @ k.transpose(0, 2, 1) / np.sqrt(hs)
        s = np.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
        s = np.exp(s - s.max(-1, keepdims=True))
        y = ((s / s.sum(-1, keepdims=True)) @ v).transpose(1, 0, 2).reshape(t, C)
        x = x + y @ p("attn.c_proj.weight") + p("attn.c_proj.bias")
        h = gelu(ln(x, p("ln_2.weight"), p("ln_2.bias")) @ p("mlp.c_fc.weight") + p("mlp.c_fc.bias"))
        x = x + h @ p("mlp.c_proj.weight") + p("mlp.c_proj.bias")
    return ln(x, w["ln_f.weight"], w["ln_f.bias"]) @ w["wte.weight"].T

ids = [10]  # strata samples after "\n"
for k, tok in enumerate(bytes.fromhex(sample_hex)):
    z = logits(ids[-seq_len:])[-1]
    best = int(z.argmax())
    if z[tok] < z[best] - 1e-4 * max(1.0, abs(z[best])):
        sys.exit("byte %d: strata chose %d (logit %.6f), HF-convention forward prefers %d (%.6f)"
                 % (k, tok, z[tok], best, z[best]))
    ids.append(tok)
print("ok", len(ids) - 1)
)PY";

TEST_F(CkptExportTest, PythonSafetensorsLoadsTheExportAndAgreesWithStrata) {
  if (std::system("python3 -c 'import safetensors, numpy' >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "python3 with the safetensors and numpy packages is not available";
  }
  const std::string out = dir() + "/py.safetensors";
  ASSERT_EQ(strata("ckpt export '" + ckpt() + "' --to '" + out + "'").exit_code, 0);
  // strata's greedy continuation from the same weights (--init, nothing learned).
  constexpr int kBytes = 12;
  const CliRun r = strata(train_args("frozen.json", 1) + " --init '" + out + "' --sample " +
                          std::to_string(kBytes) + " --temperature 0");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string marker = "temperature 0.00):\n";
  const size_t at = r.err.find(marker);
  ASSERT_NE(at, std::string::npos) << r.err;
  ASSERT_GE(r.err.size(), at + marker.size() + kBytes) << r.err;
  std::string hex;
  for (int i = 0; i < kBytes; ++i) {
    char buf[3];
    std::snprintf(buf, sizeof(buf), "%02x",
                  static_cast<unsigned char>(r.err[at + marker.size() + i]));
    hex += buf;
  }
  const std::string script = scratch_->write("check.py", kPythonCheck);
  const std::string log = dir() + "/py.log";
  const int rc = std::system(
      ("python3 '" + script + "' '" + out + "' " + hex + " 16 >'" + log + "' 2>&1").c_str());
  EXPECT_EQ(rc, 0) << slurp(log);
  EXPECT_NE(slurp(log).find("ok 12"), std::string::npos) << slurp(log);
}

}  // namespace
