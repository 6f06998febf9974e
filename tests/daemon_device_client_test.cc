// BindingClient with kDevice bindings (the C API's and Python's CUDA params
// through stratad), on SimDevice: a framework whose params and gradients
// live in device memory trains through stratad bit for bit as the same
// registration in-process (fp32, and fp16 with the config's dynamic scaler
// and an overflow step), with a kHost param beside them in one bucket, gas 2,
// overlap and sync mode; the gradients are handed over with an event, the params
// come back behind params_ready's events; the session's arena is pinned
// (registered with the device) while the client lives and unregistered when
// it goes; reattaching copies the session's params into device memory; a
// kDevice param without a device is refused.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "daemon/binding_client.h"
#include "engine/offload_optimizer.h"
#include "gpu/sim_device.h"
#include "gtest/gtest.h"
#include "tests/stratad_test_util.h"

namespace strata::daemon {
namespace {

namespace fs = std::filesystem;
using strata::testing::StratadProcess;

constexpr int kParams = 4;
constexpr uint64_t kSizes[kParams] = {37, 3000, 20000, 500};
constexpr int kBuckets[kParams] = {0, 0, 1, 1};
// The last param lives in host memory beside the device ones.
constexpr engine::ParamBinding kBindings[kParams] = {
    engine::ParamBinding::kDevice, engine::ParamBinding::kDevice, engine::ParamBinding::kDevice,
    engine::ParamBinding::kHost};
constexpr int kGas = 2;

std::string config_json(bool fp16, const std::string& overlap = "overlap") {
  std::string json = R"({"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 2,
      "optimizer": {"type": "AdamW", "params": {"lr": 0.01, "weight_decay": 0.1}},
      "gradient_clipping": 0.5,
      "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}},
      "strata": {"overlap": ")";
  json += overlap + "\"}";
  if (fp16) {
    json += R"(, "fp16": {"enabled": true, "loss_scale": 0, "initial_scale_power": 10,
                          "loss_scale_window": 3})";
  }
  return json + "}";
}

float start_value(int p, uint64_t i) { return 0.5f * std::sin(0.37f * float(i) + float(p)); }

// A framework: params and gradients in its memory (device or host by
// kBindings), registered on an unfinalized or finalized OffloadOptimizer.
struct Framework {
  gpu::SimDevice* device = nullptr;
  DType dtype = DType::kFloat32;
  std::vector<void*> param, grad;           // device pointers, or host buffers' data
  std::vector<std::vector<uint16_t>> host;  // kHost params and grads (2 per param, bytes)
  gpu::StreamId stream = 0;                 // the framework's compute stream
  gpu::EventId grad_event = 0;

  Framework(gpu::SimDevice* d, DType t) : device(d), dtype(t) {
    stream = *device->create_stream();
    grad_event = *device->create_event();
    host.resize(2 * kParams);
    for (int p = 0; p < kParams; ++p) {
      const size_t bytes = kSizes[p] * dtype_size(dtype);
      if (kBindings[p] == engine::ParamBinding::kDevice) {
        param.push_back(*device->allocate(bytes));
        grad.push_back(*device->allocate(bytes));
      } else {
        host[2 * p].assign((bytes + 1) / 2, 0);
        host[2 * p + 1].assign((bytes + 1) / 2, 0);
        param.push_back(host[2 * p].data());
        grad.push_back(host[2 * p + 1].data());
      }
    }
  }
  ~Framework() {
    (void)device->synchronize();
    for (int p = 0; p < kParams; ++p) {
      if (kBindings[p] == engine::ParamBinding::kDevice) {
        device->free(param[p]);
        device->free(grad[p]);
      }
    }
    device->destroy_event(grad_event);
    device->destroy_stream(stream);
  }

  void add_to(engine::OffloadOptimizer& opt) {
    opt.add_group(opt.default_group());
    for (int p = 0; p < kParams; ++p) {
      auto h = opt.add_param({.name = "p" + std::to_string(p),
                              .numel = kSizes[p],
                              .bucket = kBuckets[p],
                              .group = 0,
                              .binding = kBindings[p],
                              .param = param[p],
                              .grad = grad[p]});
      ASSERT_TRUE(h.ok()) << h.status();
    }
  }

