// A thin layer over nlohmann-json for reading user-written JSON files.
//
// parse_json_strict parses text into a json value, rejecting duplicate keys
// (nlohmann's own parser silently keeps the last one). ObjectReader reads the
// members of one JSON object by key, checking types and ranges, and knows the
// key path of each, so every error reads
//   "SOURCE: zero_optimization.stage: expected an integer in [0, 3], got 5".
// It records which keys were asked for; finish() turns the rest into
// "unknown key" warnings, with "did you mean" when one of the asked-for keys
// is a few edits away.
//
// Numbers: an integer field accepts 2e8 (integral floating point) but not
// 2.5. JSON null counts as "not given": the getter leaves *out unchanged.
// Threading: none; an ObjectReader is used by one thread. It borrows the
// json object and the Diagnostics, which must outlive it.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace strata::config {

// Where messages go: every error and warning starts with `source`.
struct Diagnostics {
  std::string source;
  std::vector<std::string>* warnings = nullptr;  // may be null: warnings dropped

  void warn(std::string_view path, std::string_view message);
  absl::Status error(std::string_view path, std::string_view message) const;
};

// The one JSON reader for every JSON file strata reads (ds_config, a BPE
// vocab.json, a safetensors header, a checkpoint's meta.json). Parses `text`;
// a syntax error names the line and column, a duplicate key names its key
// path, and nesting deeper than 256 levels is refused (a hostile file cannot
// recurse the parser, dump or destructors off the stack). `kind` names what
// the text should be in messages ("ds_config", "vocab.json"). The caller
// bounds the size of `text` (core/file_util.h read_file). Errors are
// InvalidArgument starting with `source`; never throws.
absl::StatusOr<nlohmann::json> parse_json_strict(std::string_view text, std::string_view source,
                                                 std::string_view kind = "ds_config");

// Optimal-string-alignment edit distance (adjacent swaps cost 1).
int edit_distance(std::string_view a, std::string_view b);

// The closest of `candidates` to `key` when it is close enough to be a likely
// typo (case differences are free); nullopt otherwise.
std::optional<std::string> closest_key(std::string_view key,
                                       const std::vector<std::string>& candidates);

// A compact rendering of a value for messages (long values are cut).
std::string describe(const nlohmann::json& value);

class ObjectReader {
 public:
  // `object` must be a JSON object; `path` is its key path ("" at top level).
  ObjectReader(const nlohmann::json& object, std::string path, Diagnostics* diag);

  const std::string& path() const { return path_; }
  std::string key_path(std::string_view key) const;

  // True when `key` is present and not null. Marks it known.
  bool has(std::string_view key);

  // Each reads `key` into *out when present and not null; absent or null
  // leaves *out unchanged. A wrong type or a value out of [min, max] is an
  // error naming the key path and the value.
  absl::Status read_bool(std::string_view key, bool* out);
  absl::Status read_int(std::string_view key, int64_t* out, int64_t min, int64_t max);
  absl::Status read_int(std::string_view key, int* out, int min, int max);
  absl::Status read_double(std::string_view key, double* out, double min, double max);
  absl::Status read_string(std::string_view key, std::string* out);
  // One of `allowed` (exact match); the error lists them.
  absl::Status read_enum(std::string_view key, std::string* out,
                         std::initializer_list<std::string_view> allowed);
  // A string or an array of non-empty strings.
  absl::Status read_string_list(std::string_view key, std::vector<std::string>* out);
  // Optional-returning forms for values whose presence matters.
  absl::StatusOr<std::optional<int64_t>> read_optional_int(std::string_view key, int64_t min,
                                                           int64_t max);

  // The value of `key` when present and not null, else nullptr. Marks it known.
  const nlohmann::json* get(std::string_view key);
  // A nested object reader; nullopt when absent or null; an error when the
  // value is not an object.
  absl::StatusOr<std::optional<ObjectReader>> child(std::string_view key);

  // `key` is known but has no effect in strata: warn when present.
  void ignore(std::string_view key, std::string_view why);

  // Warns about every key that no getter asked for.
  void finish();

 private:
  absl::Status type_error(std::string_view key, std::string_view expected,
                          const nlohmann::json& got) const;

  const nlohmann::json* object_;
  std::string path_;
  Diagnostics* diag_;
  std::set<std::string, std::less<>> known_;
};

}  // namespace strata::config
