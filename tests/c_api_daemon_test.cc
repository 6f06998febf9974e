// The C API's stratad choice (strata_options.daemon_session): a program
// trains through stratad exactly as in-process (params, states and step
// counts bit for bit, overlap mode, two buckets, gas 2); a second handle
// on the same session resumes it, its param memory overwritten with the
// session's values; no stratad is UNAVAILABLE naming the socket. Device
// bindings on the simulated device (STRATA_DEVICE_SIM) train through
// stratad as in-process. The framework's own calls between and in steps
// (set_group, write_state, report_overflow) give the in-process results bit
// for bit, host and device bindings, and a resumed session keeps the
// groups set_group gave it.
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "strata/strata.h"
#include "tests/stratad_test_util.h"

namespace {

namespace fs = std::filesystem;
using strata::testing::StratadProcess;

constexpr const char* kConfig =
    R"({"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 2,
        "optimizer": {"type": "AdamW", "params": {"lr": 0.01, "weight_decay": 0.1}},
        "gradient_clipping": 1.0,
        "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}},
        "strata": {"overlap": "overlap"}})";

// A program: two fp32 params in two buckets, loss_k = sum 0.5 c_k (w - t)^2.
// `device`: its params and grads live in the simulated device's memory
// (STRATA_BINDING_DEVICE on STRATA_DEVICE_SIM); w and g are then the
// program's host copies, written to / read from it around each call.
struct Program {
  std::vector<float> w[2], g[2];
  bool device = false;
  void* dw[2] = {nullptr, nullptr};
  void* dg[2] = {nullptr, nullptr};
  strata_optimizer* opt = nullptr;

  // own_lr: the program sets lr through set_group (use_schedule false).
  explicit Program(const char* session, const std::string& socket = {}, bool on_device = false,
                   bool own_lr = false)
      : device(on_device) {
    strata_options o;
    EXPECT_EQ(strata_options_init(&o), STRATA_STATUS_OK);
    o.num_threads = 1;
    o.use_schedule = !own_lr;
    if (device) o.device = STRATA_DEVICE_SIM;
    o.daemon_session = session;
    if (!socket.empty()) o.daemon_socket = socket.c_str();
    EXPECT_EQ(strata_optimizer_create(kConfig, &o, &opt), STRATA_STATUS_OK) << strata_last_error();
    strata_group_hparams hp;
    EXPECT_EQ(strata_group_defaults(opt, &hp), STRATA_STATUS_OK);
    int group = -1;
    EXPECT_EQ(strata_add_group(opt, &hp, &group), STRATA_STATUS_OK);
    const size_t sizes[2] = {300, 5000};
    for (int p = 0; p < 2; ++p) {
      w[p].resize(sizes[p]);
      g[p].assign(sizes[p], 0.0f);
      for (size_t i = 0; i < sizes[p]; ++i) w[p][i] = std::sin(0.3f * float(i + 5 * p));
      const std::string name = "w" + std::to_string(p);
      strata_param_desc d = {name.c_str(),        sizes[p],    p,          group,
                             STRATA_BINDING_HOST, w[p].data(), g[p].data()};
      if (device) {
        EXPECT_EQ(strata_device_alloc(opt, sizes[p] * sizeof(float), &dw[p]), STRATA_STATUS_OK)
            << strata_last_error();
        EXPECT_EQ(strata_device_alloc(opt, sizes[p] * sizeof(float), &dg[p]), STRATA_STATUS_OK);
        d.binding = STRATA_BINDING_DEVICE;
        d.param = dw[p];
        d.grad = dg[p];
      }
      int handle = -1;
      EXPECT_EQ(strata_add_param(opt, &d, &handle), STRATA_STATUS_OK) << strata_last_error();
    }
  }
  ~Program() { strata_optimizer_destroy(opt); }

  strata_status finalize_and_init(bool init) {
    strata_status s = strata_finalize(opt);
    if (s != STRATA_STATUS_OK) return s;
    for (int p = 0; p < 2 && init; ++p) {
      std::vector<float> v = w[p];
      s = strata_set_value(opt, p, v.data(), v.size());
      if (s != STRATA_STATUS_OK) return s;
    }
    return read_params();
  }

