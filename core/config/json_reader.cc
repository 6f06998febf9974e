#include "core/config/json_reader.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace strata::config {
namespace {

using nlohmann::json;

std::string join_path(std::string_view parent, std::string_view key) {
  if (parent.empty()) return std::string(key);
  return absl::StrCat(std::string(parent), ".", std::string(key));
}

// Builds the DOM itself (rather than json::parse) so that a repeated key can
// be caught where it happens, with its key path.
class StrictDomBuilder : public nlohmann::json_sax<json> {
 public:
  explicit StrictDomBuilder(std::string_view kind) : kind_(kind) {}
  json root;
  std::string error;

  bool null() override { return place(json(nullptr)); }
  bool boolean(bool v) override { return place(json(v)); }
  bool number_integer(number_integer_t v) override { return place(json(v)); }
  bool number_unsigned(number_unsigned_t v) override { return place(json(v)); }
  bool number_float(number_float_t v, const string_t&) override { return place(json(v)); }
  bool string(string_t& v) override { return place(json(std::move(v))); }
  bool binary(binary_t& v) override { return place(json::binary(std::move(v))); }

  bool start_object(std::size_t) override { return open(json::object()); }
  bool start_array(std::size_t) override { return open(json::array()); }
  bool end_object() override { return close(); }
  bool end_array() override { return close(); }

  bool key(string_t& k) override {
    Frame& top = stack_.back();
    if (top.value->contains(k)) {
      error = absl::StrCat(join_path(current_path(), k),
                           ": duplicate key (JSON keys must be unique; remove one of them)");
      return false;
    }
    top.pending = &(*top.value)[k];
    top.pending_key = k;
    return true;
  }

  bool parse_error(std::size_t, const std::string&,
                   const nlohmann::detail::exception& ex) override {
    std::string what = ex.what();
    // Drop nlohmann's "[json.exception.parse_error.101] " tag; keep line and column.
    if (auto pos = what.find("] ");
        what.rfind("[json.exception", 0) == 0 && pos != std::string::npos) {
      what = what.substr(pos + 2);
    }
    error = absl::StrCat("not valid JSON: ", what);
    return false;
  }

 private:
  // These files are a few levels deep; the limit keeps hostile input from
  // recursing (dump, destructors) off the end of the stack.
  static constexpr size_t kMaxDepth = 256;

  struct Frame {
    json* value;
    std::string name;         // how the parent names this container: "key" or "[3]"
    json* pending = nullptr;  // the member slot the next value fills (objects)
    std::string pending_key;
  };

  // Built only for messages: per-frame full paths would cost O(depth^2).
  std::string current_path() const {
    std::string path;
    for (size_t i = 1; i < stack_.size(); ++i) {
      const std::string& name = stack_[i].name;
      path = !name.empty() && name[0] == '[' ? absl::StrCat(path, name) : join_path(path, name);
    }
    return path;
  }

  // Stores `v` where the parser is; returns the stored value and how its parent names it.
  json* store(json v, std::string* name) {
    if (stack_.empty()) {
      root = std::move(v);
      return &root;
    }
    Frame& top = stack_.back();
    if (top.value->is_array()) {
      *name = absl::StrCat("[", top.value->size(), "]");
      top.value->push_back(std::move(v));
      return &top.value->back();
    }
    *name = top.pending_key;
    *top.pending = std::move(v);
    return top.pending;
  }
  bool place(json v) {
    std::string name;
    store(std::move(v), &name);
    return true;
  }
  bool open(json container) {
    if (stack_.size() >= kMaxDepth) {
      error = absl::StrCat(current_path().substr(0, 80), "...: nested more than ", kMaxDepth,
                           " levels deep; a ", std::string(kind_), " is a few levels deep");
      return false;
    }
    std::string name;
    json* slot = store(std::move(container), &name);
    stack_.push_back(Frame{slot, std::move(name), nullptr, ""});
    return true;
  }
  bool close() {
    stack_.pop_back();
    return true;
  }

  std::string_view kind_;
  std::vector<Frame> stack_;
};

std::string range_text(int64_t min, int64_t max) {
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  constexpr int64_t kMin = std::numeric_limits<int64_t>::min();
  if (min == kMin && max == kMax) return "an integer";
  if (max == kMax) return absl::StrCat("an integer >= ", min);
  return absl::StrCat("an integer in [", min, ", ", max, "]");
}

std::string range_text(double min, double max) {
  constexpr double kInf = std::numeric_limits<double>::infinity();
  if (min == -kInf && max == kInf) return "a number";
  if (max == kInf) return absl::StrCat("a number >= ", min);
  return absl::StrCat("a number in [", min, ", ", max, "]");
}

}  // namespace

void Diagnostics::warn(std::string_view path, std::string_view message) {
  if (warnings == nullptr) return;
  warnings->push_back(
      path.empty() ? absl::StrCat(source, ": ", std::string(message))
                   : absl::StrCat(source, ": ", std::string(path), ": ", std::string(message)));
}

