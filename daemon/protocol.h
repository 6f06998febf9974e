// The stratad wire format: the one place that reads and writes it.
//
// A connection to stratad's Unix socket carries frames, each a 16-byte
// header (magic "STRD", message type, flags 0, JSON length, blob length:
// native byte order, both ends are on one host) followed by a JSON object
// (the message's fields) and an optional binary blob (fp32 values). A frame
// may carry one file descriptor (SCM_RIGHTS): the session's arena memfd in
// the attach reply, nothing else. Hard limits: kMaxJsonBytes, kMaxBlobBytes;
// a frame over them, a bad magic, flags, type or JSON, a field missing, of
// the wrong type or out of range is InvalidArgument naming the field, and the
// daemon answers it with kError and closes the connection.
//
// Conversation: the client sends kHello {protocol_version, strata_version,
// pid}; the daemon answers kOk or kError (versions must match). Then kStats
// (no session needed), or kAttach {session, fingerprint, spec} and the
// session's control messages, each answered by kOk (with its result fields)
// or kError {code, message}. See docs/daemon.md for the message table.
//
// Every wait has a deadline: recv_frame waits `idle_timeout_ms` for a frame
// to start (-1: until `stop` is set, checked every 100 ms) and
// `body_timeout_ms` for the rest of it; send_frame gives up after
// `timeout_ms`. Errors: Unavailable (peer closed between frames), DataLoss
// (closed mid-frame), DeadlineExceeded, InvalidArgument (malformed),
// Cancelled (`stop`). Thread-compatible: one thread per socket direction.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/offload_optimizer.h"
#include "nlohmann/json.hpp"

