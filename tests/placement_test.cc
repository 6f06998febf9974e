// plan_placement: homes and bytes per tier for each offload choice, with
// 4 KiB rounding on the host and NVMe and 256 B on the device.
#include "engine/placement.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/test_ds_config.h"

namespace strata::engine {
namespace {

using offload::Tier;

config::DsConfig parse(const std::string& members) {
  const std::string json =
      "{\"train_micro_batch_size_per_gpu\": 1, \"optimizer\": {\"type\": \"AdamW\", \"params\": "
      "{\"lr\": 1e-3}}" +
      (members.empty() ? "" : ", " + members) + "}";
  return strata::testing::parse_test_config(json);
}

// Two layers: 1000 + 10 params, and 5000 params.
const std::vector<std::vector<ParamSpec>> kLayers = {{{"w", 1000}, {"b", 10}}, {{"w", 5000}}};

TEST(PlacementTest, NoOffloadKeepsEverythingOnTheDevice) {
  auto p = plan_placement(parse("\"strata\": {\"overlap\": \"sync\"}"), kLayers);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->dtype, DType::kFloat32);
  EXPECT_FALSE(p->offload);
  EXPECT_EQ(p->compute_home, Tier::kDevice);
  EXPECT_EQ(p->device_homed, 6010u * (2 * 4 + 4 * 4));
  EXPECT_EQ(p->largest_layer, 1);
  EXPECT_EQ(p->largest_layer_device, 5000u * 2 * 4);
  EXPECT_EQ(p->host_homed, 0u);
  EXPECT_EQ(p->rollback, 0u);  // sync mode steps nothing speculatively
}

TEST(PlacementTest, CpuOffloadHomesParamsGradsAndStatesOnTheHost) {
  auto p = plan_placement(parse("\"fp16\": {\"enabled\": true}, \"zero_optimization\": "
                                "{\"stage\": 2, \"offload_optimizer\": {\"device\": \"cpu\"}}"),
                          kLayers);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->compute_home, Tier::kHost);
  EXPECT_EQ(p->state_home, Tier::kHost);
  // Per tensor rounded to 4 KiB: w (2000 B fp16, 4000 B fp32) -> 1 page each,
  // b -> 1 page each, layer 1 w (10000 B fp16 -> 3 pages, 20000 B fp32 -> 5).
  const uint64_t page = 4096;
  const uint64_t layer0 = 2 * page + 4 * page + 2 * page + 4 * page;  // param, grad + 4 fp32, x2
  const uint64_t layer1 = 2 * 3 * page + 4 * 5 * page;
  EXPECT_EQ(p->host_homed, layer0 + layer1);
  EXPECT_EQ(p->nvme_total, 0u);
  EXPECT_EQ(p->device_scratch, page);  // fp16 overflow flags
  EXPECT_EQ(p->device_all_layers, 2 * (2048u + 256u + 10240u));
  // overlap (the default) with fp16 keeps rollback copies of every state.
  EXPECT_EQ(p->rollback, 6010u * 12);
  // The delayed update speculates nothing.
  auto delayed =
      plan_placement(parse("\"fp16\": {\"enabled\": true}, \"zero_optimization\": {\"stage\": 2, "
                           "\"offload_optimizer\": {\"device\": \"cpu\"}}, \"strata\": "
                           "{\"delayed_param_update\": true}"),
                     kLayers);
  ASSERT_TRUE(delayed.ok()) << delayed.status();
  EXPECT_EQ(delayed->rollback, 0u);
}

TEST(PlacementTest, NvmeStatesAndStage3ParamsGoToTheSwapFile) {
  auto p = plan_placement(
      parse("\"bf16\": {\"enabled\": true}, \"zero_optimization\": {\"stage\": 3, "
            "\"offload_optimizer\": {\"device\": \"nvme\", \"nvme_path\": \"/tmp\"}, "
            "\"offload_param\": {\"device\": \"nvme\", \"nvme_path\": \"/tmp\"}}, "
            "\"strata\": {\"prefetch_window_bytes\": 0}"),
      kLayers);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->compute_home, Tier::kNvme);
  EXPECT_EQ(p->state_home, Tier::kNvme);
  const uint64_t page = 4096;
  EXPECT_EQ(p->nvme_total, (1 + 3 * 1 + 1 + 3 * 1) * page + (3 + 3 * 5) * page);
  EXPECT_EQ(p->largest_layer_nvme, (3 + 3 * 5) * page);
  EXPECT_EQ(p->host_cache, p->nvme_total);  // two layers' worth is all of it
  // overlap mode keeps rollback copies in every precision: a step can fail.
  EXPECT_EQ(p->rollback, 6010u * 12);
}

// The roles add up to the aggregates the engine sizes its tiers by.
TEST(PlacementTest, RolesPerTierAddUpToTheHomedBytes) {
  auto p = plan_placement(parse("\"bf16\": {\"enabled\": true}, \"zero_optimization\": "
                                "{\"stage\": 3, \"offload_optimizer\": {\"device\": \"nvme\", "
                                "\"nvme_path\": \"/tmp\"}, \"offload_param\": {\"device\": "
                                "\"cpu\"}}, \"strata\": {\"delayed_param_update\": true}"),
                          kLayers);
  ASSERT_TRUE(p.ok()) << p.status();
  const uint64_t page = 4096;
  EXPECT_EQ(p->device_roles.total(), 0u);
  EXPECT_EQ(p->host_roles.total(), p->host_homed);
  EXPECT_EQ(p->nvme_roles.total(), p->nvme_total);
  // Host: param, the delayed update's next param, grad (3 pages fp16 for
  // layer 1's w, 1 each elsewhere) and grad32 (5 pages, 1 each).
  EXPECT_EQ(p->host_roles.param, (1 + 1 + 3) * page);
  EXPECT_EQ(p->host_roles.param_next, (1 + 1 + 3) * page);
  EXPECT_EQ(p->host_roles.grad, (1 + 1 + 3) * page);
  EXPECT_EQ(p->host_roles.grad32, (1 + 1 + 5) * page);
  // NVMe: master and both states for every optimizer.
  EXPECT_EQ(p->nvme_roles.master, (1 + 1 + 5) * page);
  EXPECT_EQ(p->nvme_roles.exp_avg, p->nvme_roles.master);
  EXPECT_EQ(p->nvme_roles.exp_avg_sq, p->nvme_roles.master);
  EXPECT_EQ(p->nvme_roles.param, 0u);
  // Stage 3 with the default stage3_max_live_parameters (1e9): every layer.
  EXPECT_EQ(p->device_working_set, p->device_all_layers);
}

