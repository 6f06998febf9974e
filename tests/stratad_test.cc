// stratad end to end: each test starts the daemon binary on a temporary
// socket and drives it through RemoteOptimizer (or raw bytes). Checks the
// handshake and fingerprint refusals; that N steps through the daemon equal
// the same steps in-process bit for bit (the framework's params and grads
// in the shared arena, as OffloadOptimizer kHost bindings); that a client
// SIGKILLed at random points mid-run, then reattached, ends bit-identical to
// an uninterrupted run; two clients at once; the host-memory quota; a
// fuzzer against a live session; SO_PEERCRED refusal; the socket's modes
// and stale/live socket handling; `strata top --json`.
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core/build_info.h"
#include "core/status.h"
#include "daemon/grad_ring.h"
#include "daemon/protocol.h"
#include "daemon/remote_optimizer.h"
#include "engine/offload_optimizer.h"
#include "gpu/sim_device.h"
#include "gtest/gtest.h"
#include "tests/stratad_test_util.h"
#include "tests/test_ds_config.h"

namespace strata::daemon {
namespace {

namespace fs = std::filesystem;
using strata::testing::StratadProcess;

constexpr uint64_t kSizes[3] = {37, 1000, 20000};
constexpr int kBuckets[3] = {0, 0, 1};
constexpr int kGroups[3] = {0, 1, 1};

// `offload`: "cpu", or an nvme_path (NVMe-homed optimizer states); fp16:
// a dynamic loss scale starting at 2^20, doubling every 4 clean steps, so
// steps overflow (skipped, the scale halved) again and again.
std::string config_json(const std::string& overlap, int gas, const std::string& offload = "cpu",
                        bool fp16 = false) {
  const std::string off = offload == "cpu"
                              ? "{\"device\": \"cpu\"}"
                              : "{\"device\": \"nvme\", \"nvme_path\": \"" + offload + "\"}";
  return "{\"train_micro_batch_size_per_gpu\": 1, \"gradient_accumulation_steps\": " +
         std::to_string(gas) +
         ", \"optimizer\": {\"type\": \"AdamW\", \"params\": {\"lr\": 0.01, \"weight_decay\": "
         "0.1}}, \"gradient_clipping\": 0.5, \"zero_optimization\": {\"stage\": 2, "
         "\"offload_optimizer\": " +
         off + "}, \"strata\": {\"overlap\": \"" + overlap +
         "\", \"prefetch_window_bytes\": 4096}" +
         (fp16 ? ", \"fp16\": {\"enabled\": true, \"loss_scale\": 0, \"initial_scale_power\": 20, "
                 "\"loss_scale_window\": 4}"
               : "") +
         "}";
}

SessionSpec make_spec(const std::string& overlap = "overlap", int gas = 2, double lr0 = 0.01) {
  SessionSpec s;
  s.config_json = config_json(overlap, gas);
  s.groups = {{.lr = lr0, .weight_decay = 0.1}, {.lr = 0.003, .beta1 = 0.8, .weight_decay = 0.0}};
  for (int p = 0; p < 3; ++p) {
    s.params.push_back({"p" + std::to_string(p), kSizes[p], kBuckets[p], kGroups[p]});
  }
  s.use_schedule = false;
  s.speculation = engine::SpeculationPolicy::kAlways;
  s.allow_buffered_io = true;
  return s;
}

std::vector<float> initial(int p) {
  std::vector<float> w(kSizes[p]);
  for (uint64_t i = 0; i < kSizes[p]; ++i) w[i] = std::sin(0.37f * float(i + 11 * p)) * 0.8f;
  return w;
}

// The framework: loss_k = sum 0.5 c_k (w - t)^2, its gradient written where
// the params' grads live (the test's vectors or the arena).
// fp32 or fp16 (the session's compute dtype); gradients carry the loss
// scale begin_step returned.
struct Framework {
  void* w[3];
  void* g[3];
  DType dtype = DType::kFloat32;
  float param(int p, uint64_t i) const {
    return dtype == DType::kFloat32 ? static_cast<const float*>(w[p])[i]
                                    : fp16_to_fp32(static_cast<const uint16_t*>(w[p])[i]);
  }
  void grads(int p, int micro, double scale = 1) const {
    const float c = (1.0f + 0.25f * float(micro)) * static_cast<float>(scale);
    for (uint64_t i = 0; i < kSizes[p]; ++i) {
      const float t = std::cos(0.11f * float(i + 7 * p)) * 0.5f;
      const float v = c * (param(p, i) - t);
      if (dtype == DType::kFloat32) {
        static_cast<float*>(g[p])[i] = v;
      } else {
        static_cast<uint16_t*>(g[p])[i] = fp32_to_fp16(v);
      }
    }
  }
  std::vector<float> params(int p) const {
    std::vector<float> out(kSizes[p]);
    for (uint64_t i = 0; i < kSizes[p]; ++i) out[i] = param(p, i);
    return out;
  }
};

struct State {
  std::vector<std::vector<float>> master, m, v, param;
  int64_t steps = 0, optimizer_steps = 0;
  bool operator==(const State&) const = default;
};

// One step as a framework drives the seam (Opt: OffloadOptimizer or
// RemoteOptimizer); `pause_us` between calls widens the mid-step window.
template <typename Opt>
absl::Status step(Opt& opt, const Framework& fw, int calls, int pause_us = 0) {
  auto s = opt.begin_step();
  if (!s.ok()) return s.status();
  for (int k = 0; k < calls; ++k) {
    if (k > 0) {
      if (auto w = opt.wait_grads(); !w.ok()) return w;
    }
    for (int p = 0; p < 3; ++p) fw.grads(p, k, *s);
    for (int b = 1; b >= 0; --b) {
      if (auto g = opt.grad_ready(b); !g.ok()) return g;
      if (pause_us > 0) ::usleep(pause_us);
    }
  }
  return opt.finish_step().status();
}

template <typename Opt>
State state(Opt& opt, const Framework& fw) {
  State s;
  for (int p = 0; p < 3; ++p) {
    s.master.push_back(*opt.read_state(p, engine::StateKind::kMaster));
    s.m.push_back(*opt.read_state(p, engine::StateKind::kExpAvg));
    s.v.push_back(*opt.read_state(p, engine::StateKind::kExpAvgSq));
    s.param.push_back(fw.params(p));
  }
  s.steps = opt.steps();
  s.optimizer_steps = opt.optimizer_steps();
  return s;
}

// The same run in-process: the reference.
State in_process(const SessionSpec& spec, int steps, int calls, double* ms_per_step = nullptr) {
  gpu::SimDevice device(gpu::host_mode_options());  // as stratad's sessions
  engine::OffloadOptimizerOptions o;
  o.use_schedule = spec.use_schedule;
  o.speculation = spec.speculation;
  o.allow_buffered_io = spec.allow_buffered_io;
  auto opt = engine::OffloadOptimizer::create(strata::testing::parse_test_config(spec.config_json),
                                              &device, std::move(o));
  EXPECT_TRUE(opt.ok()) << opt.status();
  for (const auto& g : spec.groups) (*opt)->add_group(g);
  std::vector<float> w[3], g[3];  // fp32-sized: room for either dtype
  Framework fw;
  fw.dtype = (*opt)->compute_dtype();
  for (int p = 0; p < 3; ++p) {
    w[p] = initial(p);
    g[p].assign(kSizes[p], 0.0f);
    fw.w[p] = w[p].data();
    fw.g[p] = g[p].data();
    EXPECT_TRUE((*opt)
                    ->add_param({.name = spec.params[p].name,
                                 .numel = kSizes[p],
                                 .bucket = kBuckets[p],
                                 .group = kGroups[p],
                                 .binding = engine::ParamBinding::kHost,
                                 .param = w[p].data(),
                                 .grad = g[p].data()})
                    .ok());
  }
  EXPECT_TRUE((*opt)->finalize().ok());
  for (int p = 0; p < 3; ++p) EXPECT_TRUE((*opt)->set_value(p, initial(p).data()).ok());
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < steps; ++i) EXPECT_TRUE(step(**opt, fw, calls).ok());
  if (ms_per_step != nullptr) {
    *ms_per_step =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() /
        steps;
  }
  return state(**opt, fw);
}

Framework arena_framework(const RemoteOptimizer& r) {
  Framework fw;
  fw.dtype = r.compute_dtype();
  for (int p = 0; p < 3; ++p) {
    fw.w[p] = r.param(p);
    fw.g[p] = r.grad(p);
  }
  return fw;
}

absl::StatusOr<std::unique_ptr<RemoteOptimizer>> attach(const std::string& socket,
                                                        const std::string& name,
                                                        const SessionSpec& spec,
                                                        bool use_ring = true) {
  auto r = RemoteOptimizer::attach(
      {.socket_path = socket, .session = name, .timeout_ms = 20000, .use_ring = use_ring}, spec);
  if (r.ok() && (*r)->created()) {
    for (int p = 0; p < 3; ++p) {
      const auto w = initial(p);
      if (auto s = (*r)->set_value(p, w.data()); !s.ok()) return s;
    }
  }
  return r;
}

class StratadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) /
           ("stratad_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

// A raw connection that has said hello (or not).
int raw_connect(const std::string& socket) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, socket.c_str(), sizeof addr.sun_path - 1);
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// On a raw connection: hello, then attach to `name` (its arena and eventfd
// closed at once); false when either is refused.
bool raw_attach(int fd, const std::string& name, const SessionSpec& spec) {
  if (!send_frame(fd, MsgType::kHello,
                  {{"protocol_version", kProtocolVersion},
                   {"strata_version", std::string(strata::build_info().version)}})
           .ok()) {
    return false;
  }
  auto h = recv_frame(fd, {.idle_timeout_ms = 5000});
  if (!h.ok() || h->type != MsgType::kOk) return false;
  auto fp = fingerprint(spec);
  if (!fp.ok()) return false;
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(fp->combined()));
  if (!send_frame(fd, MsgType::kAttach,
                  {{"session", name}, {"fingerprint", hex}, {"spec", spec_to_json(spec)}})
           .ok()) {
    return false;
  }
  auto a = recv_frame(fd, {.idle_timeout_ms = 5000, .max_fds = 2});
  if (!a.ok()) return false;
  a->close_fds();
  return a->type == MsgType::kOk;
}

