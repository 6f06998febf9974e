// The C API through libstrata.so: what a C caller gets for bad input (codes
// and messages, never an abort), the per-thread last error, the version
// check, and one small training run over host bindings with a checkpoint
// round trip.
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "strata/strata.h"

namespace {

using ::testing::HasSubstr;

// fp32, AdamW offloaded to the host: host bindings of float arrays.
constexpr const char* kConfig = R"({
  "train_micro_batch_size_per_gpu": 4,
  "gradient_accumulation_steps": 1,
  "optimizer": {"type": "AdamW", "params": {"lr": 0.1, "weight_decay": 0.0}},
  "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}
})";

std::string last_error() { return strata_last_error(); }

// An optimizer with one group and two fp32 host-bound params, in bucket 0
// and 1, finalized.
class CApiOptimizer : public ::testing::Test {
 protected:
  void SetUp() override {
    strata_options options;
    ASSERT_EQ(strata_options_init(&options), STRATA_STATUS_OK);
    options.num_threads = 1;
    ASSERT_EQ(strata_optimizer_create(kConfig, &options, &opt_), STRATA_STATUS_OK) << last_error();
    strata_group_hparams hp;
    ASSERT_EQ(strata_group_defaults(opt_, &hp), STRATA_STATUS_OK);
    EXPECT_DOUBLE_EQ(hp.lr, 0.1);
    ASSERT_EQ(strata_add_group(opt_, &hp, &group_), STRATA_STATUS_OK) << last_error();
    strata_param_desc a = {"a", a_.size(), 0, group_, STRATA_BINDING_HOST, a_.data(), ga_.data()};
    strata_param_desc b = {"b", b_.size(), 1, group_, STRATA_BINDING_HOST, b_.data(), gb_.data()};
    ASSERT_EQ(strata_add_param(opt_, &a, &pa_), STRATA_STATUS_OK) << last_error();
    ASSERT_EQ(strata_add_param(opt_, &b, &pb_), STRATA_STATUS_OK) << last_error();
    if (finalize_) {
      ASSERT_EQ(strata_finalize(opt_), STRATA_STATUS_OK) << last_error();
    }
  }
  void TearDown() override { strata_optimizer_destroy(opt_); }

  bool finalize_ = true;
  strata_optimizer* opt_ = nullptr;
  int group_ = -1, pa_ = -1, pb_ = -1;
  std::vector<float> a_ = std::vector<float>(8), ga_ = std::vector<float>(8);
  std::vector<float> b_ = std::vector<float>(3), gb_ = std::vector<float>(3);
};

class CApiRegistration : public CApiOptimizer {
 protected:
  CApiRegistration() { finalize_ = false; }
};

TEST(CApiTest, VersionMatchesHeaderAndChecksCompatibility) {
  EXPECT_STREQ(strata_version(), STRATA_VERSION_STRING);
  EXPECT_EQ(STRATA_CHECK_VERSION(), STRATA_STATUS_OK);
  EXPECT_EQ(strata_check_version(STRATA_VERSION_MAJOR, 0), STRATA_STATUS_OK);
  EXPECT_EQ(strata_check_version(STRATA_VERSION_MAJOR + 1, 0), STRATA_STATUS_FAILED_PRECONDITION);
  EXPECT_THAT(last_error(), HasSubstr(STRATA_VERSION_STRING));
  EXPECT_EQ(strata_check_version(STRATA_VERSION_MAJOR, STRATA_VERSION_MINOR + 1),
            STRATA_STATUS_FAILED_PRECONDITION);
}

TEST(CApiTest, StatusNamesCoverTheEnumAndOutsideIt) {
  EXPECT_STREQ(strata_status_name(STRATA_STATUS_OK), "OK");
  EXPECT_STREQ(strata_status_name(STRATA_STATUS_INVALID_ARGUMENT), "INVALID_ARGUMENT");
  EXPECT_STREQ(strata_status_name(STRATA_STATUS_UNAUTHENTICATED), "UNAUTHENTICATED");
  EXPECT_STREQ(strata_status_name(static_cast<strata_status>(99)), "UNKNOWN_STATUS");
}

