// engine::plan_memory, deepspeed_estimate, predict_step_time and
// estimate_train_memory: every byte on every tier is what plan_placement
// (the engine's own placement) says, for each optimizer, stage and offload;
// DeepSpeed's estimates against numbers worked out by hand from its
// formulas; the advice for configs that do not fit.
#include "engine/plan.h"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "engine/placement.h"
#include "engine/step_time.h"
#include "engine/train_memory.h"
#include "engine/training_engine.h"
#include "gpu/sim_device.h"
#include "gtest/gtest.h"
#include "model/gpt2_plan.h"
#include "tests/mlp_test_model.h"
#include "tests/test_ds_config.h"

namespace strata::engine {
namespace {

// Two layers (1000 + 10 params, 5000 params) of a small transformer shape.
PlanModel small_model() {
  return {.name = "small",
          .layers = {{{"w", 1000}, {"b", 10}}, {{"w", 5000}}},
          .largest_module_params = 5000,
          .n_layer = 2,
          .n_head = 2,
          .n_embd = 8,
          .vocab_size = 16,
          .seq_len = 4};
}

config::DsConfig parse(const std::string& members, const std::string& optimizer = "AdamW") {
  return strata::testing::parse_test_config(
      "{\"train_micro_batch_size_per_gpu\": 2, \"optimizer\": {\"type\": \"" + optimizer +
      "\", \"params\": {\"lr\": 1e-3}}" + (members.empty() ? "" : ", " + members) + "}");
}

void expect_roles(const PlanRoles& plan, const RoleBytes& placed, const std::string& where) {
  SCOPED_TRACE(where);
  EXPECT_EQ(plan.param16, static_cast<int64_t>(placed.param + placed.param_next));
  EXPECT_EQ(plan.grad16, static_cast<int64_t>(placed.grad));
  EXPECT_EQ(plan.grad32, static_cast<int64_t>(placed.grad32));
  EXPECT_EQ(plan.master32, static_cast<int64_t>(placed.master));
  EXPECT_EQ(plan.exp_avg, static_cast<int64_t>(placed.exp_avg));
  EXPECT_EQ(plan.exp_avg_sq, static_cast<int64_t>(placed.exp_avg_sq));
}

TEST(PlanTest, EveryTierHoldsWhatTheEnginesPlacementSays) {
  const PlanModel m = small_model();
  const std::vector<std::string> offloads = {
      R"("offload_optimizer": {"device": "cpu"})",
      R"("offload_optimizer": {"device": "nvme", "nvme_path": "/tmp"})"};
  const std::vector<std::string> stage3_params = {
      "", R"(, "offload_param": {"device": "cpu"})",
      R"(, "offload_param": {"device": "nvme", "nvme_path": "/tmp"})"};
  for (const char* optimizer : {"Adam", "AdamW", "Lion", "Adagrad"}) {
    for (int stage = 1; stage <= 3; ++stage) {
      for (const std::string& offload : offloads) {
        for (const std::string& params : stage3_params) {
          if (stage < 3 && !params.empty()) continue;
          const std::string members =
              R"("fp16": {"enabled": true}, "zero_optimization": {"stage": )" +
              std::to_string(stage) + ", " + offload + params + "}";
          SCOPED_TRACE(std::string(optimizer) + " " + members);
          const config::DsConfig cfg = parse(members, optimizer);
          auto placed = plan_placement(cfg, m.layers);
          ASSERT_TRUE(placed.ok()) << placed.status();
          auto plan = plan_memory(m, cfg, {});
          ASSERT_TRUE(plan.ok()) << plan.status();
          expect_roles(plan->host.need, placed->host_roles, "host");
          expect_roles(plan->nvme.need, placed->nvme_roles, "nvme");
          EXPECT_EQ(plan->host.need.staging, static_cast<int64_t>(placed->host_cache));
          EXPECT_EQ(plan->host.need.total(),
                    static_cast<int64_t>(placed->host_homed + placed->host_cache));
          EXPECT_EQ(plan->nvme.need.total(), static_cast<int64_t>(placed->nvme_total));
          EXPECT_EQ(plan->gpu.need.param16 + plan->gpu.need.grad16,
                    static_cast<int64_t>(placed->device_working_set));
          EXPECT_EQ(plan->gpu.need.grad32 + plan->gpu.need.master32, 0);
          // The engine registers master, exp_avg and exp_avg_sq for every
          // optimizer; the plan counts all three (it left one out for Lion
          // and Adagrad before).
          const PlanRoles& states =
              placed->state_home == offload::Tier::kNvme ? plan->nvme.need : plan->host.need;
          EXPECT_GT(states.master32, 0);
          EXPECT_EQ(states.exp_avg, states.master32);
          EXPECT_EQ(states.exp_avg_sq, states.master32);
        }
      }
    }
  }
}

// The same, against a TrainingEngine built for each config: its host arena
// budget is the plan's host need, and its swap file holds the plan's NVMe
// bytes after a header, through a training step.
TEST(PlanTest, TheEngineAllocatesWhatThePlanSays) {
  const std::filesystem::path dir =
      std::filesystem::path(::testing::TempDir()) / ("plan_test_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  test_models::MlpTestModel mlp;
  PlanModel m = small_model();
  m.layers.clear();
  for (int l = 0; l < mlp.num_layers(); ++l) m.layers.push_back(mlp.layer_params(l));
  for (const char* optimizer : {"Adam", "AdamW", "Lion", "Adagrad"}) {
    for (int stage = 1; stage <= 3; ++stage) {
      for (const char* device : {"cpu", "nvme"}) {
        const std::string members =
            R"("strata": {"overlap": "sync", "prefetch_window_bytes": 4096},
               "zero_optimization": {"stage": )" +
            std::to_string(stage) + R"(, "offload_optimizer": {"device": ")" + device +
            R"(", "nvme_path": ")" + dir.string() + R"("}})";
        SCOPED_TRACE(std::string(optimizer) + " " + members);
        const config::DsConfig cfg = parse(members, optimizer);
        auto plan = plan_memory(m, cfg, {});
        ASSERT_TRUE(plan.ok()) << plan.status();
        gpu::SimDevice sim;
        EngineOptions options;
        options.allow_buffered_io = true;
        auto engine = TrainingEngine::create(cfg, &mlp, &sim, std::move(options));
        ASSERT_TRUE(engine.ok()) << engine.status();
        ASSERT_TRUE((*engine)->train_step().ok());
        const offload::StoreStats st = (*engine)->store_stats();
        const auto& host = st.tiers[static_cast<int>(offload::Tier::kHost)];
        EXPECT_EQ(static_cast<int64_t>(host.budget_bytes), plan->host.need.total());
        EXPECT_LE(static_cast<int64_t>(host.peak_bytes), plan->host.need.total());
        // The swap file: a header of whole pages, then the plan's NVMe bytes.
        uint64_t swap_bytes = 0;
        for (const auto& f : std::filesystem::directory_iterator(dir)) {
          swap_bytes += std::filesystem::file_size(f.path());
        }
        if (plan->nvme.need.total() == 0) {
          EXPECT_EQ(swap_bytes, 0u);
        } else {
          const uint64_t header = swap_bytes - static_cast<uint64_t>(plan->nvme.need.total());
          EXPECT_GE(swap_bytes, static_cast<uint64_t>(plan->nvme.need.total()));
          EXPECT_EQ(header % 4096, 0u);
          EXPECT_LE(header, 16u * 4096);
        }
      }
    }
  }
  std::filesystem::remove_all(dir);
}