// One request on a raw connection and its reply's status (kOk: OK).
absl::Status raw_request(int fd, MsgType type, const nlohmann::json& body,
                         const std::string& blob = {}) {
  STRATA_RETURN_IF_ERROR(send_frame(fd, type, body, blob));
  STRATA_ASSIGN_OR_RETURN(Frame f, recv_frame(fd, {.idle_timeout_ms = 5000}));
  return f.type == MsgType::kError ? status_from_error(f.body) : absl::OkStatus();
}

// `strata top ARGS` (a shell command line: quote paths): its stdout and exit code.
std::string strata_top(const std::string& args, int* exit_code) {
  const std::string cmd = "'" + std::string(STRATA_STRATA_BINARY) + "' top " + args;
  FILE* p = ::popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  *exit_code = WEXITSTATUS(::pclose(p));
  return out;
}

absl::Status hello_reply(const std::string& socket, const nlohmann::json& hello) {
  const int fd = raw_connect(socket);
  if (fd < 0) return absl::UnavailableError("connect");
  absl::Status s = send_frame(fd, MsgType::kHello, hello);
  auto f = recv_frame(fd, {.idle_timeout_ms = 5000});
  ::close(fd);
  if (!s.ok()) return s;
  if (!f.ok()) return f.status();
  return f->type == MsgType::kError ? status_from_error(f->body) : absl::OkStatus();
}