TEST(CApiTest, NullHandleAndNullPointersAreInvalidArgument) {
  strata_group_hparams hp{};
  int out = 0;
  strata_step_result r;
  float v[1] = {0};
  EXPECT_EQ(strata_add_group(nullptr, &hp, &out), STRATA_STATUS_INVALID_ARGUMENT);
  EXPECT_THAT(last_error(), HasSubstr("strata_add_group: opt is NULL"));
  EXPECT_EQ(strata_finalize(nullptr), STRATA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(strata_begin_step(nullptr, NAN, nullptr), STRATA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(strata_grad_ready(nullptr, 0), STRATA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(strata_finish_step(nullptr, &r), STRATA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(strata_set_value(nullptr, 0, v, 1), STRATA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(strata_read_state(nullptr, 0, STRATA_STATE_MASTER, v, 1),
            STRATA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(strata_save_state(nullptr, "/tmp/x", nullptr), STRATA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(strata_load_state(nullptr, "/tmp/x", false), STRATA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(strata_num_params(nullptr, &out), STRATA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(strata_options_init(nullptr), STRATA_STATUS_INVALID_ARGUMENT);
  strata_optimizer_destroy(nullptr);  // a no-op

  EXPECT_EQ(strata_optimizer_create(kConfig, nullptr, nullptr), STRATA_STATUS_INVALID_ARGUMENT);
  EXPECT_THAT(last_error(), HasSubstr("out is NULL"));
  strata_optimizer* opt = reinterpret_cast<strata_optimizer*>(0x1);
  EXPECT_EQ(strata_optimizer_create(nullptr, nullptr, &opt), STRATA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(opt, nullptr);
  EXPECT_THAT(last_error(), HasSubstr("ds_config_json is NULL"));
}

TEST(CApiTest, BadConfigNamesTheProblem) {
  strata_optimizer* opt = nullptr;
  EXPECT_EQ(strata_optimizer_create("{\"train_batch_size\": 4,", nullptr, &opt),
            STRATA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(opt, nullptr);
  EXPECT_THAT(last_error(), HasSubstr("ds_config"));

  EXPECT_EQ(
      strata_optimizer_create(
          R"({"train_batch_size": 4, "optimizer": {"type": "AdamW", "params": {"lr": "fast"}}})",
          nullptr, &opt),
      STRATA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(opt, nullptr);
  EXPECT_THAT(last_error(), HasSubstr("optimizer.params.lr"));

  EXPECT_EQ(strata_optimizer_create_from_file("/nonexistent/ds_config.json", nullptr, &opt),
            STRATA_STATUS_NOT_FOUND);
  EXPECT_THAT(last_error(), HasSubstr("/nonexistent/ds_config.json"));

  strata_options options;
  ASSERT_EQ(strata_options_init(&options), STRATA_STATUS_OK);
  options.device = static_cast<strata_device_kind>(7);
  EXPECT_EQ(strata_optimizer_create(kConfig, &options, &opt), STRATA_STATUS_INVALID_ARGUMENT);
  EXPECT_THAT(last_error(), HasSubstr("options.device"));
}

TEST(CApiTest, CreatesFromAFile) {
  const std::string path =
      ::testing::TempDir() + "/c_api_test_config." + std::to_string(getpid()) + ".json";
  FILE* f = std::fopen(path.c_str(), "w");
  ASSERT_NE(f, nullptr);
  std::fputs(kConfig, f);
  std::fclose(f);
  strata_optimizer* opt = nullptr;
  EXPECT_EQ(strata_optimizer_create_from_file(path.c_str(), nullptr, &opt), STRATA_STATUS_OK)
      << last_error();
  EXPECT_NE(opt, nullptr);
  strata_optimizer_destroy(opt);
  std::remove(path.c_str());
}

TEST(CApiTest, LastErrorIsPerThread) {
  EXPECT_EQ(strata_finalize(nullptr), STRATA_STATUS_INVALID_ARGUMENT);
  const std::string mine = last_error();
  EXPECT_THAT(mine, HasSubstr("strata_finalize"));
  std::string other_before, other_after;
  std::thread t([&] {
    other_before = strata_last_error();
    (void)strata_check_version(STRATA_VERSION_MAJOR + 1, 0);
    other_after = strata_last_error();
  });
  t.join();
  EXPECT_EQ(other_before, "");  // a new thread has seen no failure
  EXPECT_THAT(other_after, HasSubstr("strata_check_version"));
  EXPECT_EQ(last_error(), mine);  // the other thread's failure is not ours
  // Success leaves the message as it was (as errno).
  EXPECT_EQ(STRATA_CHECK_VERSION(), STRATA_STATUS_OK);
  EXPECT_EQ(last_error(), mine);
}

TEST_F(CApiRegistration, BadParamsAreRefusedWithTheirName) {
  float p[4], g[4];
  int h = -1;
  strata_param_desc d = {"w", 0, 0, group_, STRATA_BINDING_HOST, p, g};
  EXPECT_EQ(strata_add_param(opt_, &d, &h), STRATA_STATUS_INVALID_ARGUMENT);
  EXPECT_THAT(last_error(), HasSubstr("param 'w': numel is 0"));
  d.numel = 4;
  d.group = 5;
  EXPECT_EQ(strata_add_param(opt_, &d, &h), STRATA_STATUS_INVALID_ARGUMENT);
  EXPECT_THAT(last_error(), HasSubstr("group 5 does not exist"));
  d.group = group_;
  d.grad = nullptr;
  EXPECT_EQ(strata_add_param(opt_, &d, &h), STRATA_STATUS_INVALID_ARGUMENT);
  d.grad = g;
  d.binding = STRATA_BINDING_DEVICE;
  EXPECT_EQ(strata_add_param(opt_, &d, &h), STRATA_STATUS_INVALID_ARGUMENT);
  EXPECT_THAT(last_error(), HasSubstr("STRATA_DEVICE_CUDA"));
  d.binding = static_cast<strata_binding>(0);
  EXPECT_EQ(strata_add_param(opt_, &d, &h), STRATA_STATUS_INVALID_ARGUMENT);
  d.binding = STRATA_BINDING_HOST;
  d.name = nullptr;
  EXPECT_EQ(strata_add_param(opt_, &d, &h), STRATA_STATUS_INVALID_ARGUMENT);
  d.name = "a";  // taken
  EXPECT_EQ(strata_add_param(opt_, &d, &h), STRATA_STATUS_INVALID_ARGUMENT);
  EXPECT_THAT(last_error(), HasSubstr("a"));
  EXPECT_EQ(h, -1);
  int n = 0;
  ASSERT_EQ(strata_num_params(opt_, &n), STRATA_STATUS_OK);
  EXPECT_EQ(n, 2);

  strata_group_hparams bad;
  ASSERT_EQ(strata_group_defaults(opt_, &bad), STRATA_STATUS_OK);
  bad.beta1 = 1.5;
  int g2 = -1;
  EXPECT_EQ(strata_add_group(opt_, &bad, &g2), STRATA_STATUS_INVALID_ARGUMENT);
  EXPECT_THAT(last_error(), HasSubstr("betas"));
}

TEST_F(CApiRegistration, StepCallsBeforeFinalizeAreFailedPrecondition) {
  float v[8] = {0};
  EXPECT_EQ(strata_grad_ready(opt_, 0), STRATA_STATUS_FAILED_PRECONDITION);
  EXPECT_THAT(last_error(), HasSubstr("strata_finalize"));
  EXPECT_EQ(strata_begin_step(opt_, NAN, nullptr), STRATA_STATUS_FAILED_PRECONDITION);
  EXPECT_EQ(strata_set_value(opt_, 0, v, 8), STRATA_STATUS_FAILED_PRECONDITION);
  ASSERT_EQ(strata_finalize(opt_), STRATA_STATUS_OK) << last_error();
  strata_group_hparams hp{};
  int g = 0;
  EXPECT_EQ(strata_add_group(opt_, &hp, &g), STRATA_STATUS_FAILED_PRECONDITION);
  EXPECT_EQ(strata_finalize(opt_), STRATA_STATUS_FAILED_PRECONDITION);
}

TEST_F(CApiOptimizer, GradReadyOutsideAStepIsFailedPrecondition) {
  EXPECT_EQ(strata_grad_ready(opt_, 0), STRATA_STATUS_FAILED_PRECONDITION);
  EXPECT_THAT(last_error(), HasSubstr("strata_grad_ready"));
  EXPECT_EQ(strata_grad_ready(opt_, 2), STRATA_STATUS_INVALID_ARGUMENT);
  EXPECT_THAT(last_error(), HasSubstr("bucket 2 does not exist"));
  EXPECT_EQ(strata_grad_ready(opt_, -1), STRATA_STATUS_INVALID_ARGUMENT);
}

TEST_F(CApiOptimizer, BadIndicesCountsAndScalesAreRefused) {
  std::vector<float> v(8, 1.0f);
  EXPECT_EQ(strata_set_value(opt_, 2, v.data(), 8), STRATA_STATUS_INVALID_ARGUMENT);
  EXPECT_THAT(last_error(), HasSubstr("param 2 does not exist"));
  EXPECT_EQ(strata_set_value(opt_, pa_, v.data(), 7), STRATA_STATUS_INVALID_ARGUMENT);
  EXPECT_THAT(last_error(), HasSubstr("count 7 does not match param 'a' (8 values)"));
  EXPECT_EQ(strata_set_value(opt_, pa_, nullptr, 8), STRATA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(strata_read_state(opt_, pa_, static_cast<strata_state_kind>(9), v.data(), 8),
            STRATA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(strata_read_state(opt_, pa_, STRATA_STATE_MASTER, v.data(), 0),
            STRATA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(strata_begin_step(opt_, -1.0, nullptr), STRATA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(strata_begin_step(opt_, INFINITY, nullptr), STRATA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(strata_save_state(opt_, "", nullptr), STRATA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(strata_save_state(opt_, "/tmp/never-written", "[1, 2"), STRATA_STATUS_INVALID_ARGUMENT);
  EXPECT_THAT(last_error(), HasSubstr("user_meta_json"));
  strata_group_hparams hp;
  EXPECT_EQ(strata_get_group(opt_, 3, &hp), STRATA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(strata_set_group(opt_, -1, &hp), STRATA_STATUS_INVALID_ARGUMENT);
}

// A few AdamW steps of f(a, b) = sum(a^2) + sum(b^2)/2 through host
// bindings: the params fall towards 0, the bound arrays hold what
// read_state says the master weights are, and a checkpoint restores them.
TEST_F(CApiOptimizer, TrainsThroughHostBindingsAndCheckpoints) {
  std::vector<float> a0(a_.size()), b0(b_.size());
  for (size_t i = 0; i < a0.size(); ++i) a0[i] = 1.0f + 0.25f * static_cast<float>(i);
  for (size_t i = 0; i < b0.size(); ++i) b0[i] = -2.0f + static_cast<float>(i);
  ASSERT_EQ(strata_set_value(opt_, pa_, a0.data(), a0.size()), STRATA_STATUS_OK) << last_error();
  ASSERT_EQ(strata_set_value(opt_, pb_, b0.data(), b0.size()), STRATA_STATUS_OK) << last_error();
  EXPECT_EQ(a_, a0);  // set_value writes the bound param too
  EXPECT_EQ(b_, b0);
  strata_dtype dtype;
  ASSERT_EQ(strata_compute_dtype(opt_, &dtype), STRATA_STATUS_OK);
  EXPECT_EQ(dtype, STRATA_DTYPE_FLOAT32);

  auto sum_sq = [](const std::vector<float>& v) {
    double s = 0;
    for (float x : v) s += double{x} * x;
    return s;
  };
  const double start = sum_sq(a_) + sum_sq(b_);
  const std::string dir = ::testing::TempDir() + "/c_api_test_ckpt." + std::to_string(getpid());
  std::vector<float> saved_a;
  for (int step = 1; step <= 10; ++step) {
    double scale = 0;
    ASSERT_EQ(strata_begin_step(opt_, NAN, &scale), STRATA_STATUS_OK) << last_error();
    EXPECT_EQ(scale, 1.0);  // fp32: no loss scaling
    for (size_t i = 0; i < a_.size(); ++i) ga_[i] = 2 * a_[i];
    for (size_t i = 0; i < b_.size(); ++i) gb_[i] = b_[i];
    ASSERT_EQ(strata_grad_ready(opt_, 1), STRATA_STATUS_OK) << last_error();
    ASSERT_EQ(strata_grad_ready(opt_, 0), STRATA_STATUS_OK) << last_error();
    strata_step_result r;
    ASSERT_EQ(strata_finish_step(opt_, &r), STRATA_STATUS_OK) << last_error();
    EXPECT_EQ(r.step, step);
    EXPECT_FALSE(r.skipped);
    EXPECT_GT(r.grad_norm, 0);
    EXPECT_DOUBLE_EQ(r.lr, 0.1);
    if (step == 1) {
      // Adam's first step moves every param with a gradient by lr against
      // its sign (m / sqrt(v) is +-1 after bias correction); b[2] has none.
      for (size_t i = 0; i < a_.size(); ++i) EXPECT_NEAR(a_[i], a0[i] - 0.1f, 1e-5) << i;
      EXPECT_NEAR(b_[0], -1.9f, 1e-5);
      EXPECT_NEAR(b_[1], -0.9f, 1e-5);
      EXPECT_EQ(b_[2], 0.0f);
    }
    if (step == 5) {
      ASSERT_EQ(strata_save_state(opt_, dir.c_str(), R"({"by": "c_api_test"})"), STRATA_STATUS_OK)
          << last_error();
      saved_a = a_;
    }
  }
  EXPECT_LT(sum_sq(a_) + sum_sq(b_), start / 2);
  std::vector<float> master(a_.size());
  ASSERT_EQ(strata_read_state(opt_, pa_, STRATA_STATE_MASTER, master.data(), master.size()),
            STRATA_STATUS_OK)
      << last_error();
  EXPECT_EQ(master, a_);
  int64_t steps = 0, optimizer_steps = 0;
  ASSERT_EQ(strata_steps(opt_, &steps, &optimizer_steps), STRATA_STATUS_OK);
  EXPECT_EQ(steps, 10);
  EXPECT_EQ(optimizer_steps, 10);

  ASSERT_EQ(strata_load_state(opt_, dir.c_str(), false), STRATA_STATUS_OK) << last_error();
  ASSERT_EQ(strata_read_state(opt_, pa_, STRATA_STATE_MASTER, master.data(), master.size()),
            STRATA_STATUS_OK);
  EXPECT_EQ(master, saved_a);
  ASSERT_EQ(strata_steps(opt_, &steps, nullptr), STRATA_STATUS_OK);
  EXPECT_EQ(steps, 5);

  // write_state / read_state round trip.
  std::vector<float> m(a_.size(), 0.5f), back(a_.size());
  ASSERT_EQ(strata_write_state(opt_, pa_, STRATA_STATE_EXP_AVG, m.data(), m.size()),
            STRATA_STATUS_OK)
      << last_error();
  ASSERT_EQ(strata_read_state(opt_, pa_, STRATA_STATE_EXP_AVG, back.data(), back.size()),
            STRATA_STATUS_OK);
  EXPECT_EQ(back, m);
  std::filesystem::remove_all(dir);
}

// An overflow in fp32 with the config's scale (none) is an error that
// changes nothing; with the program's own scale it skips the step; an
// aborted step is not counted at all.
TEST_F(CApiOptimizer, OverflowSkipsOrFailsAndAbortForgetsTheStep) {
  std::vector<float> a0(a_.size(), 1.0f), b0(b_.size(), 2.0f);
  ASSERT_EQ(strata_set_value(opt_, pa_, a0.data(), a0.size()), STRATA_STATUS_OK) << last_error();
  ASSERT_EQ(strata_set_value(opt_, pb_, b0.data(), b0.size()), STRATA_STATUS_OK) << last_error();
  ga_.assign(ga_.size(), 1.0f);
  gb_.assign(gb_.size(), 1.0f);
  int64_t steps = -1, optimizer_steps = -1;

  ASSERT_EQ(strata_begin_step(opt_, NAN, nullptr), STRATA_STATUS_OK) << last_error();
  ASSERT_EQ(strata_grad_ready(opt_, 0), STRATA_STATUS_OK) << last_error();
  gb_[1] = INFINITY;
  ASSERT_EQ(strata_grad_ready(opt_, 1), STRATA_STATUS_OK) << last_error();
  strata_step_result r;
  EXPECT_EQ(strata_finish_step(opt_, &r), STRATA_STATUS_FAILED_PRECONDITION);
  EXPECT_THAT(last_error(), HasSubstr("inf or NaN"));
  ASSERT_EQ(strata_steps(opt_, &steps, &optimizer_steps), STRATA_STATUS_OK);
  EXPECT_EQ(steps, 0);
  EXPECT_EQ(a_, a0);  // the speculative update of bucket 0 was undone
  gb_[1] = 1.0f;

  ASSERT_EQ(strata_begin_step(opt_, 1.0, nullptr), STRATA_STATUS_OK) << last_error();
  ASSERT_EQ(strata_grad_ready(opt_, 0), STRATA_STATUS_OK) << last_error();
  ASSERT_EQ(strata_report_overflow(opt_), STRATA_STATUS_OK) << last_error();
  ASSERT_EQ(strata_grad_ready(opt_, 1), STRATA_STATUS_OK) << last_error();
  ASSERT_EQ(strata_finish_step(opt_, &r), STRATA_STATUS_OK) << last_error();
  EXPECT_TRUE(r.overflow);
  EXPECT_TRUE(r.skipped);
  EXPECT_EQ(r.step, 1);
  EXPECT_EQ(a_, a0);
  EXPECT_EQ(b_, b0);

  ASSERT_EQ(strata_begin_step(opt_, NAN, nullptr), STRATA_STATUS_OK) << last_error();
  ASSERT_EQ(strata_grad_ready(opt_, 0), STRATA_STATUS_OK) << last_error();
  ASSERT_EQ(strata_abort_step(opt_), STRATA_STATUS_OK) << last_error();
  EXPECT_EQ(strata_grad_ready(opt_, 1), STRATA_STATUS_FAILED_PRECONDITION);
  ASSERT_EQ(strata_steps(opt_, &steps, &optimizer_steps), STRATA_STATUS_OK);
  EXPECT_EQ(steps, 1);
  EXPECT_EQ(optimizer_steps, 0);
  std::vector<float> master(a_.size());
  ASSERT_EQ(strata_read_state(opt_, pa_, STRATA_STATE_MASTER, master.data(), master.size()),
            STRATA_STATUS_OK)
      << last_error();
  EXPECT_EQ(master, a0);
}

// gradient_accumulation_steps 2: each bucket is reported twice a step, from
// two threads at once (backward hooks); strata_wait_grads frees the grad
// memory for the second micro-batch, and the accumulated gradient is the sum.
TEST(CApiTest, AccumulatesMicroBatchesReportedFromSeveralThreads) {
  constexpr const char* kGas2 = R"({
    "train_micro_batch_size_per_gpu": 4,
    "gradient_accumulation_steps": 2,
    "optimizer": {"type": "AdamW", "params": {"lr": 0.1}},
    "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}
  })";
  strata_optimizer* opt = nullptr;
  ASSERT_EQ(strata_optimizer_create(kGas2, nullptr, &opt), STRATA_STATUS_OK) << last_error();
  strata_group_hparams hp;
  int group = -1;
  ASSERT_EQ(strata_group_defaults(opt, &hp), STRATA_STATUS_OK);
  ASSERT_EQ(strata_add_group(opt, &hp, &group), STRATA_STATUS_OK);
  constexpr int kBuckets = 4;
  constexpr size_t kNumel = 1000;
  std::vector<std::vector<float>> params(kBuckets, std::vector<float>(kNumel));
  std::vector<std::vector<float>> grads(kBuckets, std::vector<float>(kNumel));
  for (int b = 0; b < kBuckets; ++b) {
    const std::string name = "w" + std::to_string(b);
    strata_param_desc d = {name.c_str(),     kNumel,         b, group, STRATA_BINDING_HOST,
                           params[b].data(), grads[b].data()};
    int handle = -1;
    ASSERT_EQ(strata_add_param(opt, &d, &handle), STRATA_STATUS_OK) << last_error();
    ASSERT_EQ(handle, b);
  }
  ASSERT_EQ(strata_finalize(opt), STRATA_STATUS_OK) << last_error();

  ASSERT_EQ(strata_begin_step(opt, NAN, nullptr), STRATA_STATUS_OK) << last_error();
  for (int micro = 1; micro <= 2; ++micro) {
    if (micro == 2) {
      ASSERT_EQ(strata_wait_grads(opt), STRATA_STATUS_OK) << last_error();
    }
    for (int b = 0; b < kBuckets; ++b) {
      for (size_t i = 0; i < kNumel; ++i) grads[b][i] = static_cast<float>(micro * (b + 1));
    }
    std::vector<strata_status> got(kBuckets, STRATA_STATUS_UNKNOWN);
    std::vector<std::thread> hooks;
    for (int b = kBuckets - 1; b >= 0; --b) {
      hooks.emplace_back([&, b] { got[b] = strata_grad_ready(opt, b); });
    }
    for (std::thread& t : hooks) t.join();
    for (int b = 0; b < kBuckets; ++b) EXPECT_EQ(got[b], STRATA_STATUS_OK) << b;
  }
  strata_step_result r;
  ASSERT_EQ(strata_finish_step(opt, &r), STRATA_STATUS_OK) << last_error();
  // Bucket b's gradient is (1 + 2) * (b + 1) per element, micro-batches summed.
  double sum_sq = 0;
  for (int b = 0; b < kBuckets; ++b) sum_sq += kNumel * 9.0 * (b + 1) * (b + 1);
  EXPECT_NEAR(r.grad_norm, std::sqrt(sum_sq), 1e-6 * std::sqrt(sum_sq));
  std::vector<float> accum(kNumel);
  ASSERT_EQ(strata_read_state(opt, 3, STRATA_STATE_GRAD_ACCUM, accum.data(), kNumel),
            STRATA_STATUS_OK)
      << last_error();
  EXPECT_EQ(accum[0], 12.0f);
  EXPECT_EQ(accum[kNumel - 1], 12.0f);
  EXPECT_NEAR(params[0][0], -0.1f, 1e-5);  // Adam's first step: lr against the sign
  strata_optimizer_destroy(opt);
}

// Five steps of the quadratic above with the optimizer states where
// `offload` says; returns the params. With a swap_dir, checks that the
// optimizer keeps its swap file there.
std::vector<float> train_quadratic(const std::string& offload, const std::string& swap_dir = "") {
  const std::string config =
      R"({"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1,
          "optimizer": {"type": "AdamW", "params": {"lr": 0.1, "weight_decay": 0.01}},
          "zero_optimization": {"stage": 2, "offload_optimizer": )" +
      offload + "}}";
  strata_options options;
  EXPECT_EQ(strata_options_init(&options), STRATA_STATUS_OK);
  options.allow_buffered_io = true;  // TempDir may be tmpfs
  strata_optimizer* opt = nullptr;
  EXPECT_EQ(strata_optimizer_create(config.c_str(), &options, &opt), STRATA_STATUS_OK)
      << last_error();
  if (opt == nullptr) return {};
  std::vector<float> w(5000), g(5000), init(5000);
  for (size_t i = 0; i < init.size(); ++i) init[i] = std::sin(static_cast<float>(i));
  strata_group_hparams hp;
  int group = -1, p = -1;
  EXPECT_EQ(strata_group_defaults(opt, &hp), STRATA_STATUS_OK);
  EXPECT_EQ(strata_add_group(opt, &hp, &group), STRATA_STATUS_OK);
  strata_param_desc d = {"w", w.size(), 0, group, STRATA_BINDING_HOST, w.data(), g.data()};
  EXPECT_EQ(strata_add_param(opt, &d, &p), STRATA_STATUS_OK) << last_error();
  EXPECT_EQ(strata_finalize(opt), STRATA_STATUS_OK) << last_error();
  if (!swap_dir.empty()) {
    int swap_files = 0;
    for (const auto& e : std::filesystem::directory_iterator(swap_dir)) {
      swap_files += e.path().extension() == ".swp";
    }
    EXPECT_EQ(swap_files, 1) << swap_dir;
  }
  EXPECT_EQ(strata_set_value(opt, p, init.data(), init.size()), STRATA_STATUS_OK) << last_error();
  for (int step = 0; step < 5; ++step) {
    EXPECT_EQ(strata_begin_step(opt, NAN, nullptr), STRATA_STATUS_OK) << last_error();
    for (size_t i = 0; i < w.size(); ++i) g[i] = 2 * w[i];
    EXPECT_EQ(strata_grad_ready(opt, 0), STRATA_STATUS_OK) << last_error();
    EXPECT_EQ(strata_finish_step(opt, nullptr), STRATA_STATUS_OK) << last_error();
  }
  strata_optimizer_destroy(opt);
  return w;
}

// States on NVMe (a swap folder) give the same params, bit for bit, as
// states in host memory: the placement is the config's business only.
TEST(CApiTest, NvmeOffloadMatchesHostOffload) {
  const std::string dir = ::testing::TempDir() + "/c_api_test_nvme." + std::to_string(getpid());
  std::filesystem::create_directories(dir);
  const std::vector<float> host = train_quadratic(R"({"device": "cpu"})");
  const std::vector<float> nvme =
      train_quadratic(R"({"device": "nvme", "nvme_path": ")" + dir + R"("})", dir);
  ASSERT_EQ(host.size(), 5000u);
  EXPECT_EQ(host, nvme);
  EXPECT_NE(host[1], std::sin(1.0f));           // it trained
  EXPECT_TRUE(std::filesystem::is_empty(dir));  // destroy removed the swap file
  std::filesystem::remove_all(dir);
}

// Without a GPU (or a CUDA build) a CUDA optimizer is an error to handle,
// not an abort.
TEST(CApiTest, CudaDeviceWithoutAGpuIsAnError) {
  strata_options options;
  ASSERT_EQ(strata_options_init(&options), STRATA_STATUS_OK);
  options.device = STRATA_DEVICE_CUDA;
  strata_optimizer* opt = nullptr;
  const strata_status s = strata_optimizer_create(kConfig, &options, &opt);
  if (s == STRATA_STATUS_OK) {
    strata_optimizer_destroy(opt);
    GTEST_SKIP() << "a CUDA device is present";
  }
  EXPECT_EQ(s, STRATA_STATUS_FAILED_PRECONDITION) << last_error();
  EXPECT_EQ(opt, nullptr);
  EXPECT_THAT(last_error(), HasSubstr("strata_optimizer_create"));
  options.cuda_ordinal = -1;
  EXPECT_EQ(strata_optimizer_create(kConfig, &options, &opt), STRATA_STATUS_INVALID_ARGUMENT);
  EXPECT_THAT(last_error(), HasSubstr("cuda_ordinal"));
}

// strata_device_alloc: device memory where the optimizer has a device
// (STRATA_DEVICE_SIM here), an error to handle elsewhere; strata_device_free
// takes only its own pointers; destroy frees what is left.
TEST(CApiTest, DeviceMemoryOnlyWhereThereIsADevice) {
  strata_optimizer* host = nullptr;
  ASSERT_EQ(strata_optimizer_create(kConfig, nullptr, &host), STRATA_STATUS_OK);
  void* p = reinterpret_cast<void*>(1);
  EXPECT_EQ(strata_device_alloc(host, 64, &p), STRATA_STATUS_FAILED_PRECONDITION);
  EXPECT_EQ(p, nullptr);
  EXPECT_THAT(last_error(), HasSubstr("STRATA_DEVICE_SIM"));
  strata_optimizer_destroy(host);

  strata_options options;
  ASSERT_EQ(strata_options_init(&options), STRATA_STATUS_OK);
  options.device = STRATA_DEVICE_SIM;
  options.host_device_bytes = 1 << 20;
  strata_optimizer* opt = nullptr;
  ASSERT_EQ(strata_optimizer_create(kConfig, &options, &opt), STRATA_STATUS_OK) << last_error();
  EXPECT_EQ(strata_device_alloc(opt, 0, &p), STRATA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(strata_device_alloc(opt, 4 << 20, &p), STRATA_STATUS_RESOURCE_EXHAUSTED);
  void* a = nullptr;
  void* b = nullptr;
  ASSERT_EQ(strata_device_alloc(opt, 4096, &a), STRATA_STATUS_OK) << last_error();
  ASSERT_EQ(strata_device_alloc(opt, 4096, &b), STRATA_STATUS_OK) << last_error();
  std::memset(a, 7, 4096);  // simulated device memory is the program's to touch
  int local = 0;
  EXPECT_EQ(strata_device_free(opt, &local), STRATA_STATUS_INVALID_ARGUMENT);
  EXPECT_THAT(last_error(), HasSubstr("strata_device_alloc"));
  EXPECT_EQ(strata_device_free(opt, a), STRATA_STATUS_OK);
  EXPECT_EQ(strata_device_free(opt, a), STRATA_STATUS_INVALID_ARGUMENT);  // twice
  EXPECT_EQ(strata_device_free(opt, nullptr), STRATA_STATUS_OK);
  strata_optimizer_destroy(opt);  // frees b
}

// Device bindings on the simulated device give the params host bindings
// give, bit for bit (strata_wait_params before reading them).
TEST(CApiTest, SimDeviceBindingsTrainAsHostBindings) {
  constexpr size_t kN = 2000;
  std::vector<float> result[2];
  for (const bool device : {false, true}) {
    strata_options options;
    ASSERT_EQ(strata_options_init(&options), STRATA_STATUS_OK);
    if (device) options.device = STRATA_DEVICE_SIM;
    strata_optimizer* opt = nullptr;
    ASSERT_EQ(strata_optimizer_create(kConfig, &options, &opt), STRATA_STATUS_OK) << last_error();
    std::vector<float> w(kN), g(kN), init(kN);
    for (size_t i = 0; i < kN; ++i) init[i] = std::cos(0.01f * float(i));
    void* pw = w.data();
    void* pg = g.data();
    if (device) {
      ASSERT_EQ(strata_device_alloc(opt, kN * 4, &pw), STRATA_STATUS_OK) << last_error();
      ASSERT_EQ(strata_device_alloc(opt, kN * 4, &pg), STRATA_STATUS_OK) << last_error();
    }
    strata_group_hparams hp;
    int group = -1, p = -1;
    ASSERT_EQ(strata_group_defaults(opt, &hp), STRATA_STATUS_OK);
    ASSERT_EQ(strata_add_group(opt, &hp, &group), STRATA_STATUS_OK);
    strata_param_desc d = {"w", kN, 0, group, device ? STRATA_BINDING_DEVICE : STRATA_BINDING_HOST,
                           pw,  pg};
    ASSERT_EQ(strata_add_param(opt, &d, &p), STRATA_STATUS_OK) << last_error();
    ASSERT_EQ(strata_finalize(opt), STRATA_STATUS_OK) << last_error();
    ASSERT_EQ(strata_set_value(opt, p, init.data(), kN), STRATA_STATUS_OK) << last_error();
    for (int step = 0; step < 4; ++step) {
      ASSERT_EQ(strata_begin_step(opt, NAN, nullptr), STRATA_STATUS_OK) << last_error();
      ASSERT_EQ(strata_wait_params(opt, 0), STRATA_STATUS_OK) << last_error();
      const float* wv = static_cast<const float*>(pw);
      float* gv = static_cast<float*>(pg);
      for (size_t i = 0; i < kN; ++i) gv[i] = 2 * wv[i] - 0.5f;
      ASSERT_EQ(strata_grad_ready(opt, 0), STRATA_STATUS_OK) << last_error();
      ASSERT_EQ(strata_finish_step(opt, nullptr), STRATA_STATUS_OK) << last_error();
    }
    ASSERT_EQ(strata_wait_params(opt, 0), STRATA_STATUS_OK) << last_error();
    const float* wv = static_cast<const float*>(pw);
    result[device].assign(wv, wv + kN);
    strata_optimizer_destroy(opt);
  }
  EXPECT_EQ(result[1], result[0]);
  EXPECT_NE(result[0][0], std::cos(0.0f));  // it trained
}

TEST_F(CApiOptimizer, SetGroupChangesTheRateWithoutASchedule) {
  strata_group_hparams hp;
  ASSERT_EQ(strata_get_group(opt_, group_, &hp), STRATA_STATUS_OK);
  EXPECT_DOUBLE_EQ(hp.lr, 0.1);
  hp.lr = 0.05;
  ASSERT_EQ(strata_set_group(opt_, group_, &hp), STRATA_STATUS_OK) << last_error();
  strata_group_hparams back;
  ASSERT_EQ(strata_get_group(opt_, group_, &back), STRATA_STATUS_OK);
  EXPECT_DOUBLE_EQ(back.lr, 0.05);
}

}  // namespace