TEST(PlanTest, WithoutOffloadTheGpuHoldsEveryHomedTensor) {
  const PlanModel m = small_model();
  const config::DsConfig cfg = parse(R"("bf16": {"enabled": true},
      "strata": {"delayed_param_update": true, "overlap": "sync"})");
  auto placed = plan_placement(cfg, m.layers);
  ASSERT_TRUE(placed.ok()) << placed.status();
  auto plan = plan_memory(m, cfg, {});
  ASSERT_TRUE(plan.ok()) << plan.status();
  expect_roles(plan->gpu.need, placed->device_roles, "gpu");
  EXPECT_EQ(plan->gpu.need.param16, 6010 * 2 * 2);  // param and the delayed update's next param
  EXPECT_EQ(plan->gpu.need.exp_avg_sq, 6010 * 4);
  // n_layer*b*s*(34*n_embd + 5*n_head*s)*2/2 + 4*b*s*vocab
  EXPECT_EQ(plan->gpu.need.activations, 2 * 2 * 4 * (34 * 8 + 5 * 2 * 4) + 4 * 2 * 4 * 16);
  EXPECT_EQ(plan->host.need.total(), 0);
  EXPECT_EQ(plan->nvme.need.total(), 0);
}

// Stage 3 keeps stage3_max_live_parameters params with their grads on the
// device (at least the largest layer), as TrainingEngine caps its budget.
TEST(PlanTest, Stage3DeviceSetIsTheLiveParameterCap) {
  const PlanModel m = small_model();
  auto plan_with = [&](int live) {
    return plan_memory(m,
                       parse(R"("zero_optimization": {"stage": 3, "stage3_max_live_parameters": )" +
                             std::to_string(live) +
                             R"(, "offload_optimizer": {"device": "cpu"},
                               "offload_param": {"device": "cpu"}})"),
                       {});
  };
  auto all = plan_with(1'000'000);
  ASSERT_TRUE(all.ok()) << all.status();
  // fp32, each tensor rounded to 256 bytes on the device.
  EXPECT_EQ(all->gpu.need.param16, 4096 + 256 + 20224);
  EXPECT_EQ(all->gpu.need.grad16, all->gpu.need.param16);
  auto capped = plan_with(5500);
  ASSERT_TRUE(capped.ok()) << capped.status();
  EXPECT_EQ(capped->gpu.need.param16, 5500 * 4);
  auto one_layer = plan_with(10);
  ASSERT_TRUE(one_layer.ok()) << one_layer.status();
  EXPECT_EQ(one_layer->gpu.need.param16, 5000 * 4);  // the largest layer
  // Without offload_param the device keeps every layer, as the engine does
  // (and DeepSpeed with one process).
  auto resident = plan_memory(m, parse(R"("zero_optimization": {"stage": 3,
      "stage3_max_live_parameters": 10, "offload_optimizer": {"device": "cpu"}})"),
                              {});
  ASSERT_TRUE(resident.ok()) << resident.status();
  EXPECT_EQ(resident->gpu.need.param16, all->gpu.need.param16);
}