TEST_F(StratadTest, SocketModesAndStaleOrLiveSocket) {
  // A stale socket (bound, never served) is removed; a live one refused.
  fs::create_directories(dir_ / "run");
  {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, (dir_ / "run" / "stratad.sock").c_str(), sizeof addr.sun_path - 1);
    ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    ::close(fd);
  }
  fs::permissions(dir_ / "run", fs::perms::owner_all);
  StratadProcess d(dir_);
  struct stat st;
  ASSERT_EQ(::stat(d.socket().c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_NE(d.log().find("removed stale socket"), std::string::npos) << d.log();

  const std::string second =
      "'" + std::string(STRATA_STRATAD_BINARY) + "' --socket '" + d.socket() + "' 2>&1";
  FILE* p = ::popen(second.c_str(), "r");
  char buf[512] = {0};
  const size_t n = std::fread(buf, 1, sizeof buf - 1, p);
  buf[n] = 0;
  EXPECT_EQ(WEXITSTATUS(::pclose(p)), 1);
  EXPECT_NE(std::string(buf).find("another stratad is serving"), std::string::npos) << buf;
  EXPECT_TRUE(d.alive());

  // A fresh directory is created 0700.
  StratadProcess d2(dir_ / "fresh");
  ASSERT_EQ(::stat((dir_ / "fresh" / "run").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  EXPECT_EQ(WEXITSTATUS(d2.stop()), 0) << "SIGTERM is a clean exit";
  EXPECT_FALSE(fs::exists(dir_ / "fresh" / "run" / "stratad.sock")) << "the socket is removed";
}

TEST_F(StratadTest, HandshakeAndFingerprintMismatch) {
  StratadProcess d(dir_);
  absl::Status s =
      hello_reply(d.socket(), {{"protocol_version", 999}, {"strata_version", "0.1.0"}});
  EXPECT_TRUE(absl::IsFailedPrecondition(s)) << s;
  EXPECT_NE(s.message().find("protocol version 999"), absl::string_view::npos) << s;
  s = hello_reply(d.socket(),
                  {{"protocol_version", kProtocolVersion}, {"strata_version", "9.9.9"}});
  EXPECT_NE(s.message().find("strata version 9.9.9"), absl::string_view::npos) << s;

  {
    auto r = attach(d.socket(), "fp", make_spec());
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_TRUE((*r)->created());
    ASSERT_TRUE((*r)->detach().ok());
  }
  SessionSpec layout = make_spec();
  layout.params[1].numel = 999;
  auto r = attach(d.socket(), "fp", layout);
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(r.status())) << r.status();
  EXPECT_NE(r.status().message().find("param layout differs at param 1"), absl::string_view::npos)
      << r.status();
  r = attach(d.socket(), "fp", make_spec("overlap", 2, 0.02));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("optimizer config differs in group 0"),
            absl::string_view::npos)
      << r.status();
  SessionSpec bf16 = make_spec();
  bf16.config_json.insert(1, "\"bf16\": {\"enabled\": true}, ");
  r = attach(d.socket(), "fp", bf16);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("dtypes differ"), absl::string_view::npos) << r.status();
  // A session whose first client died before giving every value: the next
  // client is told to give them (created), not handed zeros.
  {
    auto half =
        RemoteOptimizer::attach({.socket_path = d.socket(), .session = "half"}, make_spec());
    ASSERT_TRUE(half.ok()) << half.status();
    const auto w = initial(0);
    ASSERT_TRUE((*half)->set_value(0, w.data()).ok());
  }
  {
    auto half =
        RemoteOptimizer::attach({.socket_path = d.socket(), .session = "half"}, make_spec());
    ASSERT_TRUE(half.ok()) << half.status();
    EXPECT_TRUE((*half)->created());
  }
  // The same spec resumes it.
  r = attach(d.socket(), "fp", make_spec());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE((*r)->created());
  // A request before attach, and a second attach, are errors, not crashes.
  const int fd = raw_connect(d.socket());
  ASSERT_TRUE(send_frame(fd, MsgType::kHello,
                         {{"protocol_version", kProtocolVersion},
                          {"strata_version", std::string(strata::build_info().version)}})
                  .ok());
  ASSERT_TRUE(recv_frame(fd, {.idle_timeout_ms = 5000}).ok());
  ASSERT_TRUE(send_frame(fd, MsgType::kBeginStep, nlohmann::json::object()).ok());
  auto f = recv_frame(fd, {.idle_timeout_ms = 5000});
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->type, MsgType::kError);
  EXPECT_NE(status_from_error(f->body).message().find("before attach"), absl::string_view::npos);
  ::close(fd);
}

TEST_F(StratadTest, TrainsBitForBitLikeInProcess) {
  constexpr int kSteps = 12;
  for (const char* mode : {"sync", "overlap"}) {
    const SessionSpec spec = make_spec(mode, 2);
    double in_ms = 0;
    const State ref = in_process(spec, kSteps, 2, &in_ms);
    StratadProcess d(dir_ / mode);
    for (bool ring : {true, false}) {
      const std::string name = ring ? "ring" : "socket";
      auto r = attach(d.socket(), name, spec, ring);
      ASSERT_TRUE(r.ok()) << r.status();
      const Framework fw = arena_framework(**r);
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < kSteps; ++i) {
        absl::Status st_ = step(**r, fw, 2);
        ASSERT_TRUE(st_.ok()) << st_;
      }
      const double ms =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      EXPECT_EQ(state(**r, fw), ref) << mode << " " << name;
      std::printf(
          "[ figure ] %s, grad_ready via %s: %.3f ms per step through stratad, %.3f ms "
          "in-process (%llu params, gas 2, 2 buckets)\n",
          mode, name.c_str(), ms / kSteps, in_ms,
          static_cast<unsigned long long>(kSizes[0] + kSizes[1] + kSizes[2]));
    }
  }
}

TEST_F(StratadTest, OverwrittenRingClosesOnlyThatConnection) {
  const SessionSpec spec = make_spec("overlap", 2);
  const State ref = in_process(spec, 2, 2);
  StratadProcess d(dir_);
  {
    auto r = attach(d.socket(), "ring", spec);
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_TRUE((*r)->begin_step().ok());
    // A hostile client: the ring's head far past its tail (the ring page
    // sits just before param 0's slot).
    auto* ring = reinterpret_cast<GradRingPage*>(static_cast<char*>((*r)->param(0)) - kRingBytes);
    ring->head = 100000;
    // The ring looks full: grad_ready falls back to the socket, and the
    // daemon, draining the ring first, refuses the page and hangs up.
    absl::Status s = (*r)->grad_ready(0);
    ASSERT_FALSE(s.ok());
    EXPECT_NE(s.message().find("ring"), absl::string_view::npos) << s;
    EXPECT_FALSE((*r)->wait_grads().ok()) << "the connection is closed";
    EXPECT_FALSE((*r)->finish_step().ok()) << "the connection is closed";
  }
  // The session survives, its step aborted: train it as if nothing happened.
  auto r = attach(d.socket(), "ring", spec);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)->steps(), 0);
  const Framework fw = arena_framework(**r);
  for (int i = 0; i < 2; ++i) {
    absl::Status st_ = step(**r, fw, 2);
    ASSERT_TRUE(st_.ok()) << st_;
  }
  EXPECT_EQ(state(**r, fw), ref);
}

// SIGKILLs a forked client at random points of its run kTries times, then
// finishes the run from this process: it must end as `ref`.
void kill_and_resume(const StratadProcess& d, const SessionSpec& spec, const State& ref, int kSteps,
                     int kTries) {
  {
    // Values first, so every killed client finds a session to resume.
    auto r = attach(d.socket(), "crash", spec);
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_TRUE((*r)->detach().ok());
  }
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int> delay_us(1'000, 40'000);
  int64_t last_steps = 0;
  for (int attempt = 0; attempt < kTries; ++attempt) {
    const pid_t child = ::fork();
    if (child == 0) {
      auto r = attach(d.socket(), "crash", spec);
      if (!r.ok()) ::_exit(3);
      const Framework fw = arena_framework(**r);
      while ((*r)->steps() < kSteps) {
        if (!step(**r, fw, 2, /*pause_us=*/300).ok()) ::_exit(4);
      }
      ::_exit(0);
    }
    ::usleep(delay_us(rng));
    ::kill(child, SIGKILL);
    int status = 0;
    ::waitpid(child, &status, 0);
    ASSERT_FALSE(WIFEXITED(status) && WEXITSTATUS(status) != 0)
        << "client failed with " << WEXITSTATUS(status) << "\n"
        << d.log();
    auto st = RemoteOptimizer::stats(d.socket());
    ASSERT_TRUE(st.ok()) << st.status();
    ASSERT_EQ((*st)["sessions"].size(), 1u);
    const int64_t steps = (*st)["sessions"][0]["step"];
    EXPECT_GE(steps, last_steps);
    last_steps = steps;
  }
  auto r = attach(d.socket(), "crash", spec);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE((*r)->created());
  const Framework fw = arena_framework(**r);
  while ((*r)->steps() < kSteps) {
    absl::Status st_ = step(**r, fw, 2);
    ASSERT_TRUE(st_.ok()) << st_;
  }
  EXPECT_EQ(state(**r, fw), ref) << "the run ends as an uninterrupted one";
  auto st = RemoteOptimizer::stats(d.socket());
  ASSERT_TRUE(st.ok());
  const int64_t aborted = (*st)["sessions"][0]["aborted_steps"];
  std::printf("[ figure ] %lld of %d kills landed mid-step (aborted and rolled back)\n",
              static_cast<long long>(aborted), kTries);
  EXPECT_GT(aborted, 0) << "no kill landed mid-step; the test did not test the abort";
}