// Across ranks, reduced and gathered on the device: the compute grads and
// stage 1/2 params are homed there (whole: the device holds every layer's
// anyway), the host keeps only the rank's fp32 slices (and at stage 3 its
// param slice). Not the grads where offload_param caps the device's window;
// reduced on the host (reduce_on_device false), or with whole compute params
// (framework-held bindings), they stay homed on the host, whole.
TEST(PlacementTest, AcrossRanksTheComputeGradsAndParamsStayOnTheDevice) {
  const uint64_t page = 4096;
  auto at = [&](int stage, int world, const std::string& extra, PlacementOptions o) {
    config::DsConfig cfg = parse(
        absl::StrCat("\"fp16\": {\"enabled\": true}, \"zero_optimization\": {\"stage\": ", stage,
                     ", \"offload_optimizer\": {\"device\": \"cpu\"}", extra, "}"));
    cfg.world_size = world;
    auto p = plan_placement(cfg, kLayers, o);
    EXPECT_TRUE(p.ok()) << p.status();
    return *p;
  };
  // One rank alone: everything on the host (as above).
  const Placement one = at(2, 1, "", {});
  EXPECT_EQ(one.grad_home, Tier::kHost);
  EXPECT_EQ(one.compute_home, Tier::kHost);
  EXPECT_EQ(one.device_homed, 0u);
  for (int stage : {1, 2, 3}) {
    SCOPED_TRACE(stage);
    const Placement p = at(stage, 2, "", {});
    EXPECT_EQ(p.grad_home, Tier::kDevice);
    EXPECT_EQ(p.host_roles.grad, 0u);
    EXPECT_EQ(p.device_roles.grad, 6010u * 2);  // exact on the device
    // Two ranks: w 500 + 5 + 2500 elements of fp32 each (1 + 1 + 3 pages).
    EXPECT_EQ(p.host_roles.grad32, (1 + 1 + 3) * page);
    if (stage < 3) {
      EXPECT_EQ(p.compute_home, Tier::kDevice);
      EXPECT_EQ(p.host_roles.param, 0u);
      EXPECT_EQ(p.device_roles.param, 6010u * 2);
    } else {
      EXPECT_EQ(p.compute_home, Tier::kHost);
      EXPECT_EQ(p.host_roles.param, (1 + 1 + 2) * page);  // the rank's fp16 slices
      EXPECT_EQ(p.device_roles.param, 0u);
    }
    // Inside what the device holds anyway: the working set and pool unchanged.
    EXPECT_EQ(p.device_working_set, one.device_all_layers);
    EXPECT_EQ(p.device_pool, one.device_pool);
    EXPECT_LE(p.device_homed, p.device_pool);
    // Reduced on the host: both on the host, whole.
    const Placement host = at(stage, 2, "", {.reduce_on_device = false});
    EXPECT_EQ(host.grad_home, Tier::kHost);
    EXPECT_EQ(host.host_roles.grad, one.host_roles.grad);
    EXPECT_EQ(host.device_homed, 0u);
    if (stage < 3) EXPECT_EQ(host.host_roles.param, one.host_roles.param);
    const Placement whole = at(stage, 2, "", {.whole_compute_params = true});
    EXPECT_EQ(whole.device_homed, 0u);
    EXPECT_EQ(whole.host_roles.param, one.host_roles.param);
  }
  // Stage 3 with offload_param: the device holds a window, the grads stay on the host.
  const Placement window = at(3, 2, ", \"offload_param\": {\"device\": \"cpu\"}", {});
  EXPECT_EQ(window.grad_home, Tier::kHost);
  EXPECT_EQ(window.host_roles.grad, one.host_roles.grad);
  EXPECT_EQ(window.device_homed, 0u);
}

TEST(PlacementTest, ParamOffloadWithoutOptimizerOffloadIsRefused) {
  auto p = plan_placement(
      parse("\"zero_optimization\": {\"stage\": 3, \"offload_param\": {\"device\": \"cpu\"}}"),
      kLayers);
  ASSERT_FALSE(p.ok());
  EXPECT_NE(std::string(p.status().message()).find("offload_param without offload_optimizer"),
            std::string::npos)
      << p.status();
}

TEST(PlacementTest, ParamOffloadOutsideStage3IsRefused) {
  // The config parser refuses this too; the placement does not rely on it.
  config::DsConfig cfg = parse(
      "\"zero_optimization\": {\"stage\": 3, \"offload_optimizer\": {\"device\": \"cpu\"}, "
      "\"offload_param\": {\"device\": \"cpu\"}}");
  cfg.zero.stage = 2;
  auto p = plan_placement(cfg, kLayers);
  ASSERT_FALSE(p.ok());
  EXPECT_NE(std::string(p.status().message()).find("offload_param needs stage 3"),
            std::string::npos);
  EXPECT_FALSE(plan_placement(parse(""), {}).ok());
}

}  // namespace
}  // namespace strata::engine