TEST(PlanTest, PlanRefusesWhatTheEngineRefuses) {
  const PlanModel m = small_model();
  config::DsConfig cfg = parse(R"("zero_optimization": {"stage": 3,
      "offload_param": {"device": "cpu"}})");
  auto plan = plan_memory(m, cfg, {});
  ASSERT_FALSE(plan.ok());
  EXPECT_NE(std::string(plan.status().message()).find("offload_param without offload_optimizer"),
            std::string::npos)
      << plan.status();
  // A micro batch no machine could hold is refused, not wrapped around.
  cfg = parse(R"("zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}})");
  cfg.train_micro_batch_size_per_gpu = int64_t{1} << 60;
  plan = plan_memory(m, cfg, {});
  ASSERT_FALSE(plan.ok());
  EXPECT_NE(std::string(plan.status().message()).find("train_micro_batch_size_per_gpu"),
            std::string::npos)
      << plan.status();
}

TEST(PlanTest, DeepSpeedEstimatesByHand) {
  constexpr int64_t n = 1'000'000'000, largest = 100'000'000;
  struct Case {
    int stage;
    bool opt, param;
    int gpus;
    int64_t gpu, cpu;
  };
  for (const Case& c :
       std::vector<Case>{// ZeRO-2 offload: GPU 2N, CPU N*max(4G, 16)*1.5.
                         {2, true, false, 1, 2'000'000'000, 24'000'000'000},
                         {2, true, false, 8, 2'000'000'000, 48'000'000'000},
                         // ZeRO-2 no offload: GPU 4N + 16N/G, CPU 4N*G*1.5.
                         {2, false, false, 1, 20'000'000'000, 6'000'000'000},
                         {1, false, false, 4, 8'000'000'000, 24'000'000'000},
                         // ZeRO-3 everything offloaded: GPU 4*largest, CPU 18N*1.5.
                         {3, true, true, 1, 400'000'000, 27'000'000'000},
                         // ZeRO-3 optimizer offloaded: GPU 4*largest + 2N/G, CPU 16N*1.5.
                         {3, true, false, 4, 900'000'000, 24'000'000'000},
                         // ZeRO-3 no offload: GPU 4*largest + 18N/G, CPU 4*largest*G*1.5.
                         {3, false, false, 2, 9'400'000'000, 1'200'000'000}}) {
    SCOPED_TRACE(::testing::Message() << "stage " << c.stage << " opt " << c.opt << " param "
                                      << c.param << " G " << c.gpus);
    const DeepSpeedEstimate e = deepspeed_estimate(c.stage, c.opt, c.param, n, largest, c.gpus);
    EXPECT_EQ(e.gpu, c.gpu);
    EXPECT_EQ(e.cpu, c.cpu);
    EXPECT_EQ(e.estimator, c.stage == 3 ? "estimate_zero3_model_states_mem_needs_all_live"
                                        : "estimate_zero2_model_states_mem_needs_all_live");
  }
}

// DeepSpeed's own functions for several nodes: total_gpus = g * nodes in the
// ZeRO-2 offload CPU and the GPU shares, g alone in the no-offload CPU, the
// ZeRO-3 offload CPU divided by the nodes.
TEST(PlanTest, DeepSpeedEstimatesAcrossNodesByHand) {
  constexpr int64_t n = 1'000'000'000, largest = 100'000'000;
  struct Case {
    int stage;
    bool opt, param;
    int per_node, nodes;
    int64_t gpu, cpu;
  };
  for (const Case& c : std::vector<Case>{
           // ZeRO-2 offload, 2 nodes of 4: CPU N*max(4*8, 16)*1.5 a node.
           {2, true, false, 4, 2, 2'000'000'000, 48'000'000'000},
           // ZeRO-2 no offload, 2 nodes of 4: GPU 4N + 16N/8, CPU 4N*4*1.5.
           {2, false, false, 4, 2, 6'000'000'000, 24'000'000'000},
           // ZeRO-3 all offloaded over 3 nodes: CPU 18N*1.5/3.
           {3, true, true, 2, 3, 400'000'000, 9'000'000'000},
           // ZeRO-3 optimizer offloaded, 2 nodes of 2: GPU 4*largest + 2N/4, CPU 16N*1.5/2.
           {3, true, false, 2, 2, 900'000'000, 12'000'000'000},
           // ZeRO-3 no offload, 2 nodes of 2: GPU 4*largest + 18N/4, CPU 4*largest*2*1.5.
           {3, false, false, 2, 2, 4'900'000'000, 1'200'000'000}}) {
    SCOPED_TRACE(::testing::Message() << "stage " << c.stage << " opt " << c.opt << " param "
                                      << c.param << " g " << c.per_node << " nodes " << c.nodes);
    const DeepSpeedEstimate e =
        deepspeed_estimate(c.stage, c.opt, c.param, n, largest, c.per_node, c.nodes);
    EXPECT_EQ(e.gpu, c.gpu);
    EXPECT_EQ(e.cpu, c.cpu);
    EXPECT_EQ(e.cpu_per_rank, c.cpu / c.per_node);
    EXPECT_NE(e.formula.find("nodes = " + std::to_string(c.nodes)), std::string::npos) << e.formula;
  }
}

using TierValues = std::array<int64_t, 3>;  // a role on gpu, host, nvme
int64_t role_bytes(const PlanRoles& r, const std::string& name) {
  if (name == "param16") return r.param16;
  if (name == "grad16") return r.grad16;
  if (name == "grad32") return r.grad32;
  if (name == "master32") return r.master32;
  if (name == "exp_avg") return r.exp_avg;
  return r.exp_avg_sq;
}

// One rank of N holds what the engine's placement gives a rank (its ZeRO
// slices); `partitioned` names exactly the roles that shrank against one
// rank alone, and a note names what DeepSpeed would split at that stage but
// every rank holds whole.
TEST(PlanTest, EachRankHoldsWhatThePlacementGivesARank) {
  const PlanModel m = small_model();
  for (int stage = 0; stage <= 3; ++stage) {
    for (const char* offload : {"cpu", "nvme", "none"}) {
      for (int world : {2, 3, 4}) {
        if (stage == 0 && std::string(offload) != "none") continue;  // offload needs a stage
        const std::string members =
            R"("fp16": {"enabled": true}, "zero_optimization": {"stage": )" +
            std::to_string(stage) + R"(, "offload_optimizer": {"device": ")" + offload +
            R"(", "nvme_path": "/tmp"}})";
        SCOPED_TRACE(::testing::Message() << members << " world " << world);
        const config::DsConfig one = parse(members);
        config::DsConfig many = one;
        many.world_size = world;
        auto single = plan_memory(m, one, {});
        auto rank = plan_memory(m, many, {});
        auto placed = plan_placement(many, m.layers);
        ASSERT_TRUE(single.ok()) << single.status();
        ASSERT_TRUE(rank.ok()) << rank.status();
        ASSERT_TRUE(placed.ok()) << placed.status();
        EXPECT_EQ(rank->world_size, world);
        EXPECT_EQ(rank->ranks_per_node, world);
        expect_roles(rank->host.need, placed->host_roles, "host");
        expect_roles(rank->nvme.need, placed->nvme_roles, "nvme");
        if (!placed->offload) expect_roles(rank->gpu.need, placed->device_roles, "gpu");
        EXPECT_EQ(rank->gpu.sharers, 1);
        EXPECT_EQ(rank->host.sharers, world);
        EXPECT_EQ(rank->nvme.sharers, world);
        std::vector<std::string> shrank;
        for (const char* name :
             {"param16", "grad16", "grad32", "master32", "exp_avg", "exp_avg_sq"}) {
          auto total = [&](const MemoryPlan& p) {
            return TierValues{role_bytes(p.gpu.need, name), role_bytes(p.host.need, name),
                              role_bytes(p.nvme.need, name)};
          };
          const TierValues a = total(*single), b = total(*rank);
          bool smaller = false;
          for (int t = 0; t < 3; ++t) {
            EXPECT_LE(b[t], a[t]) << name;  // a rank never holds more than one alone
            smaller = smaller || b[t] < a[t];
          }
          if (smaller) shrank.push_back(name);
        }
        EXPECT_EQ(rank->partitioned, shrank);
        if (stage == 0) {
          // Plain data parallel: every rank holds the whole fp32 state.
          EXPECT_TRUE(rank->partitioned.empty());
          for (const char* name : {"grad32", "master32", "exp_avg", "exp_avg_sq"}) {
            EXPECT_EQ(role_bytes(rank->gpu.need, name), role_bytes(single->gpu.need, name)) << name;
          }
        }
        // DeepSpeed's roles for the stage that the rank holds whole are named.
        std::vector<std::string> deepspeed;
        if (stage >= 1) deepspeed = {"master32", "exp_avg", "exp_avg_sq"};
        if (stage >= 2) deepspeed.insert(deepspeed.end(), {"grad16", "grad32"});
        if (stage >= 3) deepspeed.push_back("param16");
        std::string whole;
        for (const std::string& r : deepspeed) {
          if (std::find(shrank.begin(), shrank.end(), r) == shrank.end()) {
            whole += (whole.empty() ? "" : ", ") + r;
          }
        }
        const std::string notes = [&] {
          std::string all;
          for (const std::string& n : rank->notes) all += n + "\n";
          return all;
        }();
        if (whole.empty()) {
          EXPECT_EQ(notes.find("holds them whole"), std::string::npos) << notes;
        } else {
          EXPECT_NE(notes.find("also splits " + whole + " across ranks"), std::string::npos)
              << notes;
        }
        // Offloaded at stage 1 to 3, the compute grads (and stage 1/2 params)
        // are homed on the GPU; a note says what Gloo beside a CUDA GPU adds.
        const bool kept_on_gpu = stage >= 1 && std::string(offload) != "none";
        EXPECT_EQ(notes.find("more host memory per rank") != std::string::npos, kept_on_gpu)
            << notes;
        if (kept_on_gpu) {
          EXPECT_EQ(rank->host.need.grad16, 0);
          if (stage < 3) EXPECT_EQ(rank->host.need.param16, 0);
        }
        // DeepSpeed's estimate for the same world, one node.
        const bool opt = std::string(offload) != "none";
        const DeepSpeedEstimate ds =
            deepspeed_estimate(stage, opt, false, m.param_count(), m.largest_module_params, world);
        EXPECT_EQ(rank->deepspeed.gpu, ds.gpu);
        EXPECT_EQ(rank->deepspeed.cpu, ds.cpu);
        EXPECT_EQ(rank->deepspeed.cpu_per_rank, ds.cpu / world);
      }
    }
  }
}