  // Param p's bytes as the framework sees them (device: copied out).
  std::vector<uint8_t> read(int p) {
    std::vector<uint8_t> out(kSizes[p] * dtype_size(dtype));
    if (kBindings[p] == engine::ParamBinding::kHost) {
      std::memcpy(out.data(), param[p], out.size());
    } else {
      EXPECT_TRUE(device->copy_to_host(out.data(), param[p], out.size(), stream).ok());
      EXPECT_TRUE(device->synchronize_stream(stream).ok());
    }
    return out;
  }
  std::vector<float> read_fp32(int p) {
    const std::vector<uint8_t> b = read(p);
    std::vector<float> f(kSizes[p]);
    if (dtype == DType::kFloat32) {
      std::memcpy(f.data(), b.data(), b.size());
    } else {
      convert_fp16_to_fp32(reinterpret_cast<const uint16_t*>(b.data()), f.data(), f.size());
    }
    return f;
  }

  // Micro-batch k's gradient of sum_p 0.5 c (w - t)^2, times `scale`, into
  // the framework's memory (device: an async copy on its stream); `inf`:
  // one element of param 1 is +inf (an fp16 overflow). Returns the event
  // after which the device gradients are written.
  gpu::EventId write_grads(int step, int k, double scale, bool inf) {
    for (int p = 0; p < kParams; ++p) {
      const std::vector<float> w = read_fp32(p);
      std::vector<float> g(kSizes[p]);
      for (uint64_t i = 0; i < kSizes[p]; ++i) {
        const float c = 1.0f + 0.25f * float(k) + 0.1f * float(step % 3);
        g[i] = float(scale) * c * (w[i] - std::cos(0.05f * float(i + p)));
      }
      if (inf && p == 1) g[7] = std::numeric_limits<float>::infinity();
      std::vector<uint8_t> bytes(kSizes[p] * dtype_size(dtype));
      if (dtype == DType::kFloat32) {
        std::memcpy(bytes.data(), g.data(), bytes.size());
      } else {
        convert_fp32_to_fp16(g.data(), reinterpret_cast<uint16_t*>(bytes.data()), g.size());
      }
      if (kBindings[p] == engine::ParamBinding::kHost) {
        std::memcpy(grad[p], bytes.data(), bytes.size());
      } else {
        EXPECT_TRUE(device->copy_to_device(grad[p], bytes.data(), bytes.size(), stream).ok());
        // The staging vector dies here: wait for the copy (the framework's
        // own business; strata only waits for the event).
        EXPECT_TRUE(device->synchronize_stream(stream).ok());
      }
    }
    EXPECT_TRUE(device->record_event(grad_event, stream).ok());
    return grad_event;
  }
};

gpu::SimDeviceOptions sim_options() {
  gpu::SimDeviceOptions o;
  o.capacity_bytes = uint64_t{256} << 20;
  return o;
}

engine::OffloadOptimizerOptions optimizer_options() {
  engine::OffloadOptimizerOptions o;
  o.device_budget_bytes = uint64_t{64} << 20;
  return o;
}

// One step's result fields the test compares.
struct StepSummary {
  bool skipped = false, overflow = false;
  double norm = 0, scale = 0;
  bool operator==(const StepSummary&) const = default;
};

// The two ways of running the same steps.
struct Runner {
  virtual ~Runner() = default;
  virtual absl::StatusOr<double> begin_step() = 0;
  virtual absl::Status grad_ready(int bucket, gpu::EventId e) = 0;
  virtual absl::Status wait_grads() = 0;
  virtual absl::StatusOr<engine::OptimizerStepResult> finish_step() = 0;
  virtual std::optional<gpu::EventId> params_ready(int bucket) = 0;
};

struct InProcess : Runner {
  engine::OffloadOptimizer* o;
  explicit InProcess(engine::OffloadOptimizer* opt) : o(opt) {}
  absl::StatusOr<double> begin_step() override { return o->begin_step(); }
  absl::Status grad_ready(int b, gpu::EventId e) override { return o->grad_ready(b, e); }
  absl::Status wait_grads() override { return o->wait_grads(); }
  absl::StatusOr<engine::OptimizerStepResult> finish_step() override { return o->finish_step(); }
  std::optional<gpu::EventId> params_ready(int b) override { return o->params_ready(b); }
};

struct ThroughStratad : Runner {
  BindingClient* c;
  explicit ThroughStratad(BindingClient* client) : c(client) {}
  absl::StatusOr<double> begin_step() override { return c->begin_step(); }
  absl::Status grad_ready(int b, gpu::EventId e) override { return c->grad_ready(b, e); }
  absl::Status wait_grads() override { return c->remote().wait_grads(); }
  absl::StatusOr<engine::OptimizerStepResult> finish_step() override { return c->finish_step(); }
  std::optional<gpu::EventId> params_ready(int b) override { return c->params_ready(b); }
};

// One step: kGas micro-batches, buckets reported in backward's order; the
// device params are waited for through params_ready before they are read.
StepSummary run_step(Runner& r, Framework& fw, int step, bool inf) {
  StepSummary out;
  absl::StatusOr<double> scale = r.begin_step();
  EXPECT_TRUE(scale.ok()) << scale.status();
  if (!scale.ok()) return out;
  for (int k = 0; k < kGas; ++k) {
    if (k > 0) EXPECT_TRUE(r.wait_grads().ok());
    const gpu::EventId e = fw.write_grads(step, k, *scale, inf && k == 1);
    for (int b = 1; b >= 0; --b) {
      const absl::Status s = r.grad_ready(b, e);
      EXPECT_TRUE(s.ok()) << s;
    }
  }
  absl::StatusOr<engine::OptimizerStepResult> res = r.finish_step();
  EXPECT_TRUE(res.ok()) << res.status();
  if (!res.ok()) return out;
  for (int b = 0; b < 2; ++b) {
    if (std::optional<gpu::EventId> e = r.params_ready(b)) {
      EXPECT_TRUE(fw.device->synchronize_event(*e).ok());
    }
  }
  return {res->skipped, res->overflow, res->grad_norm, res->loss_scale};
}

class DaemonDeviceClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) /
           ("daemon_device_client_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  static absl::StatusOr<std::unique_ptr<BindingClient>> attach(const std::string& socket,
                                                               const std::string& session,
                                                               const std::string& json,
                                                               const engine::OffloadOptimizer& reg,
                                                               gpu::Device* device) {
    SessionSpec spec;
    spec.config_json = json;
    return BindingClient::attach({.socket_path = socket, .session = session}, spec, reg, device);
  }

  fs::path dir_;
};