TEST_F(StratadTest, ClientKilledMidStepReattachesBitIdentical) {
  const SessionSpec spec = make_spec("overlap", 2);
  const State ref = in_process(spec, 200, 2);
  StratadProcess d(dir_);
  kill_and_resume(d, spec, ref, 200, 20);
}

TEST_F(StratadTest, ClientKilledMidStepFp16OverflowsNvmeStates) {
  // fp16 with a dynamic scale that overflows every few steps, optimizer
  // states homed on NVMe: the config's path is stratad's --nvme-path
  // (<dir>/<session>), not the one written in it.
  SessionSpec spec = make_spec("overlap", 2);
  spec.config_json = config_json("overlap", 2, "/nonexistent/swap", /*fp16=*/true);
  SessionSpec local = spec;
  local.config_json = config_json("overlap", 2, (dir_ / "local_swap").string(), true);
  const State ref = in_process(local, 60, 2);
  EXPECT_LT(ref.optimizer_steps, ref.steps - 3) << "several steps overflowed and were skipped";
  StratadProcess d(dir_, {"--nvme-path", (dir_ / "swap").string()});
  kill_and_resume(d, spec, ref, 60, 10);
  EXPECT_TRUE(fs::exists(dir_ / "swap" / "crash")) << "the states went to --nvme-path";
}

TEST_F(StratadTest, TwoClientsAtOnceAndQuota) {
  // Each session charges ~587 KiB (arena 176 KiB + 20 B per param): two fit.
  StratadProcess d(dir_, {"--host-mem", "1300K", "--threads", "2"});
  const SessionSpec a = make_spec("overlap", 2, 0.01), b = make_spec("sync", 1, 0.02);
  const State ref_a = in_process(a, 15, 2), ref_b = in_process(b, 15, 1);
  State got_a, got_b;
  auto run = [&](const SessionSpec& spec, const char* name, int calls, State* out) {
    auto r = attach(d.socket(), name, spec);
    ASSERT_TRUE(r.ok()) << r.status();
    const Framework fw = arena_framework(**r);
    for (int i = 0; i < 15; ++i) {
      absl::Status st_ = step(**r, fw, calls);
      ASSERT_TRUE(st_.ok()) << st_;
    }
    *out = state(**r, fw);
  };
  std::thread ta([&] { run(a, "a", 2, &got_a); });
  std::thread tb([&] { run(b, "b", 1, &got_b); });
  ta.join();
  tb.join();
  EXPECT_EQ(got_a, ref_a);
  EXPECT_EQ(got_b, ref_b);
  auto third = attach(d.socket(), "c", make_spec());
  ASSERT_FALSE(third.ok());
  EXPECT_TRUE(absl::IsResourceExhausted(third.status())) << third.status();
  EXPECT_NE(third.status().message().find("free of"), absl::string_view::npos) << third.status();
  // Ending a session frees its share.
  {
    auto r = attach(d.socket(), "a", a);
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_TRUE((*r)->detach(/*end_session=*/true).ok());
  }
  auto c = attach(d.socket(), "c", make_spec());
  EXPECT_TRUE(c.ok()) << c.status();
}

// write_state, set_group and set_optimizer_steps with bad fields: each is
// an error reply naming what is wrong (a malformed one closes that
// connection, one refused by the optimizer, mid-step, does not), and the
// session is as it was: a client attaching afterwards steps it as if they
// had never been sent.
TEST_F(StratadTest, MalformedFrameworkRequestsChangeNothing) {
  StratadProcess d(dir_);
  const SessionSpec spec = make_spec("overlap", 2);
  {
    auto r = attach(d.socket(), "calls", spec);
    ASSERT_TRUE(r.ok()) << r.status();
  }
  const std::string four(16, '\0');
  const nlohmann::json hp = group_to_json(spec.groups[0]);
  nlohmann::json bad_hp = hp;
  bad_hp["lr"] = -1.0;
  struct Case {
    MsgType type;
    nlohmann::json body;
    std::string blob;
    const char* names;  // what the error message must mention
  };
  const Case cases[] = {
      {MsgType::kWriteState,
       {{"param", 0}, {"kind", "exp_avg"}, {"offset", 0}, {"count", 4}},
       "abc",
       "blob"},
      {MsgType::kWriteState,
       {{"param", 0}, {"kind", "bogus"}, {"offset", 0}, {"count", 4}},
       four,
       "bogus"},
      {MsgType::kWriteState,
       {{"param", 1}, {"kind", "exp_avg"}, {"offset", 8}, {"count", 4}},
       four,
       "does not continue"},
      {MsgType::kWriteState,
       {{"param", 7}, {"kind", "exp_avg"}, {"offset", 0}, {"count", 4}},
       four,
       "param"},
      {MsgType::kSetGroup, {{"group", 9}, {"hp", hp}}, "", "group"},
      {MsgType::kSetGroup, {{"group", 0}, {"hp", bad_hp}}, "", "lr"},
      {MsgType::kSetGroup, {{"group", 0}}, "", "hp"},
      {MsgType::kSetOptimizerSteps, {{"steps", -3}}, "", "steps"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(type_name(c.type)) + " " + c.body.dump());
    const int fd = raw_connect(d.socket());
    ASSERT_TRUE(raw_attach(fd, "calls", spec));
    const absl::Status s = raw_request(fd, c.type, c.body, c.blob);
    EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
    EXPECT_NE(s.message().find(c.names), absl::string_view::npos) << s;
    // The connection was closed after the error reply.
    EXPECT_FALSE(raw_request(fd, MsgType::kWaitGrads, nlohmann::json::object()).ok());
    ::close(fd);
  }
  {
    // Mid-step: refused by the optimizer (FailedPrecondition), the
    // connection stays, the step goes on.
    const int fd = raw_connect(d.socket());
    ASSERT_TRUE(raw_attach(fd, "calls", spec));
    ASSERT_TRUE(raw_request(fd, MsgType::kBeginStep, nlohmann::json::object()).ok());
    nlohmann::json changed = hp;
    changed["lr"] = 0.5;
    absl::Status s = raw_request(fd, MsgType::kSetGroup, {{"group", 0}, {"hp", changed}});
    EXPECT_TRUE(absl::IsFailedPrecondition(s)) << s;
    s = raw_request(fd, MsgType::kWriteState,
                    {{"param", 0}, {"kind", "master"}, {"offset", 0}, {"count", 4}}, four);
    EXPECT_TRUE(absl::IsFailedPrecondition(s)) << s;
    s = raw_request(fd, MsgType::kSetOptimizerSteps, {{"steps", 5}});
    EXPECT_TRUE(absl::IsFailedPrecondition(s)) << s;
    EXPECT_TRUE(raw_request(fd, MsgType::kAbortStep, {{"why", "test"}}).ok());
    ::close(fd);
  }
  // Nothing changed: the session steps as in-process from the start.
  constexpr int kSteps = 3;
  const State ref = in_process(spec, kSteps, 2);
  auto r = attach(d.socket(), "calls", spec);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_FALSE((*r)->created());
  EXPECT_EQ((*r)->group(0).lr, spec.groups[0].lr);
  const Framework fw = arena_framework(**r);
  for (int i = 0; i < kSteps; ++i) ASSERT_TRUE(step(**r, fw, 2).ok());
  EXPECT_EQ(state(**r, fw), ref);
}