// Host and NVMe capacities are a node's: the ranks of a node share them.
TEST(PlanTest, RanksOfANodeShareItsHostMemory) {
  const PlanModel m = small_model();
  config::DsConfig cfg =
      parse(R"("zero_optimization": {"stage": 1, "offload_optimizer": {"device": "cpu"}})");
  cfg.world_size = 4;
  auto rank = plan_memory(m, cfg, {});
  ASSERT_TRUE(rank.ok()) << rank.status();
  const int64_t need = rank->host.need.total();
  ASSERT_GT(need, 0);
  // Four ranks on one node need 4x a rank's host bytes; two nodes of two, 2x.
  for (auto [nodes, sharing] : {std::pair{1, 4}, std::pair{2, 2}, std::pair{4, 1}}) {
    SCOPED_TRACE(nodes);
    auto at = [&](int64_t capacity) {
      return plan_memory(m, cfg, {.host = TierCapacity{capacity, "--host-mem"}, .nodes = nodes});
    };
    auto fits = at(need * sharing);
    auto short_by_one = at(need * sharing - 1);
    ASSERT_TRUE(fits.ok() && short_by_one.ok());
    EXPECT_EQ(fits->ranks_per_node, sharing);
    EXPECT_EQ(fits->host.fits(), true);
    EXPECT_EQ(short_by_one->host.fits(), false);
    EXPECT_EQ(fits->deepspeed.cpu_per_rank, fits->deepspeed.cpu / sharing);
  }
  auto uneven = plan_memory(m, cfg, {.nodes = 3});
  ASSERT_FALSE(uneven.ok());
  EXPECT_NE(std::string(uneven.status().message()).find("does not split evenly over 3 nodes"),
            std::string::npos)
      << uneven.status();
}

