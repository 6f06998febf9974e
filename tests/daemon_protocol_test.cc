// The stratad wire format (daemon/protocol.h) over a socketpair: frames
// round-trip with a passed descriptor; bad magic, unknown types, oversized
// lengths, truncated frames, stray descriptors and non-object JSON are
// refused with InvalidArgument / DataLoss; field reads are range-checked;
// the fingerprint ignores JSON spacing and key order and changes with the
// layout, the dtypes and the optimizer config; describe_mismatch names
// what differs.
#include "daemon/protocol.h"

#include "daemon/grad_ring.h"

#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include "gtest/gtest.h"

namespace strata::daemon {
namespace {

struct Pair {
  int a = -1, b = -1;
  Pair() {
    int sv[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    a = sv[0];
    b = sv[1];
  }
  ~Pair() {
    if (a >= 0) ::close(a);
    if (b >= 0) ::close(b);
  }
};

std::string header(uint32_t magic, uint16_t type, uint16_t flags, uint32_t jl, uint32_t bl) {
  std::string h(kFrameHeaderBytes, '\0');
  std::memcpy(h.data(), &magic, 4);
  std::memcpy(h.data() + 4, &type, 2);
  std::memcpy(h.data() + 6, &flags, 2);
  std::memcpy(h.data() + 8, &jl, 4);
  std::memcpy(h.data() + 12, &bl, 4);
  return h;
}

absl::StatusOr<Frame> recv_raw(const std::string& bytes, bool close_after = true) {
  Pair p;
  EXPECT_EQ(::write(p.a, bytes.data(), bytes.size()), ssize_t(bytes.size()));
  if (close_after) {
    ::close(p.a);
    p.a = -1;
  }
  return recv_frame(p.b, {.idle_timeout_ms = 1000, .body_timeout_ms = 200});
}

TEST(DaemonProtocolTest, FrameRoundTripWithDescriptor) {
  Pair p;
  const int memfd = ::memfd_create("t", MFD_CLOEXEC);
  ASSERT_GE(memfd, 0);
  ASSERT_EQ(::ftruncate(memfd, 8192), 0);
  const std::string blob(1000, 'x');
  ASSERT_TRUE(send_frame(p.a, MsgType::kOk, {{"k", 7}}, blob, {memfd}).ok());
  ::close(memfd);
  auto f = recv_frame(p.b, {.idle_timeout_ms = 1000, .max_fds = 1});
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->type, MsgType::kOk);
  EXPECT_EQ(f->body["k"], 7);
  EXPECT_EQ(f->blob, blob);
  ASSERT_EQ(f->fds.size(), 1u);
  EXPECT_EQ(::lseek(f->fds[0], 0, SEEK_END), 8192) << "the same memfd arrived";
  f->close_fds();
}

TEST(DaemonProtocolTest, StrayDescriptorIsRefused) {
  Pair p;
  ASSERT_TRUE(send_frame(p.a, MsgType::kStats, nlohmann::json::object(), {}, {p.a}).ok());
  auto f = recv_frame(p.b, {.idle_timeout_ms = 1000});
  ASSERT_FALSE(f.ok());
  EXPECT_TRUE(absl::IsInvalidArgument(f.status())) << f.status();
  EXPECT_NE(f.status().message().find("file descriptor"), absl::string_view::npos);
}

TEST(DaemonProtocolTest, MalformedFramesAreRefused) {
  const std::string body = "{}";
  struct Case {
    std::string bytes;
    absl::StatusCode code;
    const char* says;
  } cases[] = {
      {header(0x12345678, 1, 0, 2, 0) + body, absl::StatusCode::kInvalidArgument, "magic"},
      {header(kFrameMagic, 77, 0, 2, 0) + body, absl::StatusCode::kInvalidArgument, "type 77"},
      {header(kFrameMagic, 1, 1, 2, 0) + body, absl::StatusCode::kInvalidArgument, "flags"},
      {header(kFrameMagic, 1, 0, kMaxJsonBytes + 1, 0), absl::StatusCode::kInvalidArgument,
       "JSON length"},
      {header(kFrameMagic, 1, 0, 0, 0), absl::StatusCode::kInvalidArgument, "JSON length"},
      {header(kFrameMagic, 1, 0, 2, kMaxBlobBytes + 1), absl::StatusCode::kInvalidArgument,
       "blob length"},
      {header(kFrameMagic, 1, 0, 5, 0) + "[1,2]", absl::StatusCode::kInvalidArgument,
       "not a JSON object"},
      {header(kFrameMagic, 1, 0, 5, 0) + "{\"a\":", absl::StatusCode::kInvalidArgument,
       "not valid JSON"},
      {header(kFrameMagic, 1, 0, 100, 0) + "{\"a\"", absl::StatusCode::kDataLoss, "mid-message"},
      {header(kFrameMagic, 1, 0, 2, 0).substr(0, 7), absl::StatusCode::kDataLoss, "mid-message"},
      {"", absl::StatusCode::kUnavailable, "closed"},
  };
  for (const auto& c : cases) {
    auto f = recv_raw(c.bytes);
    ASSERT_FALSE(f.ok()) << c.says;
    EXPECT_EQ(f.status().code(), c.code) << f.status();
    EXPECT_NE(f.status().message().find(c.says), absl::string_view::npos) << f.status();
  }
  // A frame that stops arriving: the body deadline, not a hang.
  auto f = recv_raw(header(kFrameMagic, 1, 0, 100, 0) + "{", /*close_after=*/false);
  ASSERT_FALSE(f.ok());
  EXPECT_TRUE(absl::IsDeadlineExceeded(f.status())) << f.status();
}

// Every request type up to kLastRequestType is known and named (what the
// fuzzer enumerates); the next one is not. kSetGroup's hp is range-checked.
TEST(DaemonProtocolTest, RequestTypesAndGroupFields) {
  for (uint16_t t = 1; t <= kLastRequestType; ++t) {
    EXPECT_TRUE(is_known_type(t)) << t;
    EXPECT_NE(type_name(static_cast<MsgType>(t)), "unknown") << t;
  }
  EXPECT_FALSE(is_known_type(kLastRequestType + 1));
  EXPECT_EQ(type_name(MsgType::kWriteState), "write_state");
  EXPECT_EQ(type_name(MsgType::kSetGroup), "set_group");
  EXPECT_EQ(type_name(MsgType::kSetOptimizerSteps), "set_optimizer_steps");
  const engine::GroupHyperparams hp{.lr = 0.25, .beta1 = 0.5, .weight_decay = 0.125};
  auto back = group_from_json(group_to_json(hp), "hp");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(group_to_json(*back), group_to_json(hp));
  nlohmann::json bad = group_to_json(hp);
  bad["beta2"] = 1.5;
  auto refused = group_from_json(bad, "field 'hp'");
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("beta2"), absl::string_view::npos) << refused.status();
  EXPECT_FALSE(group_from_json(nlohmann::json::array(), "hp").ok());
}

TEST(DaemonProtocolTest, DeeplyNestedJsonIsRefusedWithoutCrashing) {
  // A hostile 1 MiB body of nested arrays: parsed and destroyed without
  // recursion deep enough to overflow the connection thread's stack.
  const size_t depth = kMaxJsonBytes / 2;
  const std::string deep =
      "{\"a\":" + std::string(depth - 3, '[') + std::string(depth - 3, ']') + "}";
  auto body = parse_body(deep);
  EXPECT_TRUE(body.ok() || absl::IsInvalidArgument(body.status()));
  auto open = parse_body(std::string(kMaxJsonBytes, '['));
  EXPECT_TRUE(absl::IsInvalidArgument(open.status()));
}

TEST(DaemonProtocolTest, FieldsAreRangeChecked) {
  const nlohmann::json j = nlohmann::json::parse(
      R"({"i": 5, "big": 18446744073709551615, "d": 0.5, "s": "abc", "b": true, "n": null})");
  EXPECT_EQ(*get_int(j, "i", 0, 10), 5);
  EXPECT_FALSE(get_int(j, "i", 6, 10).ok());
  EXPECT_FALSE(get_int(j, "big", 0, INT64_MAX).ok());
  EXPECT_FALSE(get_int(j, "d", 0, 10).ok());
  EXPECT_FALSE(get_int(j, "missing", 0, 10).ok());
  EXPECT_EQ(*get_double(j, "d", 0, 1), 0.5);
  EXPECT_FALSE(get_double(j, "d", 0.6, 1).ok());
  EXPECT_FALSE(get_double(j, "n", 0, 1).ok());
  EXPECT_EQ(*get_string(j, "s", 3), "abc");
  EXPECT_FALSE(get_string(j, "s", 2).ok());
  EXPECT_TRUE(*get_bool(j, "b"));
  EXPECT_FALSE(get_bool(j, "i").ok());
  EXPECT_TRUE(check_session_name("run-1.a_b").ok());
  EXPECT_FALSE(check_session_name("").ok());
  EXPECT_FALSE(check_session_name("../x").ok());
  EXPECT_FALSE(check_session_name(".hidden").ok());
  EXPECT_FALSE(check_session_name(std::string(65, 'a')).ok());
}

// A data-parallel rank's session name, and back.
TEST(DaemonProtocolTest, RankSessionNamesRoundTrip) {
  EXPECT_EQ(rank_session_name("job", 0, 1), "job");
  EXPECT_EQ(rank_session_name("job", 3, 4), "job.rank3");
  const auto rs = parse_rank_session_name(rank_session_name("a.rank1", 12, 16));
  ASSERT_TRUE(rs.has_value());
  EXPECT_EQ(rs->job, "a.rank1");
  EXPECT_EQ(rs->rank, 12);
  for (const char* other : {"job", "job.rank", "job.rankx", "job.rank01", ".rank2", "job.rank-1"}) {
    EXPECT_FALSE(parse_rank_session_name(other).has_value()) << other;
  }
}

SessionSpec spec() {
  SessionSpec s;
  s.config_json = R"({"train_micro_batch_size_per_gpu": 1, "optimizer": {"type": "AdamW"}})";
  s.groups = {engine::GroupHyperparams{.lr = 0.01}};
  s.params = {{"a", 10, 0, 0}, {"b", 20, 1, 0}};
  return s;
}

TEST(DaemonProtocolTest, SpecRoundTripAndRangeChecks) {
  const SessionSpec s = spec();
  auto back = spec_from_json(spec_to_json(s));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(describe_mismatch(s, *back), "");
  auto bad = [&](auto edit, const char* says) {
    nlohmann::json j = spec_to_json(s);
    edit(j);
    auto r = spec_from_json(j);
    ASSERT_FALSE(r.ok()) << says;
    EXPECT_NE(r.status().message().find(says), absl::string_view::npos) << r.status();
  };
  bad([](nlohmann::json& j) { j["params"][1]["numel"] = 0; }, "spec.params[1]");
  bad([](nlohmann::json& j) { j["params"][0]["group"] = 3; }, "'group'");
  bad([](nlohmann::json& j) { j["params"][0]["bucket"] = -1; }, "'bucket'");
  bad([](nlohmann::json& j) { j["params"] = nlohmann::json::array(); }, "spec.params");
  bad([](nlohmann::json& j) { j["groups"][0]["beta1"] = 2.0; }, "'beta1'");
  bad([](nlohmann::json& j) { j["speculation"] = "sometimes"; }, "speculation");
  bad([](nlohmann::json& j) { j.erase("config"); }, "'config'");
}

TEST(DaemonProtocolTest, FingerprintAndMismatch) {
  const SessionSpec s = spec();
  auto fp = fingerprint(s);
  ASSERT_TRUE(fp.ok());
  SessionSpec spaced = s;
  spaced.config_json = R"({ "optimizer" : {"type":"AdamW"},  "train_micro_batch_size_per_gpu":1 })";
  EXPECT_EQ(*fingerprint(spaced), *fp) << "spacing and key order do not count";

  SessionSpec layout = s;
  layout.params[1].numel = 21;
  EXPECT_NE(fingerprint(layout)->layout, fp->layout);
  EXPECT_EQ(fingerprint(layout)->optimizer, fp->optimizer);
  EXPECT_NE(describe_mismatch(s, layout).find("param layout differs at param 1"), std::string::npos)
      << describe_mismatch(s, layout);

  SessionSpec dtypes = s;
  dtypes.config_json = R"({"train_micro_batch_size_per_gpu": 1, "optimizer": {"type": "AdamW"},
                          "bf16": {"enabled": true}})";
  EXPECT_NE(fingerprint(dtypes)->dtypes, fp->dtypes);
  EXPECT_EQ(fingerprint(dtypes)->optimizer, fp->optimizer);
  EXPECT_NE(describe_mismatch(s, dtypes).find("dtypes differ"), std::string::npos);

  SessionSpec opt = s;
  opt.groups[0].lr = 0.02;
  EXPECT_NE(fingerprint(opt)->optimizer, fp->optimizer);
  EXPECT_NE(fingerprint(opt)->combined(), fp->combined());
  EXPECT_NE(describe_mismatch(s, opt).find("optimizer config differs in group 0"),
            std::string::npos);
}