  // Device params -> w, once strata_wait_params says they landed.
  strata_status read_params() {
    for (int p = 0; p < 2 && device; ++p) {
      const strata_status s = strata_wait_params(opt, p);
      if (s != STRATA_STATUS_OK) return s;
      std::memcpy(w[p].data(), dw[p], w[p].size() * sizeof(float));
    }
    return STRATA_STATUS_OK;
  }

  void step() {
    ASSERT_EQ(strata_begin_step(opt, NAN, nullptr), STRATA_STATUS_OK) << strata_last_error();
    for (int k = 0; k < 2; ++k) {
      if (k > 0) {
        ASSERT_EQ(strata_wait_grads(opt), STRATA_STATUS_OK) << strata_last_error();
      }
      for (int p = 0; p < 2; ++p) {
        for (size_t i = 0; i < w[p].size(); ++i) {
          g[p][i] = (1.0f + 0.5f * float(k)) * (w[p][i] - std::cos(0.1f * float(i)));
        }
      }
      for (int b = 1; b >= 0; --b) {
        if (device) std::memcpy(dg[b], g[b].data(), g[b].size() * sizeof(float));
        ASSERT_EQ(strata_grad_ready(opt, b), STRATA_STATUS_OK) << strata_last_error();
      }
    }
    strata_step_result r;
    ASSERT_EQ(strata_finish_step(opt, &r), STRATA_STATUS_OK) << strata_last_error();
    ASSERT_EQ(read_params(), STRATA_STATUS_OK) << strata_last_error();
  }

  std::vector<float> state(int p, strata_state_kind kind) {
    std::vector<float> out(w[p].size());
    EXPECT_EQ(strata_read_state(opt, p, kind, out.data(), out.size()), STRATA_STATUS_OK)
        << strata_last_error();
    return out;
  }
};

class CApiDaemonTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) /
           ("c_api_daemon_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

TEST_F(CApiDaemonTest, TrainsAsInProcessAndResumes) {
  StratadProcess d(dir_);
  Program local(nullptr);
  ASSERT_EQ(local.finalize_and_init(true), STRATA_STATUS_OK) << strata_last_error();
  {
    Program remote("capi", d.socket());
    ASSERT_EQ(remote.finalize_and_init(true), STRATA_STATUS_OK) << strata_last_error();
    for (int s = 0; s < 6; ++s) {
      local.step();
      remote.step();
    }
    for (int p = 0; p < 2; ++p) {
      EXPECT_EQ(remote.w[p], local.w[p]) << "param " << p;
      EXPECT_EQ(remote.state(p, STRATA_STATE_MASTER), local.state(p, STRATA_STATE_MASTER));
      EXPECT_EQ(remote.state(p, STRATA_STATE_EXP_AVG_SQ), local.state(p, STRATA_STATE_EXP_AVG_SQ));
    }
  }
  // A new program on the same session: resumed, its params the session's.
  Program again("capi", d.socket());
  ASSERT_EQ(again.finalize_and_init(false), STRATA_STATUS_OK) << strata_last_error();
  int64_t steps = 0;
  ASSERT_EQ(strata_steps(again.opt, &steps, nullptr), STRATA_STATUS_OK);
  EXPECT_EQ(steps, 6);
  for (int p = 0; p < 2; ++p) EXPECT_EQ(again.w[p], local.w[p]);
  for (int s = 0; s < 3; ++s) {
    local.step();
    again.step();
  }
  for (int p = 0; p < 2; ++p) EXPECT_EQ(again.w[p], local.w[p]) << "param " << p;
}

// Device bindings (STRATA_DEVICE_SIM) through stratad: the same params and
// states as in-process device bindings, bit for bit, and as host bindings;
// a second program on the session gets the session's params in its device
// memory.
TEST_F(CApiDaemonTest, DeviceBindingsTrainAsInProcessAndResume) {
  StratadProcess d(dir_);
  Program local(nullptr, {}, /*on_device=*/true);
  Program host(nullptr);
  ASSERT_EQ(local.finalize_and_init(true), STRATA_STATUS_OK) << strata_last_error();
  ASSERT_EQ(host.finalize_and_init(true), STRATA_STATUS_OK) << strata_last_error();
  {
    Program remote("capi-dev", d.socket(), /*on_device=*/true);
    ASSERT_EQ(remote.finalize_and_init(true), STRATA_STATUS_OK) << strata_last_error();
    for (int s = 0; s < 5; ++s) {
      local.step();
      host.step();
      remote.step();
    }
    for (int p = 0; p < 2; ++p) {
      EXPECT_EQ(remote.w[p], local.w[p]) << "param " << p;
      EXPECT_EQ(local.w[p], host.w[p]) << "param " << p;
      EXPECT_EQ(remote.state(p, STRATA_STATE_MASTER), local.state(p, STRATA_STATE_MASTER));
      EXPECT_EQ(remote.state(p, STRATA_STATE_EXP_AVG), local.state(p, STRATA_STATE_EXP_AVG));
    }
  }
  Program again("capi-dev", d.socket(), /*on_device=*/true);
  ASSERT_EQ(again.finalize_and_init(false), STRATA_STATUS_OK) << strata_last_error();
  for (int p = 0; p < 2; ++p) EXPECT_EQ(again.w[p], local.w[p]) << "param " << p;
  for (int s = 0; s < 2; ++s) {
    local.step();
    again.step();
  }
  for (int p = 0; p < 2; ++p) EXPECT_EQ(again.w[p], local.w[p]) << "param " << p;
}

// What a framework does besides stepping, through stratad and in-process
// side by side: an LR scheduler's set_group between steps, a state_dict
// load's write_state (master, exp_avg, exp_avg_sq), and its own overflow
// check's report_overflow mid-step (fp32: the step fails). Params, states and
// step counts bit for bit, host and device bindings; a program attaching to
// the session again reads the groups set_group left there.
TEST_F(CApiDaemonTest, FrameworkCallsGiveTheInProcessResults) {
  StratadProcess d(dir_);
  for (const bool on_device : {false, true}) {
    SCOPED_TRACE(on_device ? "device bindings" : "host bindings");
    const std::string session = on_device ? "calls-dev" : "calls-host";
    Program local(nullptr, {}, on_device, /*own_lr=*/true);
    strata_group_hparams changed;
    {
      Program remote(session.c_str(), d.socket(), on_device, /*own_lr=*/true);
      ASSERT_EQ(local.finalize_and_init(true), STRATA_STATUS_OK) << strata_last_error();
      ASSERT_EQ(remote.finalize_and_init(true), STRATA_STATUS_OK) << strata_last_error();
      auto both = [&](const std::function<void(Program&)>& f) {
        f(local);
        f(remote);
      };
      both([](Program& x) { x.step(); });
      // An LR scheduler between steps.
      ASSERT_EQ(strata_get_group(local.opt, 0, &changed), STRATA_STATUS_OK);
      changed.lr = 0.0037;
      changed.beta1 = 0.8;
      changed.weight_decay = 0.02;
      both([&](Program& x) {
        ASSERT_EQ(strata_set_group(x.opt, 0, &changed), STRATA_STATUS_OK) << strata_last_error();
      });
      strata_group_hparams got;
      ASSERT_EQ(strata_get_group(remote.opt, 0, &got), STRATA_STATUS_OK);
      EXPECT_EQ(got.lr, changed.lr);
      EXPECT_EQ(got.beta1, changed.beta1);
      both([](Program& x) { x.step(); });
      // A state_dict load: every fp32 state of param 1 replaced.
      std::vector<float> v(5000);
      for (const strata_state_kind kind :
           {STRATA_STATE_MASTER, STRATA_STATE_EXP_AVG, STRATA_STATE_EXP_AVG_SQ}) {
        for (size_t i = 0; i < v.size(); ++i) {
          v[i] = kind == STRATA_STATE_MASTER ? std::cos(0.05f * float(i))
                                             : 0.001f * float(int(kind) + i % 7);
        }
        both([&](Program& x) {
          ASSERT_EQ(strata_write_state(x.opt, 1, kind, v.data(), v.size()), STRATA_STATUS_OK)
              << strata_last_error();
        });
        EXPECT_EQ(remote.state(1, kind), v);
      }
      both([](Program& x) { x.step(); });
      // The framework's overflow check fires in the second micro-batch: fp32
      // has no loss scaler to skip the step with, so finish_step fails (and
      // abandons the step) as in-process, with the same message. (fp16's
      // skip through stratad: python/tests/test_daemon.py.)
      for (Program* x : {&local, &remote}) {
        ASSERT_EQ(strata_begin_step(x->opt, NAN, nullptr), STRATA_STATUS_OK);
        for (int b = 1; b >= 0; --b) {
          ASSERT_EQ(strata_grad_ready(x->opt, b), STRATA_STATUS_OK) << strata_last_error();
          if (b == 1) ASSERT_EQ(strata_report_overflow(x->opt), STRATA_STATUS_OK);
        }
      }
      strata_step_result r;
      EXPECT_EQ(strata_finish_step(local.opt, &r), STRATA_STATUS_FAILED_PRECONDITION);
      const std::string local_error = strata_last_error();
      EXPECT_EQ(strata_finish_step(remote.opt, &r), STRATA_STATUS_FAILED_PRECONDITION);
      EXPECT_EQ(strata_last_error(),
                "strata_finish_step: stratad: " + local_error.substr(local_error.find(' ') + 1));
      ASSERT_EQ(local.read_params(), STRATA_STATUS_OK);
      ASSERT_EQ(remote.read_params(), STRATA_STATUS_OK);
      both([](Program& x) { x.step(); });
      both([](Program& x) { x.step(); });
      for (int p = 0; p < 2; ++p) {
        EXPECT_EQ(remote.w[p], local.w[p]) << "param " << p;
        for (const strata_state_kind kind :
             {STRATA_STATE_MASTER, STRATA_STATE_EXP_AVG, STRATA_STATE_EXP_AVG_SQ}) {
          EXPECT_EQ(remote.state(p, kind), local.state(p, kind)) << "param " << p << " " << kind;
        }
      }
      int64_t ls = 0, lo = 0, rs = 0, ro = 0;
      ASSERT_EQ(strata_steps(local.opt, &ls, &lo), STRATA_STATUS_OK);
      ASSERT_EQ(strata_steps(remote.opt, &rs, &ro), STRATA_STATUS_OK);
      EXPECT_EQ(rs, ls);
      EXPECT_EQ(ro, lo);
    }
    // Attached again (registered with the original groups): the session's
    // groups are the ones set_group gave it, and steps go on as in-process.
    Program again(session.c_str(), d.socket(), on_device, /*own_lr=*/true);
    ASSERT_EQ(again.finalize_and_init(false), STRATA_STATUS_OK) << strata_last_error();
    strata_group_hparams got;
    ASSERT_EQ(strata_get_group(again.opt, 0, &got), STRATA_STATUS_OK);
    EXPECT_EQ(got.lr, changed.lr);
    EXPECT_EQ(got.weight_decay, changed.weight_decay);
    local.step();
    again.step();
    for (int p = 0; p < 2; ++p) EXPECT_EQ(again.w[p], local.w[p]) << "param " << p;
  }
}

TEST_F(CApiDaemonTest, NoDaemonIsUnavailableNamingTheSocket) {
  const std::string socket = (dir_ / "nobody.sock").string();
  Program remote("capi", socket);
  EXPECT_EQ(remote.finalize_and_init(true), STRATA_STATUS_UNAVAILABLE);
  EXPECT_NE(std::string(strata_last_error()).find(socket), std::string::npos)
      << strata_last_error();
}

}  // namespace