std::string joined(const std::vector<std::string>& lines) {
  std::string all;
  for (const std::string& l : lines) all += l + "\n";
  return all;
}

TEST(PlanTest, AdviceForWhatDoesNotFit) {
  const PlanModel m = small_model();
  // No offload on a GPU too small: move the optimizer, shrink the micro batch.
  auto plan = plan_memory(
      m, parse(R"("fp16": {"enabled": true})"),
      {.gpu = TierCapacity{1024, "--gpu-mem"}, .host = TierCapacity{1 << 30, "--host-mem"}});
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->gpu.fits(), false);
  EXPECT_EQ(plan->fits(), false);
  std::string advice = joined(plan->advice);
  EXPECT_NE(advice.find("offload_optimizer.device to \"cpu\""), std::string::npos) << advice;
  EXPECT_NE(advice.find("train_micro_batch_size_per_gpu 2"), std::string::npos) << advice;

  // CPU offload on a small host: move the states to NVMe.
  plan = plan_memory(
      m, parse(R"("zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}})"),
      {.gpu = TierCapacity{1 << 30, "--gpu-mem"}, .host = TierCapacity{4096, "--host-mem"}});
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->gpu.fits(), true);
  EXPECT_EQ(plan->host.fits(), false);
  advice = joined(plan->advice);
  EXPECT_NE(advice.find("offload_optimizer.device to \"nvme\""), std::string::npos) << advice;
  EXPECT_EQ(advice.find("GPU:"), std::string::npos) << advice;

  // Stage 3 with a GPU below the live-parameter cap: lower the cap.
  plan = plan_memory(m, parse(R"("zero_optimization": {"stage": 3,
                                   "offload_optimizer": {"device": "cpu"}})"),
                     {.gpu = TierCapacity{4096, "--gpu-mem"}});
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_FALSE(plan->host.capacity.has_value());  // not probed unless asked
  EXPECT_EQ(plan->fits(), false);
  advice = joined(plan->advice);
  EXPECT_NE(advice.find("stage3_max_live_parameters"), std::string::npos) << advice;

  // Everything fits, but the host capacity is unknown: no verdict, no advice.
  plan = plan_memory(
      m, parse(R"("zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}})"),
      {.gpu = TierCapacity{1 << 30, "--gpu-mem"}});
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_FALSE(plan->fits().has_value());
  EXPECT_TRUE(plan->advice.empty());
}