// finish_step in halves (the sessions of data-parallel ranks): with the
// session's own statistics handed back as the global ones, a run is bit for
// bit the in-process one; between the halves only finish_global and
// abort_step are taken (the step goes on), finish_global without
// finish_local is refused, and a larger global norm clips.
TEST_F(StratadTest, FinishInHalvesStepsAsFinishStep) {
  StratadProcess d(dir_);
  const SessionSpec spec = make_spec("overlap", 2);
  constexpr int kSteps = 3;
  const State ref = in_process(spec, kSteps, 2);
  auto r = attach(d.socket(), "halves", spec);
  ASSERT_TRUE(r.ok()) << r.status();
  const Framework fw = arena_framework(**r);
  auto st = (*r)->finish_step_global({.sum_squares = 1, .nonfinite = false});
  EXPECT_TRUE(absl::IsFailedPrecondition(st.status())) << st.status();
  for (int i = 0; i < kSteps; ++i) {
    auto scale = (*r)->begin_step();
    ASSERT_TRUE(scale.ok()) << scale.status();
    for (int k = 0; k < 2; ++k) {
      if (k > 0) ASSERT_TRUE((*r)->wait_grads().ok());
      for (int p = 0; p < 3; ++p) fw.grads(p, k, *scale);
      for (int b = 1; b >= 0; --b) ASSERT_TRUE((*r)->grad_ready(b).ok());
    }
    auto local = (*r)->finish_step_local();
    ASSERT_TRUE(local.ok()) << local.status();
    EXPECT_GT(local->sum_squares, 0);
    EXPECT_FALSE(local->nonfinite);
    // Between the halves: refused, the connection and the step stay.
    const absl::Status again = (*r)->begin_step().status();
    EXPECT_TRUE(absl::IsFailedPrecondition(again)) << again;
    EXPECT_NE(again.message().find("finish_global"), std::string_view::npos) << again;
    auto done = (*r)->finish_step_global(*local);
    ASSERT_TRUE(done.ok()) << done.status();
    EXPECT_EQ(done->step, i + 1);
  }
  EXPECT_EQ(state(**r, fw), ref);
  // A global norm 100 times this rank's clips the step.
  auto scale = (*r)->begin_step();
  ASSERT_TRUE(scale.ok());
  for (int p = 0; p < 3; ++p) fw.grads(p, 0, *scale);
  for (int k = 0; k < 2; ++k) {
    if (k > 0) ASSERT_TRUE((*r)->wait_grads().ok());
    for (int b = 1; b >= 0; --b) ASSERT_TRUE((*r)->grad_ready(b).ok());
  }
  auto local = (*r)->finish_step_local();
  ASSERT_TRUE(local.ok()) << local.status();
  auto clipped = (*r)->finish_step_global({.sum_squares = local->sum_squares * 1e4});
  ASSERT_TRUE(clipped.ok()) << clipped.status();
  EXPECT_GT(clipped->grad_norm, 0.5);  // gradient_clipping
  EXPECT_GT(clipped->clip_coef, 1.0);
}