TEST_F(DaemonDeviceClientTest, DeviceBindingsTrainBitForBitAsInProcess) {
  constexpr int kSteps = 7;
  StratadProcess d(dir_);
  for (const auto& [fp16, mode] : {std::pair{false, "overlap"}, std::pair{true, "overlap"},
                                   std::pair{false, "sync"}, std::pair{true, "sync"}}) {
    SCOPED_TRACE(std::string(fp16 ? "fp16 " : "fp32 ") + mode);
    const DType dtype = fp16 ? DType::kFloat16 : DType::kFloat32;
    const std::string json = config_json(fp16, mode);
    std::vector<std::string> warnings;
    auto cfg = config::parse_ds_config(json, "test", &warnings);
    ASSERT_TRUE(cfg.ok()) << cfg.status();

    // In-process: the reference.
    gpu::SimDevice local_dev(sim_options());
    Framework local(&local_dev, dtype);
    auto opt = engine::OffloadOptimizer::create(*cfg, &local_dev, optimizer_options());
    ASSERT_TRUE(opt.ok()) << opt.status();
    local.add_to(**opt);
    ASSERT_TRUE((*opt)->finalize().ok());

    // Through stratad: the same registration, never finalized.
    gpu::SimDevice remote_dev(sim_options());
    Framework remote(&remote_dev, dtype);
    auto reg = engine::OffloadOptimizer::create(*cfg, &remote_dev, optimizer_options());
    ASSERT_TRUE(reg.ok()) << reg.status();
    remote.add_to(**reg);
    const std::string session = std::string(fp16 ? "dev16-" : "dev32-") + mode;
    auto client = attach(d.socket(), session, json, **reg, &remote_dev);
    ASSERT_TRUE(client.ok()) << client.status();
    ASSERT_TRUE((*client)->created());
    void* const arena = (*client)->remote().arena_base();
    const uint64_t arena_bytes = (*client)->remote().arena_bytes();
    EXPECT_TRUE((*client)->arena_pinned());
    EXPECT_TRUE(remote_dev.registered(arena, arena_bytes));

    for (int p = 0; p < kParams; ++p) {
      std::vector<float> v(kSizes[p]);
      for (uint64_t i = 0; i < kSizes[p]; ++i) v[i] = start_value(p, i);
      ASSERT_TRUE((*opt)->set_value(p, v.data()).ok());
      ASSERT_TRUE((*client)->set_value(p, v.data()).ok());
      // set_value writes the binding before it returns, in both.
      ASSERT_EQ(local.read(p), remote.read(p)) << "param " << p << " after set_value";
    }

    InProcess in(opt->get());
    ThroughStratad out(client->get());
    const auto sync0 = remote_dev.sync_counters();
    double in_ms = 0, out_ms = 0;
    int overflows = 0;
    for (int s = 0; s < kSteps; ++s) {
      const bool inf = fp16 && s == 2;
      auto t0 = std::chrono::steady_clock::now();
      const StepSummary a = run_step(in, local, s, inf);
      auto t1 = std::chrono::steady_clock::now();
      const StepSummary b = run_step(out, remote, s, inf);
      auto t2 = std::chrono::steady_clock::now();
      in_ms += std::chrono::duration<double, std::milli>(t1 - t0).count();
      out_ms += std::chrono::duration<double, std::milli>(t2 - t1).count();
      EXPECT_EQ(a, b) << "step " << s;
      if (inf) {
        EXPECT_TRUE(a.overflow && a.skipped) << "step " << s << " should overflow";
      }
      overflows += a.overflow;
      for (int p = 0; p < kParams; ++p) {
        ASSERT_EQ(local.read(p), remote.read(p)) << "param " << p << " after step " << s;
      }
    }
    EXPECT_EQ(overflows, fp16 ? 1 : 0);
    // The client's steps wait on its own stream and events, never the whole device.
    EXPECT_EQ(remote_dev.sync_counters().device_syncs, sync0.device_syncs);
    for (int p = 0; p < kParams; ++p) {
      auto a = (*opt)->read_state(p, engine::StateKind::kMaster);
      auto b = (*client)->remote().read_state(p, engine::StateKind::kMaster);
      ASSERT_TRUE(a.ok() && b.ok());
      EXPECT_EQ(0, std::memcmp(a->data(), b->data(), a->size() * sizeof(float))) << "master " << p;
    }
    std::printf(
        "[ figure ] %s %s, device bindings on SimDevice: %.3f ms per step through stratad, "
        "%.3f ms in-process (%d params, %llu values, gas %d, 2 buckets)\n",
        fp16 ? "fp16" : "fp32", mode, out_ms / kSteps, in_ms / kSteps, kParams,
        static_cast<unsigned long long>(kSizes[0] + kSizes[1] + kSizes[2] + kSizes[3]), kGas);

    // Reattaching: the session's params are copied into device memory.
    const std::vector<uint8_t> want = remote.read(2);
    client->reset();
    EXPECT_FALSE(remote_dev.registered(arena, arena_bytes)) << "the arena stays pinned";
    std::vector<uint8_t> zero(want.size(), 0);
    ASSERT_TRUE(
        remote_dev.copy_to_device(remote.param[2], zero.data(), zero.size(), remote.stream).ok());
    ASSERT_TRUE(remote_dev.synchronize_stream(remote.stream).ok());
    ASSERT_NE(remote.read(2), want);
    auto again = attach(d.socket(), session, json, **reg, &remote_dev);
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_FALSE((*again)->created());
    EXPECT_EQ(remote.read(2), want);
    void* const arena2 = (*again)->remote().arena_base();
    const uint64_t arena2_bytes = (*again)->remote().arena_bytes();
    EXPECT_TRUE(remote_dev.registered(arena2, arena2_bytes));
    ASSERT_TRUE((*again)->remote().detach(/*end_session=*/true).ok());
    again->reset();
    EXPECT_FALSE(remote_dev.registered(arena2, arena2_bytes)) << "the arena stays pinned";
  }
}