absl::Status Diagnostics::error(std::string_view path, std::string_view message) const {
  return absl::InvalidArgumentError(
      path.empty() ? absl::StrCat(source, ": ", std::string(message))
                   : absl::StrCat(source, ": ", std::string(path), ": ", std::string(message)));
}

absl::StatusOr<json> parse_json_strict(std::string_view text, std::string_view source,
                                       std::string_view kind) {
  Diagnostics diag{std::string(source)};
  if (std::all_of(text.begin(), text.end(), [](unsigned char c) { return std::isspace(c); })) {
    return diag.error(
        "", kind == "ds_config"
                ? "the file is empty; a ds_config is a JSON object such as "
                  "{\"train_batch_size\": 8}"
                : absl::StrCat("the file is empty; a ", std::string(kind), " is a JSON object"));
  }
  StrictDomBuilder builder(kind);
  bool ok = false;
  try {  // errors arrive through parse_error; this only guards the API from a stray throw
    ok = json::sax_parse(text.begin(), text.end(), &builder, json::input_format_t::json,
                         /*strict=*/true, /*ignore_comments=*/false);
  } catch (const std::exception& e) {
    return diag.error("", absl::StrCat("not valid JSON: ", e.what()));
  }
  if (!ok) return diag.error("", builder.error.empty() ? "not valid JSON" : builder.error);
  return std::move(builder.root);
}