TEST_F(StratadTest, FuzzerDoesNotDisturbAnotherSession) {
  const SessionSpec spec = make_spec("overlap", 2);
  constexpr int kSteps = 40;
  const State ref = in_process(spec, kSteps, 2);
  StratadProcess d(dir_);
  State got;
  std::atomic<bool> done{false};
  std::thread steady([&] {
    auto r = attach(d.socket(), "steady", spec);
    ASSERT_TRUE(r.ok()) << r.status();
    const Framework fw = arena_framework(**r);
    for (int i = 0; i < kSteps; ++i) {
      {
        absl::Status st_ = step(**r, fw, 2, 20000);
        ASSERT_TRUE(st_.ok()) << st_;
      }
    }
    got = state(**r, fw);
    done = true;
  });
  std::mt19937 rng(99);
  auto bytes = [&](size_t n) {
    std::string s(n, '\0');
    for (auto& c : s) c = static_cast<char>(rng());
    return s;
  };
  const nlohmann::json hello = {{"protocol_version", kProtocolVersion},
                                {"strata_version", std::string(strata::build_info().version)}};
  // A session of its own that case 7 attaches to (a few hundred bytes).
  SessionSpec fuzz_spec = make_spec();
  for (auto& p : fuzz_spec.params) p.numel = 16;
  // The 10 s of hostile traffic beside a live session.
  constexpr int kFuzzSeconds = 10;
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(kFuzzSeconds);
  int sent = 0, answered = 0, attached = 0;
  while (std::chrono::steady_clock::now() < until) {
    const int fd = raw_connect(d.socket());
    ASSERT_GE(fd, 0) << "stratad stopped accepting";
    std::string out;
    const int kind = static_cast<int>(rng() % 8);
    uint32_t magic = kFrameMagic;
    auto hdr = [&](uint16_t type, uint32_t jl, uint32_t bl) {
      std::string h(16, '\0');
      std::memcpy(h.data(), &magic, 4);
      std::memcpy(h.data() + 4, &type, 2);
      std::memcpy(h.data() + 8, &jl, 4);
      std::memcpy(h.data() + 12, &bl, 4);
      return h;
    };
    if (kind >= 3 && kind != 7) {
      (void)send_frame(fd, MsgType::kHello, hello);
      (void)recv_frame(fd, {.idle_timeout_ms = 2000});
    }
    switch (kind) {
      case 0:
        out = bytes(1 + rng() % 64);
        break;
      case 1:
        out = hdr(static_cast<uint16_t>(1 + rng() % kLastRequestType),
                  kMaxJsonBytes + 1 + rng() % 1000, 0);
        break;
      case 2:
        out = hdr(1, 200, 0) + "{\"protocol_version\"";  // truncated, then closed
        break;
      case 3: {
        const std::string junk = bytes(1 + rng() % 100);
        out = hdr(static_cast<uint16_t>(rng() % (kLastRequestType + 3)), junk.size(), 0) + junk;
        break;
      }
      case 4: {
        nlohmann::json spec_json = spec_to_json(make_spec());
        spec_json["params"][rng() % 3]["numel"] = -static_cast<int64_t>(rng() % 100);
        const std::string body = nlohmann::json{
            {"session", "evil"},
            {"fingerprint", "0123456789abcdef"},
            {"spec", spec_json}}.dump();
        out = hdr(2, body.size(), 0) + body;
        break;
      }
      case 5: {
        const std::string body = "{\"bucket\": 1e308, \"param\": -1, \"group\": 1e9}";
        out = hdr(static_cast<uint16_t>(3 + rng() % (kLastRequestType - 2)), body.size(),
                  rng() % 64) +
              body + bytes(rng() % 64);
        break;
      }
      case 6:
        out = hdr(13, 2, kMaxBlobBytes + 1) + "{}";
        break;
      case 7: {
        // Attached to a real session (its own, beside the steady one): a
        // session request of any type with hostile fields and blob.
        if (!raw_attach(fd, "fuzz", fuzz_spec)) break;
        ++attached;
        const std::string fields[] = {"param", "offset", "count",  "group", "steps",
                                      "kind",  "hp",     "bucket", "dir",   "why"};
        nlohmann::json body = nlohmann::json::object();
        for (const std::string& k : fields) {
          switch (rng() % 5) {
            case 0:
              break;
            case 1:
              body[k] = static_cast<int64_t>(rng() % 7) - 3;
              break;
            case 2:
              body[k] = 1e300;
              break;
            case 3:
              body[k] = std::string(rng() % 8, static_cast<char>('a' + rng() % 26));
              break;
            case 4:
              body[k] = {{"lr", -1}, {"beta1", "x"}};
              break;
          }
        }
        const std::string text = body.dump();
        const std::string blob = bytes(rng() % 64);
        // The requests that take params, states, groups and counts (not
        // save / load: their paths would be written to).
        const MsgType types[] = {MsgType::kSetValue,          MsgType::kReadState,
                                 MsgType::kWriteState,        MsgType::kSetGroup,
                                 MsgType::kSetOptimizerSteps, MsgType::kReportOverflow,
                                 MsgType::kGradReady};
        out =
            hdr(static_cast<uint16_t>(types[rng() % std::size(types)]), text.size(), blob.size()) +
            text + blob;
        break;
      }
    }
    (void)::send(fd, out.data(), out.size(), MSG_NOSIGNAL);
    // Half-close: a partial frame is then truncated at once, not timed out.
    ::shutdown(fd, SHUT_WR);
    auto f = recv_frame(fd, {.idle_timeout_ms = 2000, .body_timeout_ms = 2000});
    if (f.ok() && f->type == MsgType::kError) ++answered;
    ::close(fd);
    ++sent;
    ASSERT_TRUE(d.alive()) << d.log();
  }
  steady.join();
  ASSERT_TRUE(done.load());
  EXPECT_EQ(got, ref) << "the concurrent session is unaffected";
  EXPECT_TRUE(RemoteOptimizer::stats(d.socket()).ok());
  EXPECT_GT(answered, sent / 2) << "most hostile messages get an error reply";
  EXPECT_GT(attached, 0) << "no hostile request reached an attached session";
  std::printf(
      "[ figure ] fuzzer: %d hostile connections in %d s, %d answered with an error, %d of them "
      "on an attached session\n",
      sent, kFuzzSeconds, answered, attached);
}