TEST(PlanTest, StepTimeFromThePlacementsBytes) {
  const PlanModel m = small_model();
  const StepRates rates{.gpu_tflops = 1e-6, .pcie_gbps = 1e-3, .nvme_gbps = 1e-3, .cpu_gbps = 1e-3};
  const config::DsConfig cfg = parse(R"("gradient_accumulation_steps": 3,
      "bf16": {"enabled": true},
      "zero_optimization": {"stage": 3, "stage3_max_live_parameters": 5000,
        "offload_optimizer": {"device": "nvme", "nvme_path": "/tmp"},
        "offload_param": {"device": "nvme", "nvme_path": "/tmp"}})");
  auto t = predict_step_time(m, cfg, rates);
  ASSERT_TRUE(t.ok()) << t.status();
  auto placed = plan_placement(cfg, m.layers);
  ASSERT_TRUE(placed.ok());
  const double n = 6010, tokens = 2 * 3 * 4;
  EXPECT_DOUBLE_EQ(t->compute, tokens * (6 * n + 12.0 * 2 * 8 * 4) / 1e6);
  // The device holds fewer params than the model: they come up for each
  // micro-batch's forward and backward.
  EXPECT_DOUBLE_EQ(t->h2d, 2 * 3 * n * 2 / 1e6);
  EXPECT_DOUBLE_EQ(t->d2h, 3 * n * 2 / 1e6);
  EXPECT_DOUBLE_EQ(t->cpu, n * (28 + 3 * (2 + 8)) / 1e6);
  const RoleBytes& nv = placed->nvme_roles;
  EXPECT_DOUBLE_EQ(t->nvme,
                   (2.0 * (nv.master + nv.exp_avg + nv.exp_avg_sq) + 7.0 * nv.param) / 1e6);
  EXPECT_EQ(t->cpu_source, "--cpu-gbps");
  EXPECT_DOUBLE_EQ(t->slowest(), std::max({t->compute, t->h2d, t->d2h, t->cpu, t->nvme}));
  EXPECT_FALSE(predict_step_time(m, cfg, rates, /*seq_len=*/5).ok());  // beyond the positions
}

