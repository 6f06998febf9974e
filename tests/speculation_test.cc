// Speculation: the policy decides per step, copies fit the capacity layer by
// layer, restore gives back exactly the saved params, and the plan after
// the decision keeps, restores or redoes each layer.
#include "engine/speculation.h"

#include <vector>

#include "gtest/gtest.h"

namespace strata::engine {
namespace {

// Two layers: {2, 1} and {3} elements, so 9 and 9 floats of copies.
std::vector<std::vector<uint64_t>> numels() { return {{2, 1}, {3}}; }

TEST(Speculation, PolicyDecidesEachStep) {
  Speculation never(SpeculationPolicy::kNever, numels(), 100);
  never.begin_step(0, 0);
  EXPECT_FALSE(never.active());
  EXPECT_FALSE(never.reserve(0));

  Speculation always(SpeculationPolicy::kAlways, numels(), 100);
  always.begin_step(/*prev_host_seconds=*/5, /*prev_backward_seconds=*/1);
  EXPECT_TRUE(always.active());

  Speculation automatic(SpeculationPolicy::kAuto, numels(), 100);
  automatic.begin_step(1, 2);  // the host kept up with backward
  EXPECT_TRUE(automatic.active());
  automatic.begin_step(3, 2);  // it did not: copies would only slow it down
  EXPECT_FALSE(automatic.active());

  Speculation no_room(SpeculationPolicy::kAlways, numels(), 0);
  no_room.begin_step(0, 0);
  EXPECT_FALSE(no_room.active());
}

TEST(Speculation, CopiesFitTheCapacityLayerByLayer) {
  Speculation s(SpeculationPolicy::kAlways, numels(), 12);
  s.begin_step(0, 0);
  EXPECT_TRUE(s.reserve(1));   // 9 floats
  EXPECT_FALSE(s.reserve(0));  // 9 more do not fit in 12
  s.begin_step(0, 0);          // a new step forgets the old copies
  EXPECT_TRUE(s.reserve(0));
}

TEST(Speculation, RestoreGivesBackExactlyWhatWasSaved) {
  Speculation s(SpeculationPolicy::kAlways, numels(), 100);
  s.begin_step(0, 0);
  ASSERT_TRUE(s.reserve(0));
  float master0[2] = {1, 2}, m0[2] = {3, 4}, v0[2] = {5, 6};
  s.save(0, 0, master0, m0, v0);
  EXPECT_TRUE(s.has_copies(0));
  EXPECT_FALSE(s.stepped(0));  // saved, not (yet) stepped: a failure half way
  EXPECT_EQ(s.saved_params(0), 1);
  float master[2] = {9, 9}, m[2] = {9, 9}, v[2] = {9, 9};
  s.restore(0, 0, master, m, v);
  EXPECT_EQ(std::vector<float>(master, master + 2), std::vector<float>({1, 2}));
  EXPECT_EQ(std::vector<float>(m, m + 2), std::vector<float>({3, 4}));
  EXPECT_EQ(std::vector<float>(v, v + 2), std::vector<float>({5, 6}));

  float master1 = 7, m1 = 8, v1 = 10;
  s.save(0, 1, &master1, &m1, &v1);
  s.mark_stepped(0);
  EXPECT_EQ(s.stepped_layers(), 1);
  float out[3] = {0, 0, 0};
  s.restore(0, 1, &out[0], &out[1], &out[2]);
  EXPECT_EQ(std::vector<float>(out, out + 3), std::vector<float>({7, 8, 10}));
  EXPECT_FALSE(s.has_copies(1));
}

TEST(Speculation, PlanAfterTheDecision) {
  Speculation s(SpeculationPolicy::kAlways, numels(), 100);
  s.begin_step(0, 0);
  ASSERT_TRUE(s.reserve(1));
  s.mark_stepped(1);
  using Plan = Speculation::Plan;
  // Layer 0 waited for the decision; layer 1 was stepped with coefficient 1.
  EXPECT_EQ(s.plan(0, /*apply=*/true, /*clipped=*/false), Plan::kStep);
  EXPECT_EQ(s.plan(1, true, false), Plan::kKeep);
  EXPECT_EQ(s.plan(1, true, true), Plan::kRestoreAndStep);
  EXPECT_EQ(s.plan(1, false, false), Plan::kRestore);
  EXPECT_EQ(s.plan(0, false, false), Plan::kNothing);
}

}  // namespace
}  // namespace strata::engine