TEST_F(StratadTest, OtherUidIsRefusedBySoPeercred) {
  if (::geteuid() != 0) {
    GTEST_SKIP() << "needs root to setuid to nobody (the test runs as uid " << ::geteuid() << ")";
  }
  StratadProcess d(dir_);
  // The socket's modes already keep other users out; open them so the
  // SO_PEERCRED check, the second line, is what refuses.
  fs::permissions(dir_, fs::perms::all);
  fs::permissions(dir_ / "run", fs::perms::all);
  fs::permissions(d.socket(), fs::perms::all);
  const pid_t child = ::fork();
  if (child == 0) {
    if (::setgroups(0, nullptr) != 0 || ::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(10);
    const int fd = raw_connect(d.socket());
    if (fd < 0) ::_exit(11);
    auto f = recv_frame(fd, {.idle_timeout_ms = 5000});
    if (!f.ok() || f->type != MsgType::kError) ::_exit(12);
    const absl::Status s = status_from_error(f->body);
    ::_exit(absl::IsPermissionDenied(s) && s.message().find("uid 65534") != absl::string_view::npos
                ? 0
                : 13);
  }
  int status = 0;
  ::waitpid(child, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  const std::string log = d.log();
  EXPECT_NE(log.find("refused a connection from pid " + std::to_string(child) + " uid 65534"),
            std::string::npos)
      << log;
  EXPECT_TRUE(RemoteOptimizer::stats(d.socket()).ok()) << "the owner is still served";
}

TEST_F(StratadTest, KilledDaemonIsAnErrorNamingItNotAHang) {
  StratadProcess d(dir_);
  auto r = attach(d.socket(), "orphan", make_spec());
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_TRUE((*r)->begin_step().ok());
  d.kill_hard();
  const auto t0 = std::chrono::steady_clock::now();
  (void)(*r)->grad_ready(0);  // the ring: no answer expected
  absl::Status s = (*r)->wait_grads();
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
  EXPECT_NE(s.message().find(d.socket()), absl::string_view::npos) << s;
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
  EXPECT_FALSE((*r)->finish_step().ok());
}

TEST_F(StratadTest, SigtermSavesSessionsAndARestartOffersThem) {
  constexpr int kSteps = 10;
  const SessionSpec spec = make_spec("overlap", 2);
  const State ref = in_process(spec, kSteps, 2);
  const std::vector<std::string> args = {"--state-dir", (dir_ / "state").string()};
  {
    StratadProcess d(dir_, args);
    auto r = attach(d.socket(), "kept", spec);
    ASSERT_TRUE(r.ok()) << r.status();
    const Framework fw = arena_framework(**r);
    for (int i = 0; i < 4; ++i) {
      absl::Status st_ = step(**r, fw, 2);
      ASSERT_TRUE(st_.ok()) << st_;
    }
    ASSERT_TRUE((*r)->begin_step().ok());  // in flight when stratad stops: lost
    ASSERT_TRUE((*r)->grad_ready(1).ok());
    EXPECT_EQ(WEXITSTATUS(d.stop()), 0) << "the attached client does not hold stratad up";
    EXPECT_TRUE(absl::IsUnavailable((*r)->wait_grads())) << "the client hears the daemon went";
    EXPECT_NE(d.log().find("session kept saved"), std::string::npos) << d.log();
  }
  StratadProcess d(dir_, args);
  auto r = attach(d.socket(), "kept", spec);
  ASSERT_TRUE(r.ok()) << r.status() << d.log();
  EXPECT_FALSE((*r)->created());
  EXPECT_EQ((*r)->steps(), 4);
  const Framework fw = arena_framework(**r);
  while ((*r)->steps() < kSteps) {
    absl::Status st_ = step(**r, fw, 2);
    ASSERT_TRUE(st_.ok()) << st_;
  }
  EXPECT_EQ(state(**r, fw), ref) << "the restarted session ends as an uninterrupted run";
}

// A session no client is attached to can be ended (`strata top
// --end-session`), which frees its share of --host-mem; an attached one is
// refused naming its client, an unknown one named.
TEST_F(StratadTest, EndingAnIdleSessionFreesItsMemory) {
  // Each session charges ~587 KiB (see TwoClientsAtOnceAndQuota): one fits.
  StratadProcess d(dir_, {"--host-mem", "900K"});
  {
    auto a = attach(d.socket(), "a", make_spec());
    ASSERT_TRUE(a.ok()) << a.status();
    const Framework fw = arena_framework(**a);
    absl::Status st_ = step(**a, fw, 2);
    ASSERT_TRUE(st_.ok()) << st_;
    const absl::Status attached = RemoteOptimizer::end_session(d.socket(), "a");
    EXPECT_TRUE(absl::IsFailedPrecondition(attached)) << attached;
    EXPECT_NE(attached.message().find(absl::StrCat("pid ", ::getpid())), absl::string_view::npos)
        << attached;
  }  // detached, the session kept
  auto refused = attach(d.socket(), "b", make_spec());
  ASSERT_FALSE(refused.ok());
  EXPECT_TRUE(absl::IsResourceExhausted(refused.status())) << refused.status();
  EXPECT_NE(refused.status().message().find("--end-session"), absl::string_view::npos)
      << refused.status();
  int exit_code = -1;
  const std::string out =
      strata_top("--socket '" + d.socket() + "' --end-session a 2>&1", &exit_code);
  ASSERT_EQ(exit_code, 0) << out;
  EXPECT_NE(out.find("session a ended"), std::string::npos) << out;
  const absl::Status again = RemoteOptimizer::end_session(d.socket(), "a");
  EXPECT_TRUE(absl::IsNotFound(again)) << again;
  auto b = attach(d.socket(), "b", make_spec());
  EXPECT_TRUE(b.ok()) << b.status();
  EXPECT_TRUE(d.alive());
}

TEST_F(StratadTest, TopJsonListsSessions) {
  StratadProcess d(dir_, {"--roofline", "10"});
  auto r = attach(d.socket(), "topme", make_spec());
  ASSERT_TRUE(r.ok()) << r.status();
  const Framework fw = arena_framework(**r);
  for (int i = 0; i < 3; ++i) {
    absl::Status st_ = step(**r, fw, 2);
    ASSERT_TRUE(st_.ok()) << st_;
  }
  int exit_code = -1;
  const std::string out = strata_top("--json --socket '" + d.socket() + "'", &exit_code);
  ASSERT_EQ(exit_code, 0) << out;
  const auto j = nlohmann::json::parse(out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << out;
  ASSERT_EQ(j["sessions"].size(), 1u) << out;
  const auto& s = j["sessions"][0];
  EXPECT_EQ(s["name"], "topme");
  EXPECT_EQ(s["pid"], ::getpid());
  EXPECT_EQ(s["step"], 3);
  EXPECT_EQ(s["arena_total_bytes"], (*r)->arena_bytes());
  EXPECT_GT(s["arena_used_bytes"].get<uint64_t>(), 0u);
  // The optimizer's rate and its share of the roofline (the test passes
  // --roofline 10: no measurement at start), NVMe rates (none: cpu
  // offload), the session's queues and pool.
  EXPECT_GT(s["optimizer_bytes"].get<uint64_t>(), 0u);
  EXPECT_GT(s["optimizer_gb_per_s"].get<double>(), 0.0);
  EXPECT_DOUBLE_EQ(s["roofline_ratio"].get<double>(), s["optimizer_gb_per_s"].get<double>() / 10);
  EXPECT_EQ(j["roofline_gb_per_s"], 10.0);
  EXPECT_EQ(s["nvme_read_gb_per_s"], 0.0);
  EXPECT_EQ(s["nvme_write_bytes"], 0);
  EXPECT_EQ(s["queued_jobs"], 0);
  EXPECT_EQ(s["ring_depth"], 0);
  EXPECT_EQ(s["pool"], 0);
  ASSERT_EQ(j["pools"].size(), 1u);  // one NUMA node on the test box or not: at least one pool
  EXPECT_EQ(j["pools"][0]["sessions"], 1);
}

// Per-session quota: an attach over it is refused naming the quota and
// what the session needs; the daemon-wide quota keeps saying what is free.
TEST_F(StratadTest, SessionQuotaIsCheckedAtAttach) {
  StratadProcess d(dir_, {"--session-quota", "300K"});
  auto r = attach(d.socket(), "big", make_spec());
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(absl::IsResourceExhausted(r.status())) << r.status();
  EXPECT_NE(r.status().message().find("per-session quota of 300.0 KiB"), absl::string_view::npos)
      << r.status();
  EXPECT_NE(r.status().message().find("needs"), absl::string_view::npos) << r.status();
}

// Two sessions with the same work keep the one pool busy at once: the
// fair scheduler gives each the same share of steps (within 10%).
TEST_F(StratadTest, TwoEqualSessionsShareThePoolFairly) {
  StratadProcess d(dir_, {"--threads", "2"});
  SessionSpec spec;
  spec.config_json = config_json("sync", 1);
  spec.groups = {{.lr = 0.01}};
  for (int p = 0; p < 4; ++p) spec.params.push_back({"w" + std::to_string(p), 1u << 19, p, 0});
  spec.use_schedule = false;
  std::atomic<bool> stop{false};
  std::atomic<int64_t> steps[2] = {0, 0};
  auto run = [&](int who) {
    auto r = RemoteOptimizer::attach(
        {.socket_path = d.socket(), .session = "fair" + std::to_string(who)}, spec);
    ASSERT_TRUE(r.ok()) << r.status();
    const std::vector<float> zero(1u << 19, 0.0f);
    for (int p = 0; p < 4; ++p) {
      ASSERT_TRUE((*r)->set_value(p, zero.data()).ok());
      std::fill_n(static_cast<float*>((*r)->grad(p)), 1u << 19, 1e-3f);
    }
    while (!stop.load()) {
      ASSERT_TRUE((*r)->begin_step().ok());
      for (int b = 0; b < 4; ++b) ASSERT_TRUE((*r)->grad_ready(b).ok());
      ASSERT_TRUE((*r)->finish_step().ok());
      steps[who].fetch_add(1);
    }
  };
  std::thread a(run, 0), b(run, 1);
  for (int i = 0; i < 3000 && (steps[0].load() < 2 || steps[1].load() < 2); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));  // a failed client: not forever
  }
  const int64_t a0 = steps[0].load(), b0 = steps[1].load();
  std::this_thread::sleep_for(std::chrono::seconds(3));
  const int64_t da = steps[0].load() - a0, db = steps[1].load() - b0;
  stop.store(true);
  a.join();
  b.join();
  std::printf("two equal sessions, 3 s: %lld and %lld steps (%.1f%% / %.1f%%)\n",
              static_cast<long long>(da), static_cast<long long>(db), 100.0 * da / (da + db),
              100.0 * db / (da + db));
  ASSERT_GT(da + db, 10);
  EXPECT_NEAR(double(da) / double(da + db), 0.5, 0.05);
}

namespace bench {

// A spec of `buckets` equal params, `numel` in all (gpt2-tiny: ~0.86M
// params, one bucket per layer).
SessionSpec sized_spec(const std::string& overlap, uint64_t numel, int buckets) {
  SessionSpec spec;
  spec.config_json = config_json(overlap, 1);
  spec.groups = {{.lr = 0.01, .weight_decay = 0.1}};
  for (int b = 0; b < buckets; ++b) {
    spec.params.push_back({"w" + std::to_string(b), numel / buckets, b, 0});
  }
  spec.use_schedule = false;
  spec.speculation = engine::SpeculationPolicy::kAlways;
  return spec;
}

// Milliseconds per step (median of `steps`), grads constant (the framework's
// work is not timed: only what the seam costs).
template <typename Opt>
double time_steps(Opt& opt, int buckets, int steps) {
  std::vector<double> ms;
  for (int i = 0; i < steps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    EXPECT_TRUE(opt.begin_step().ok());
    for (int b = buckets - 1; b >= 0; --b) EXPECT_TRUE(opt.grad_ready(b).ok());
    EXPECT_TRUE(opt.finish_step().ok());
    ms.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

double in_process_ms(const SessionSpec& spec, int steps) {
  gpu::SimDevice device(gpu::host_mode_options());  // as stratad's sessions
  engine::OffloadOptimizerOptions o;
  o.use_schedule = false;
  o.speculation = spec.speculation;
  auto opt = engine::OffloadOptimizer::create(strata::testing::parse_test_config(spec.config_json),
                                              &device, std::move(o));
  EXPECT_TRUE(opt.ok()) << opt.status();
  (*opt)->add_group(spec.groups[0]);
  std::vector<std::vector<float>> w, g;
  for (const auto& p : spec.params) {
    w.emplace_back(p.numel, 0.1f);
    g.emplace_back(p.numel, 1e-3f);
    EXPECT_TRUE((*opt)
                    ->add_param({.name = p.name,
                                 .numel = p.numel,
                                 .bucket = p.bucket,
                                 .group = 0,
                                 .binding = engine::ParamBinding::kHost,
                                 .param = w.back().data(),
                                 .grad = g.back().data()})
                    .ok());
  }
  EXPECT_TRUE((*opt)->finalize().ok());
  for (size_t p = 0; p < w.size(); ++p) EXPECT_TRUE((*opt)->set_value(p, w[p].data()).ok());
  return time_steps(**opt, static_cast<int>(spec.params.size()), steps);
}

std::unique_ptr<RemoteOptimizer> remote(const std::string& socket, const std::string& name,
                                        const SessionSpec& spec) {
  auto r = RemoteOptimizer::attach({.socket_path = socket, .session = name}, spec);
  EXPECT_TRUE(r.ok()) << r.status();
  for (size_t p = 0; p < spec.params.size(); ++p) {
    std::vector<float> w(spec.params[p].numel, 0.1f);
    EXPECT_TRUE((*r)->set_value(p, w.data()).ok());
    std::fill_n(static_cast<float*>((*r)->grad(p)), spec.params[p].numel, 1e-3f);
  }
  return std::move(*r);
}

}  // namespace bench

// The figures (closing note, docs/daemon.md): a step through
// stratad against the same step in-process, and two concurrent clients
// against one. Timing, not correctness: runs with STRATA_DAEMON_BENCH=1.
TEST_F(StratadTest, BenchStepThroughStratadAndTwoClients) {
  if (std::getenv("STRATA_DAEMON_BENCH") == nullptr) {
    GTEST_SKIP() << "a benchmark: set STRATA_DAEMON_BENCH=1 to run it";
  }
  StratadProcess d(dir_, {"--roofline", "-1"});
  constexpr int kSteps = 40;
  for (const uint64_t numel : {uint64_t{860'000}, uint64_t{5'000'000}}) {
    for (const char* mode : {"sync", "overlap"}) {
      const SessionSpec spec = bench::sized_spec(mode, numel, numel < 1'000'000 ? 6 : 12);
      const double local = bench::in_process_ms(spec, kSteps);
      auto one =
          bench::remote(d.socket(), std::string("one-") + mode + std::to_string(numel), spec);
      const double through = bench::time_steps(*one, int(spec.params.size()), kSteps);
      const double local2 = bench::in_process_ms(spec, kSteps);  // A-B-A against drift
      std::printf(
          "[ figure ] %llu params, %s: in-process %.2f / %.2f ms, stratad %.2f ms (%+.1f%%)\n",
          static_cast<unsigned long long>(numel), mode, local, local2, through,
          100 * (through / ((local + local2) / 2) - 1));
      std::vector<double> two(2);
      std::vector<std::unique_ptr<RemoteOptimizer>> clients;
      for (int c = 0; c < 2; ++c) {
        clients.push_back(bench::remote(
            d.socket(), std::string("two-") + mode + std::to_string(numel) + "-" + char('a' + c),
            spec));
      }
      std::vector<std::thread> ts;
      for (int c = 0; c < 2; ++c) {
        ts.emplace_back(
            [&, c] { two[c] = bench::time_steps(*clients[c], int(spec.params.size()), kSteps); });
      }
      for (auto& t : ts) t.join();
      std::printf(
          "[ figure ] %llu params, %s: two clients at once %.2f and %.2f ms per step "
          "(one alone %.2f ms): %.2fx the aggregate steps/s\n",
          static_cast<unsigned long long>(numel), mode, two[0], two[1], through,
          (1 / two[0] + 1 / two[1]) / (1 / through));
    }
  }
}

}  // namespace
}  // namespace strata::daemon