TEST(PlanTest, TrainMemoryIsThePlacementPlusTheModelsBuffers) {
  const config::DsConfig cfg = parse(R"("bf16": {"enabled": true},
      "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}})");
  model::Gpt2Config tiny{
      .name = "t", .n_layer = 2, .n_head = 2, .n_embd = 16, .vocab_size = 64, .seq_len = 8};
  const PlanModel shape = model::gpt2_plan_model(tiny);
  auto placed = plan_placement(cfg, shape.layers);
  ASSERT_TRUE(placed.ok());
  auto base = estimate_train_memory({.config = cfg,
                                     .layers = shape.layers,
                                     .model_buffer_bytes = 1000,
                                     .data_bytes = 40,
                                     .async_checkpoint = true});
  ASSERT_TRUE(base.ok()) << base.status();
  EXPECT_EQ(base->host_arena, placed->host_homed + placed->host_cache);
  EXPECT_EQ(base->simulated_device, placed->device_working_set + placed->device_scratch);
  EXPECT_EQ(base->model_buffers, 1000u);
  EXPECT_EQ(base->data, 40u);
  EXPECT_EQ(base->checkpoint_snapshot, static_cast<uint64_t>(shape.param_count()) * (12 + 2));
  EXPECT_EQ(base->baseline, kTrainBaselineBytes);

  auto gpt2 = model::estimate_gpt2_train_memory({.model = tiny, .config = cfg, .data_bytes = 40});
  ASSERT_TRUE(gpt2.ok()) << gpt2.status();
  EXPECT_EQ(gpt2->host_arena, base->host_arena);
  EXPECT_GT(gpt2->model_buffers, 0u);
  EXPECT_FALSE(
      model::estimate_gpt2_train_memory({.model = tiny, .config = cfg, .seq_len = 9}).ok());
}

}  // namespace
}  // namespace strata::engine