TEST(DaemonProtocolTest, ErrorBodyRoundTrip) {
  const absl::Status s = absl::ResourceExhaustedError("only 3 MiB free");
  EXPECT_EQ(status_from_error(error_body(s)), s);
  EXPECT_TRUE(absl::IsInternal(status_from_error({{"code", 99}})));
}

TEST(GradRingTest, PushTakeWrapFullAndHostilePages) {
  GradRingPage ring{};
  uint32_t tail = 0;
  std::vector<int> got;
  auto take = [&](int b) { got.push_back(b); };
  // Around the wrap of the 32-bit counters, several laps of the ring.
  ring.head = ring.tail = tail = 0xFFFFFF00u;
  uint32_t pushed = 0;
  for (int lap = 0; lap < 5; ++lap) {
    for (uint32_t i = 0; i < kRingEntries; ++i) ASSERT_TRUE(ring_push(&ring, (pushed++) % 7));
    EXPECT_FALSE(ring_push(&ring, 1)) << "full";
    ASSERT_TRUE(ring_take(&ring, &tail, 7, take).ok());
  }
  ASSERT_EQ(got.size(), size_t{5} * kRingEntries);
  for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], int(i % 7));
  EXPECT_EQ(ring.tail, tail) << "the tail is published";
  // A bucket out of range, a head too far ahead: refused.
  ASSERT_TRUE(ring_push(&ring, 9));
  EXPECT_TRUE(absl::IsInvalidArgument(ring_take(&ring, &tail, 7, take)));
  ring.head = tail + kRingEntries + 1;
  absl::Status s = ring_take(&ring, &tail, 7, take);
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  EXPECT_NE(s.message().find("overwritten"), absl::string_view::npos);
}

}  // namespace
}  // namespace strata::daemon