int edit_distance(std::string_view a, std::string_view b) {
  const size_t n = a.size(), m = b.size();
  std::vector<std::vector<int>> d(n + 1, std::vector<int>(m + 1));
  for (size_t i = 0; i <= n; ++i) d[i][0] = static_cast<int>(i);
  for (size_t j = 0; j <= m; ++j) d[0][j] = static_cast<int>(j);
  for (size_t i = 1; i <= n; ++i) {
    for (size_t j = 1; j <= m; ++j) {
      int cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) {
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return d[n][m];
}

std::optional<std::string> closest_key(std::string_view key,
                                       const std::vector<std::string>& candidates) {
  const std::string lower = absl::AsciiStrToLower(std::string(key));
  // Short keys tolerate fewer edits, or everything would look like a typo.
  const int limit = lower.size() <= 4 ? 1 : lower.size() <= 8 ? 2 : 3;
  std::optional<std::string> best;
  int best_distance = limit + 1;
  for (const std::string& c : candidates) {
    const std::string cand = absl::AsciiStrToLower(c);
    int dist = edit_distance(lower, cand);
    // A truncated or extended name ("prefetch_window" for "prefetch_window_bytes") is far in
    // edits but an obvious match; rank it just inside the limit.
    const std::string& shorter = lower.size() < cand.size() ? lower : cand;
    const std::string& longer = lower.size() < cand.size() ? cand : lower;
    if (shorter.size() >= 5 && longer.find(shorter) != std::string::npos) {
      dist = std::min(dist, limit);
    }
    if (dist < best_distance) {
      best_distance = dist;
      best = c;
    }
  }
  return best;
}

std::string describe(const json& value) {
  std::string s = value.dump();
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return s;
}

ObjectReader::ObjectReader(const json& object, std::string path, Diagnostics* diag)
    : object_(&object), path_(std::move(path)), diag_(diag) {}

std::string ObjectReader::key_path(std::string_view key) const { return join_path(path_, key); }

const json* ObjectReader::get(std::string_view key) {
  known_.emplace(key);
  auto it = object_->find(std::string(key));
  if (it == object_->end() || it->is_null()) return nullptr;
  return &*it;
}

bool ObjectReader::has(std::string_view key) { return get(key) != nullptr; }

absl::Status ObjectReader::type_error(std::string_view key, std::string_view expected,
                                      const json& got) const {
  if (got.is_string() && got.get<std::string>() == "auto") {
    return diag_->error(key_path(key),
                        absl::StrCat("\"auto\" is filled in by the Hugging Face Trainer, not by "
                                     "DeepSpeed; write ",
                                     std::string(expected), " here"));
  }
  return diag_->error(key_path(key),
                      absl::StrCat("expected ", std::string(expected), ", got ", describe(got)));
}

absl::Status ObjectReader::read_bool(std::string_view key, bool* out) {
  const json* v = get(key);
  if (v == nullptr) return absl::OkStatus();
  if (!v->is_boolean()) return type_error(key, "true or false", *v);
  *out = v->get<bool>();
  return absl::OkStatus();
}

absl::Status ObjectReader::read_int(std::string_view key, int64_t* out, int64_t min, int64_t max) {
  const json* v = get(key);
  if (v == nullptr) return absl::OkStatus();
  const std::string expected = range_text(min, max);
  int64_t value = 0;
  if (v->is_number_unsigned()) {
    uint64_t u = v->get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return type_error(key, expected, *v);
    }
    value = static_cast<int64_t>(u);
  } else if (v->is_number_integer()) {
    value = v->get<int64_t>();
  } else if (v->is_number_float()) {
    // 2e8 is how DeepSpeed configs write bucket sizes; it is integral, so take it.
    double d = v->get<double>();
    if (!std::isfinite(d) || std::trunc(d) != d || std::fabs(d) >= 9.2e18) {
      return type_error(key, expected, *v);
    }
    value = static_cast<int64_t>(d);
  } else {
    return type_error(key, expected, *v);
  }
  if (value < min || value > max) return type_error(key, expected, *v);
  *out = value;
  return absl::OkStatus();
}

absl::Status ObjectReader::read_int(std::string_view key, int* out, int min, int max) {
  int64_t value = *out;
  if (absl::Status s = read_int(key, &value, min, max); !s.ok()) return s;
  *out = static_cast<int>(value);
  return absl::OkStatus();
}

absl::StatusOr<std::optional<int64_t>> ObjectReader::read_optional_int(std::string_view key,
                                                                       int64_t min, int64_t max) {
  if (!has(key)) return std::optional<int64_t>();
  int64_t value = 0;
  if (absl::Status s = read_int(key, &value, min, max); !s.ok()) return s;
  return std::optional<int64_t>(value);
}

absl::Status ObjectReader::read_double(std::string_view key, double* out, double min, double max) {
  const json* v = get(key);
  if (v == nullptr) return absl::OkStatus();
  const std::string expected = range_text(min, max);
  if (!v->is_number()) return type_error(key, expected, *v);
  double d = v->get<double>();
  if (!(d >= min && d <= max)) return type_error(key, expected, *v);
  *out = d;
  return absl::OkStatus();
}

absl::Status ObjectReader::read_string(std::string_view key, std::string* out) {
  const json* v = get(key);
  if (v == nullptr) return absl::OkStatus();
  if (!v->is_string()) return type_error(key, "a string", *v);
  *out = v->get<std::string>();
  return absl::OkStatus();
}

absl::Status ObjectReader::read_enum(std::string_view key, std::string* out,
                                     std::initializer_list<std::string_view> allowed) {
  const json* v = get(key);
  if (v == nullptr) return absl::OkStatus();
  std::vector<std::string> names(allowed.begin(), allowed.end());
  const std::string expected = absl::StrCat("one of ", absl::StrJoin(names, ", "));
  if (!v->is_string()) return type_error(key, expected, *v);
  std::string s = v->get<std::string>();
  if (std::find(names.begin(), names.end(), s) == names.end()) {
    return diag_->error(key_path(key),
                        absl::StrCat(describe(*v), " is not allowed; use ", expected));
  }
  *out = std::move(s);
  return absl::OkStatus();
}

absl::Status ObjectReader::read_string_list(std::string_view key, std::vector<std::string>* out) {
  const json* v = get(key);
  if (v == nullptr) return absl::OkStatus();
  constexpr std::string_view kExpected = "a directory path or a list of them";
  std::vector<std::string> list;
  if (v->is_string()) {
    // DeepSpeed passes several directories as one comma-separated string.
    const std::string s = v->get<std::string>();
    size_t start = 0;
    for (;;) {
      const size_t comma = s.find(',', start);
      std::string part =
          s.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
      const size_t b = part.find_first_not_of(" \t");
      const size_t e = part.find_last_not_of(" \t");
      list.push_back(b == std::string::npos ? std::string() : part.substr(b, e - b + 1));
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
  } else if (v->is_array() && !v->empty()) {
    for (const json& e : *v) {
      if (!e.is_string()) return type_error(key, kExpected, *v);
      list.push_back(e.get<std::string>());
    }
  } else {
    return type_error(key, kExpected, *v);
  }
  for (const std::string& s : list) {
    if (s.empty()) return diag_->error(key_path(key), "an empty path; give a directory");
  }
  *out = std::move(list);
  return absl::OkStatus();
}

absl::StatusOr<std::optional<ObjectReader>> ObjectReader::child(std::string_view key) {
  const json* v = get(key);
  if (v == nullptr) return std::optional<ObjectReader>();
  if (!v->is_object()) return type_error(key, "a JSON object {...}", *v);
  return std::optional<ObjectReader>(ObjectReader(*v, key_path(key), diag_));
}

void ObjectReader::ignore(std::string_view key, std::string_view why) {
  if (has(key)) diag_->warn(key_path(key), absl::StrCat("ignored: ", std::string(why)));
}

void ObjectReader::finish() {
  std::vector<std::string> candidates(known_.begin(), known_.end());
  for (auto it = object_->begin(); it != object_->end(); ++it) {
    if (known_.count(it.key()) != 0) continue;
    std::string message = "unknown key, ignored";
    if (auto guess = closest_key(it.key(), candidates)) {
      absl::StrAppend(&message, " (did you mean \"", key_path(*guess), "\"?)");
    }
    diag_->warn(key_path(it.key()), message);
  }
}

}  // namespace strata::config
