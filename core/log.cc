#include "core/log.h"

#include <cstdlib>
#include <map>
#include <mutex>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "spdlog/sinks/stdout_color_sinks.h"

namespace strata::log {
namespace {

struct Levels {
  std::mutex mu;
  spdlog::level::level_enum fallback = spdlog::level::info;
  std::map<std::string, spdlog::level::level_enum, std::less<>> per_subsystem;
  std::shared_ptr<spdlog::sinks::sink> sink;
};

Levels& levels() {
  static Levels* l = [] {
    auto* l = new Levels;
    l->sink = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
    return l;
  }();
  return *l;
}

absl::StatusOr<spdlog::level::level_enum> parse_level(std::string_view s) {
  for (int i = 0; i < spdlog::level::n_levels; ++i) {
    auto lvl = static_cast<spdlog::level::level_enum>(i);
    auto name = spdlog::level::to_string_view(lvl);
    if (std::string_view(name.data(), name.size()) == s) return lvl;
  }
  if (s == "warn") return spdlog::level::warn;
  return absl::InvalidArgumentError(absl::StrCat("unknown log level \"", std::string(s),
                                                 "\"; use trace, debug, info, warn, error or off"));
}

}  // namespace

absl::Status init_logging(std::string_view spec) {
  std::string text(spec);
  if (text.empty()) {
    const char* env = std::getenv("STRATA_LOG");
    text = env != nullptr ? env : "info";
  }
  Levels& l = levels();
  std::lock_guard lock(l.mu);
  std::string_view rest = text;
  while (!rest.empty()) {
    size_t comma = rest.find(',');
    std::string_view part = rest.substr(0, comma);
    rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(comma + 1);
    if (part.empty()) continue;
    size_t eq = part.find('=');
    auto lvl = parse_level(eq == std::string_view::npos ? part : part.substr(eq + 1));
    if (!lvl.ok()) return lvl.status();
    if (eq == std::string_view::npos) {
      l.fallback = *lvl;
    } else {
      l.per_subsystem[std::string(part.substr(0, eq))] = *lvl;
    }
  }
  spdlog::apply_all([&](const std::shared_ptr<spdlog::logger>& logger) {
    auto it = l.per_subsystem.find(logger->name());
    logger->set_level(it != l.per_subsystem.end() ? it->second : l.fallback);
  });
  return absl::OkStatus();
}

std::shared_ptr<spdlog::logger> get(std::string_view subsystem) {
  std::string name(subsystem);
  if (auto existing = spdlog::get(name)) return existing;
  Levels& l = levels();
  std::lock_guard lock(l.mu);
  if (auto existing = spdlog::get(name)) return existing;
  auto logger = std::make_shared<spdlog::logger>(name, l.sink);
  logger->set_pattern("[%H:%M:%S.%e] [%n] %^%l%$: %v");
  auto it = l.per_subsystem.find(name);
  logger->set_level(it != l.per_subsystem.end() ? it->second : l.fallback);
  spdlog::register_logger(logger);
  return logger;
}

}  // namespace strata::log
