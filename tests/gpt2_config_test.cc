#include "model/gpt2_config.h"

#include <gtest/gtest.h>

#include <string>

namespace strata::model {
namespace {

int64_t count_of(const std::string& name) {
  auto c = gpt2_config_by_name(name);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? gpt2_param_count(*c) : -1;
}

// The figures Hugging Face's GPT2LMHeadModel reports (tied wte / lm_head).
TEST(Gpt2ConfigTest, ParamCountsMatchTheKnownFigures) {
  EXPECT_EQ(count_of("gpt2"), 124'439'808);
  EXPECT_EQ(count_of("gpt2-medium"), 354'823'168);
  EXPECT_EQ(count_of("gpt2-large"), 774'030'080);
  EXPECT_EQ(count_of("gpt2-xl"), 1'557'611'200);
}

TEST(Gpt2ConfigTest, NamedShapes) {
  auto gpt2 = gpt2_config_by_name("gpt2");
  ASSERT_TRUE(gpt2.ok());
  EXPECT_EQ(gpt2->n_layer, 12);
  EXPECT_EQ(gpt2->n_head, 12);
  EXPECT_EQ(gpt2->n_embd, 768);
  EXPECT_EQ(gpt2->vocab_size, 50257);
  EXPECT_EQ(gpt2->seq_len, 1024);
  auto tiny = gpt2_config_by_name("gpt2-tiny");
  ASSERT_TRUE(tiny.ok());
  EXPECT_EQ(tiny->vocab_size, kGpt2ByteVocab);
  EXPECT_EQ(tiny->seq_len, 256);
  // 256*128 + 256*128 + 4*(12*128^2 + 13*128) + 2*128
  EXPECT_EQ(gpt2_param_count(*tiny), 32768 + 32768 + 4 * (196608 + 1664) + 256);
  for (const Gpt2Config& c : gpt2_named_configs()) EXPECT_TRUE(validate(c).ok()) << c.name;
}

TEST(Gpt2ConfigTest, ByteLevelVocabularyChangesOnlyTheEmbedding) {
  Gpt2Config c = *gpt2_config_by_name("gpt2");
  const int64_t bpe = gpt2_param_count(c);
  c.vocab_size = kGpt2ByteVocab;
  EXPECT_EQ(bpe - gpt2_param_count(c), (50257 - 256) * 768);
}

TEST(Gpt2ConfigTest, LargestLayerIsTheTokenEmbedding) {
  EXPECT_EQ(gpt2_largest_layer_params(*gpt2_config_by_name("gpt2")), 50257 * 768);
  EXPECT_EQ(gpt2_largest_layer_params(*gpt2_config_by_name("gpt2-xl")), 50257 * 1600);
  // Byte-level and short: mlp.c_fc (E*4E + 4E) is bigger than wte and wpe.
  Gpt2Config c = *gpt2_config_by_name("gpt2-tiny");
  EXPECT_EQ(gpt2_largest_layer_params(c), 128 * 512 + 512);
}

TEST(Gpt2ConfigTest, UnknownNameSuggestsTheClosest) {
  auto c = gpt2_config_by_name("gpt2-mediun");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
  const std::string message(c.status().message());
  EXPECT_NE(message.find("did you mean \"gpt2-medium\""), std::string::npos) << message;
  EXPECT_NE(message.find("gpt2-xl"), std::string::npos) << message;  // the known list
  auto far = gpt2_config_by_name("llama-70b");
  ASSERT_FALSE(far.ok());
  EXPECT_EQ(std::string(far.status().message()).find("did you mean"), std::string::npos);
}

TEST(Gpt2ConfigTest, ValidateRejectsBadShapes) {
  Gpt2Config c;
  c.n_head = 7;  // 768 % 7 != 0
  EXPECT_EQ(validate(c).code(), absl::StatusCode::kInvalidArgument);
  c = Gpt2Config{};
  c.n_layer = 0;
  EXPECT_EQ(validate(c).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace strata::model