namespace strata::daemon {

inline constexpr uint32_t kProtocolVersion = 1;
inline constexpr uint32_t kFrameMagic = 0x44525453;  // "STRD" in memory on little-endian
inline constexpr uint32_t kMaxJsonBytes = 1u << 20;
inline constexpr uint32_t kMaxBlobBytes = 4u << 20;
inline constexpr size_t kFrameHeaderBytes = 16;

enum class MsgType : uint16_t {
  kHello = 1,
  kAttach = 2,
  kSetValue = 3,   // {param, offset, count} + count fp32 values
  kBeginStep = 4,  // {loss_scale?}
  kGradReady = 5,  // {bucket}
  kWaitGrads = 6,
  kFinishStep = 7,
  kAbortStep = 8,  // {why}
  kReadState = 9,  // {param, kind, offset, count} -> blob of fp32
  kSave = 10,      // {dir, user_meta}
  kLoad = 11,      // {dir, weights_only}
  kDetach = 12,    // {end_session}
  kStats = 13,
  kReportOverflow = 14,  // the client saw an fp16 overflow: no more gradients this step
  kEndSession = 15,      // {session}: end a session no client is attached to
  // Between steps, what the framework sets (torch's load_state_dict, LR
  // schedulers), applied to the session's optimizer as in-process:
  kWriteState = 16,         // {param, kind, offset, count} + count fp32 values, chunks in order
  kSetGroup = 17,           // {group, hp: {lr, beta1, beta2, eps, weight_decay, bias_correction}}
  kSetOptimizerSteps = 18,  // {steps}
  // finish_step in two halves, for the sessions of one data-parallel job
  // (each holding its rank's slices): the clients sum the statistics over
  // their ranks between them (engine::OffloadOptimizer::finish_step_local).
  kFinishLocal = 19,   // -> {sum_squares, nonfinite}
  kFinishGlobal = 20,  // {sum_squares, nonfinite} over every rank -> as kFinishStep
  kOk = 100,
  kError = 101,  // {code, message}
};
// The highest request type: requests are 1..kLastRequestType (the fuzzer
// enumerates them).
inline constexpr uint16_t kLastRequestType = 20;
bool is_known_type(uint16_t type);
absl::string_view type_name(MsgType type);

struct Frame {
  MsgType type = MsgType::kOk;
  nlohmann::json body = nlohmann::json::object();
  std::string blob;
  std::vector<int> fds;  // received descriptors (the caller owns them)
  void close_fds();
};

struct RecvOptions {
  int idle_timeout_ms = -1;
  int body_timeout_ms = 5000;
  const std::atomic<bool>* stop = nullptr;
  size_t max_fds = 0;  // descriptors beyond this are closed and make the frame an error
  // While waiting for a frame to start: when wake_fd (an eventfd) is
  // readable it is drained and on_wake runs; its error ends the wait.
  int wake_fd = -1;
  std::function<absl::Status()> on_wake;
};

absl::Status send_frame(int sock, MsgType type, const nlohmann::json& body,
                        absl::string_view blob = {}, const std::vector<int>& fds = {},
                        int timeout_ms = 5000);
absl::StatusOr<Frame> recv_frame(int sock, const RecvOptions& options);

// Header and body checks, shared by recv_frame and the tests.
absl::Status check_header(const unsigned char* header, uint32_t* json_len, uint32_t* blob_len,
                          MsgType* type);
absl::StatusOr<nlohmann::json> parse_body(absl::string_view text);

// Range-checked field reads: a missing key, a wrong type or a value outside
// [min, max] is InvalidArgument naming the key.
absl::StatusOr<int64_t> get_int(const nlohmann::json& j, absl::string_view key, int64_t min,
                                int64_t max);
absl::StatusOr<double> get_double(const nlohmann::json& j, absl::string_view key, double min,
                                  double max);
absl::StatusOr<bool> get_bool(const nlohmann::json& j, absl::string_view key);
absl::StatusOr<std::string> get_string(const nlohmann::json& j, absl::string_view key,
                                       size_t max_len);
absl::StatusOr<uint64_t> get_u64_hex(const nlohmann::json& j, absl::string_view key);

// kError bodies <-> Status (the code travels as its absl number).
nlohmann::json error_body(const absl::Status& status);
absl::Status status_from_error(const nlohmann::json& body);

// A session: what the client registers, as OffloadOptimizer's add_group /
// add_param would take it, plus the options that change results.
struct ParamSpec {
  std::string name;
  uint64_t numel = 0;
  int bucket = 0;
  int group = 0;
};
struct SessionSpec {
  std::string config_json;  // the ds_config text
  std::vector<engine::GroupHyperparams> groups;
  std::vector<ParamSpec> params;
  bool use_schedule = true;
  engine::SpeculationPolicy speculation = engine::SpeculationPolicy::kAuto;
  bool allow_buffered_io = false;
};
inline constexpr size_t kMaxParams = 1u << 16;
inline constexpr size_t kMaxGroups = 256;
inline constexpr int kMaxBucket = 1 << 16;
inline constexpr uint64_t kMaxNumel = uint64_t{1} << 36;
inline constexpr size_t kMaxNameBytes = 256;

// A group's hyper-parameters (spec.groups[i], kSetGroup's hp); from_json
// range-checks each field, `where` prefixing the error.
nlohmann::json group_to_json(const engine::GroupHyperparams& g);
absl::StatusOr<engine::GroupHyperparams> group_from_json(const nlohmann::json& j,
                                                         const std::string& where);

nlohmann::json spec_to_json(const SessionSpec& spec);
absl::StatusOr<SessionSpec> spec_from_json(const nlohmann::json& j);

// xxh3 of each part of a spec: the param layout (names, sizes, buckets,
// groups), the dtypes (the config's fp16 / bf16 sections) and the optimizer
// config (the rest of the ds_config, the groups, schedule and speculation).
// The ds_config is canonicalised (parsed and dumped with sorted keys) first,
// so spacing and key order do not count.
struct Fingerprint {
  uint64_t layout = 0;
  uint64_t dtypes = 0;
  uint64_t optimizer = 0;
  uint64_t combined() const;
  bool operator==(const Fingerprint&) const = default;
};
absl::StatusOr<Fingerprint> fingerprint(const SessionSpec& spec);
// "" when equal, else what differs, naming the first differing param or group.
std::string describe_mismatch(const SessionSpec& session, const SessionSpec& request);

// Session names: 1-64 of [A-Za-z0-9._-], not starting with '.'.
absl::Status check_session_name(absl::string_view name);
// The session of rank `rank` of a data-parallel job of `world_size` ranks
// whose sessions are called `session`: `session` itself for one rank, else
// "<session>.rank<r>" (each rank's session holds its slice of the model:
// the engine registers the slices, engine/training_engine.h).
std::string rank_session_name(const std::string& session, int rank, int world_size);
// The job and rank of a session so named ("<job>.rank<r>"); nullopt for
// any other name.
struct RankSession {
  std::string job;
  int rank = 0;
};
std::optional<RankSession> parse_rank_session_name(absl::string_view name);

// $XDG_RUNTIME_DIR/strata/stratad.sock, else /run/strata/stratad.sock.
std::string default_socket_path();

// "master" | "exp_avg" | "exp_avg_sq" | "grad_accum".
absl::string_view state_kind_name(engine::StateKind kind);
absl::StatusOr<engine::StateKind> parse_state_kind(absl::string_view name);

}  // namespace strata::daemon