TEST_F(DaemonDeviceClientTest, DeviceParamWithoutDeviceIsRefused) {
  StratadProcess d(dir_);
  const std::string json = config_json(false);
  std::vector<std::string> warnings;
  auto cfg = config::parse_ds_config(json, "test", &warnings);
  ASSERT_TRUE(cfg.ok());
  gpu::SimDevice dev(sim_options());
  Framework fw(&dev, DType::kFloat32);
  auto reg = engine::OffloadOptimizer::create(*cfg, &dev, optimizer_options());
  ASSERT_TRUE(reg.ok());
  fw.add_to(**reg);
  auto client = attach(d.socket(), "nodev", json, **reg, nullptr);
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(client.status().message().find("p0"), std::string::npos) << client.status();
}

// A figure, not a check (STRATA_DAEMON_BENCH=1): the step time of device
// bindings in-process and through stratad on SimDevice (its modelled PCIe
// link and CUDA costs), fp16, 4 buckets of 2M params, gas 1, overlap mode,
// constant gradients (only the seam's work is timed: begin_step, each
// bucket's gradient write and grad_ready, finish_step, params_ready). The
// two run side by side, step for step, so a busy machine slows both alike.
TEST_F(DaemonDeviceClientTest, BenchDeviceBindingsStepThroughStratad) {
  if (std::getenv("STRATA_DAEMON_BENCH") == nullptr) {
    GTEST_SKIP() << "a benchmark: set STRATA_DAEMON_BENCH=1 to run it";
  }
  constexpr int kB = 4, kWarm = 3, kTimed = 15;
  constexpr uint64_t kN = uint64_t{2} << 20;
  const std::string json =
      R"({"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
          "optimizer": {"type": "AdamW", "params": {"lr": 0.001}},
          "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}},
          "fp16": {"enabled": true, "loss_scale": 0, "initial_scale_power": 4},
          "strata": {"overlap": "overlap"}})";
  std::vector<std::string> warnings;
  auto cfg = config::parse_ds_config(json, "bench", &warnings);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  std::vector<uint16_t> grad_bytes(kN);
  std::vector<float> init(kN), g32(kN);
  for (uint64_t i = 0; i < kN; ++i) {
    init[i] = 0.01f * std::sin(0.001f * float(i));
    g32[i] = 0.5f * std::cos(0.002f * float(i));
  }
  convert_fp32_to_fp16(g32.data(), grad_bytes.data(), kN);
  StratadProcess d(dir_);

  // One framework and its optimizer (in-process, or the registration of a
  // stratad session).
  struct Side {
    gpu::SimDevice dev;
    gpu::StreamId stream = 0;
    gpu::EventId event = 0;
    std::vector<void*> w, g;
    std::unique_ptr<engine::OffloadOptimizer> opt;
    std::unique_ptr<BindingClient> client;
    std::unique_ptr<Runner> runner;
    std::vector<double> ms;
    ~Side() {
      runner.reset();
      client.reset();
      opt.reset();
      for (void* p : w) dev.free(p);
      for (void* p : g) dev.free(p);
    }
  };
  auto make = [&](bool remote) {
    auto s = std::make_unique<Side>();
    s->stream = *s->dev.create_stream();
    s->event = *s->dev.create_event();
    EXPECT_TRUE(s->dev.register_host_memory(grad_bytes.data(), kN * 2).ok());
    s->opt = std::move(*engine::OffloadOptimizer::create(*cfg, &s->dev, {}));
    s->opt->add_group(s->opt->default_group());
    for (int b = 0; b < kB; ++b) {
      s->w.push_back(*s->dev.allocate(kN * 2));
      s->g.push_back(*s->dev.allocate(kN * 2));
      EXPECT_TRUE(s->opt
                      ->add_param({.name = "w",
                                   .numel = kN,
                                   .bucket = b,
                                   .binding = engine::ParamBinding::kDevice,
                                   .param = s->w[b],
                                   .grad = s->g[b]})
                      .ok());
    }
    if (remote) {
      auto c = attach(d.socket(), "bench", json, *s->opt, &s->dev);
      EXPECT_TRUE(c.ok()) << c.status();
      s->client = std::move(*c);
      s->runner = std::make_unique<ThroughStratad>(s->client.get());
    } else {
      EXPECT_TRUE(s->opt->finalize().ok());
      s->runner = std::make_unique<InProcess>(s->opt.get());
    }
    for (int p = 0; p < kB; ++p) {
      EXPECT_TRUE(
          (remote ? s->client->set_value(p, init.data()) : s->opt->set_value(p, init.data())).ok());
    }
    return s;
  };
  auto step = [&](Side& s, bool timed) {
    const auto t0 = std::chrono::steady_clock::now();
    EXPECT_TRUE(s.runner->begin_step().ok());
    for (int b = kB - 1; b >= 0; --b) {
      EXPECT_TRUE(s.dev.copy_to_device(s.g[b], grad_bytes.data(), kN * 2, s.stream).ok());
      EXPECT_TRUE(s.dev.record_event(s.event, s.stream).ok());
      EXPECT_TRUE(s.runner->grad_ready(b, s.event).ok());
    }
    auto res = s.runner->finish_step();
    EXPECT_TRUE(res.ok()) << res.status();
    for (int b = 0; b < kB; ++b) {
      if (auto e = s.runner->params_ready(b)) EXPECT_TRUE(s.dev.synchronize_event(*e).ok());
    }
    if (timed) {
      s.ms.push_back(
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
  };
  std::unique_ptr<Side> in = make(false), out = make(true);
  for (int i = 0; i < kWarm + kTimed; ++i) {
    step(*in, i >= kWarm);
    step(*out, i >= kWarm);
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  const double in_ms = median(in->ms), out_ms = median(out->ms);
  std::printf(
      "[ figure ] device bindings, fp16, %d buckets x %llu params, SimDevice: median step %.2f ms "
      "in-process, %.2f ms through stratad (%.2fx)\n",
      kB, static_cast<unsigned long long>(kN), in_ms, out_ms, out_ms / in_ms);
  EXPECT_TRUE(out->client->remote().detach(/*end_session=*/true).ok());
}

}  // namespace
}  // namespace strata::daemon
