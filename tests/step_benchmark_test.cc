// run_step_benchmark on a small GPT-2 shape: both modes run through the
// engine, the modelled compute is the stated formula, every layer is stepped
// speculatively in overlap mode and none in sync, and bad options are refused.
#include "engine/step_benchmark.h"

#include "gtest/gtest.h"

namespace strata::engine {
namespace {

TEST(StepBenchmarkTest, RunsSyncAndOverlapOnATinyShape) {
  StepBenchmarkOptions o;
  o.n_layer = 2;
  o.n_embd = 64;
  o.vocab_size = 256;
  o.positions = 64;
  o.width_divisor = 2;
  o.micro_batch = 2;
  o.seq_len = 64;
  o.tflops = 0.05;  // slow enough for compute to be measurable
  o.steps = 3;
  auto r = run_step_benchmark(o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->width, 32);
  // wte + wpe + 2 blocks of 12 C^2 + 13 C + ln_f.
  EXPECT_EQ(r->params, 256 * 32 + 64 * 32 + 2 * (12 * 32 * 32 + 13 * 32) + 2 * 32);
  ASSERT_EQ(r->modes.size(), 3u);
  const double tokens = 2 * 64;
  const double block = 2 * tokens * (12 * 32 * 32 + 13 * 32) + 2.0 * 2 * 64 * 64 * 32;
  const double head = 2 * tokens * 256 * 32;
  const double compute = 3 * (2 * block + head) / (0.05 * 1e12);
  for (const StepBenchmarkMode& m : r->modes) {
    SCOPED_TRACE(m.mode);
    ASSERT_EQ(m.steps.size(), 3u);
    for (const StepBenchmarkStep& s : m.steps) {
      EXPECT_NEAR(s.compute_seconds, compute, 1e-12);
      EXPECT_GE(s.step_seconds, compute);  // the device really spent it
      EXPECT_GT(s.host_seconds, 0);
      EXPECT_GT(s.d2h_seconds, 0);
      EXPECT_FALSE(s.slowest.empty());
      EXPECT_GT(s.ratio, 0);
      if (m.mode == "overlap") {
        // fp16 keeps rollback copies, so speculation follows the timing:
        // all layers or none (the step after a host that fell behind).
        EXPECT_TRUE(s.speculative_layers == 0 || s.speculative_layers == 4) << s.speculative_layers;
      } else {
        EXPECT_EQ(s.speculative_layers, 0);  // sync; delayed needs none
      }
      EXPECT_EQ(s.rolled_back_layers, 0);
    }
    // The store's device memory comes from its pool: once the engine is
    // set up, no step allocates on the device or synchronises all of it.
    for (size_t i = 0; i < m.steps.size(); ++i) {
      EXPECT_EQ(m.steps[i].device_allocations, 0) << "step " << i;
      EXPECT_EQ(m.steps[i].device_syncs, 0) << "step " << i;
    }
  }
  EXPECT_EQ(r->modes[0].mode, "sync");
  EXPECT_EQ(r->modes[1].mode, "overlap");
  EXPECT_EQ(r->modes[2].mode, "delayed");
}

TEST(StepBenchmarkTest, RefusesInconsistentOptions) {
  StepBenchmarkOptions o;
  o.width_divisor = 3;  // 1600 is not a multiple of 3
  EXPECT_EQ(run_step_benchmark(o).status().code(), absl::StatusCode::kInvalidArgument);
  o = {};
  o.seq_len = 2048;  // more than the 1024 positions
  EXPECT_EQ(run_step_benchmark(o).status().code(), absl::StatusCode::kInvalidArgument);
  o = {};
  o.offload = "gpu";
  EXPECT_EQ(run_step_benchmark(o).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace strata::engine
