#include "engine/lr_schedule.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numbers>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/config/json_reader.h"
#include "core/status.h"

namespace strata::engine {
namespace {

using config::SchedulerType;

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr int64_t kMaxSteps = std::numeric_limits<int64_t>::max();

// Shared by every schedule: DeepSpeed's last_batch_iteration counter.
class CountingSchedule : public LrSchedule {
 public:
  void advance() override { ++iteration_; }
  int64_t iteration() const override { return iteration_; }
  void set_iteration(int64_t iteration) override {
    STRATA_CHECK(iteration >= -1);
    iteration_ = iteration;
  }

 protected:
  int64_t iteration_ = -1;
};

class ConstantSchedule final : public CountingSchedule {
 public:
  explicit ConstantSchedule(double lr) : lr_(lr) {}
  double lr() const override { return lr_; }

 private:
  double lr_;
};

// The warm-up fraction in [0, 1) of WarmupLR / WarmupDecayLR / WarmupCosineLR
// at `it` < warmup_steps (warmup_steps >= 2, so log() is never 0).
double warmup_gamma(bool log_warmup, int64_t warmup_steps, int64_t it) {
  if (log_warmup) {
    return (1.0 / std::log(static_cast<double>(warmup_steps))) *
           std::log(static_cast<double>(it + 1));
  }
  return static_cast<double>(it) / static_cast<double>(warmup_steps);
}

// WarmupLR, and WarmupDecayLR when total_steps is set.
class WarmupSchedule final : public CountingSchedule {
 public:
  WarmupSchedule(double min_lr, double max_lr, int64_t warmup_steps, bool log_warmup,
                 std::optional<int64_t> total_steps)
      : min_lr_(min_lr),
        delta_(max_lr - min_lr),
        warmup_steps_(std::max<int64_t>(2, warmup_steps)),
        log_warmup_(log_warmup),
        total_steps_(total_steps) {}

  double lr() const override {
    if (iteration_ < 0) return min_lr_;
    return min_lr_ + delta_ * gamma();
  }

 private:
  double gamma() const {
    if (iteration_ < warmup_steps_) return warmup_gamma(log_warmup_, warmup_steps_, iteration_);
    if (!total_steps_) return 1.0;
    const double remaining = static_cast<double>(*total_steps_ - iteration_);
    const double span = std::max(1.0, static_cast<double>(*total_steps_ - warmup_steps_));
    return std::max(0.0, remaining / span);
  }

  double min_lr_;
  double delta_;
  int64_t warmup_steps_;
  bool log_warmup_;
  std::optional<int64_t> total_steps_;
};

class WarmupCosineSchedule final : public CountingSchedule {
 public:
  WarmupCosineSchedule(double base_lr, int64_t total_steps, double warmup_min_ratio,
                       int64_t warmup_steps, double cos_min_ratio, bool log_warmup)
      : base_lr_(base_lr),
        total_steps_(total_steps),
        warmup_min_ratio_(warmup_min_ratio),
        warmup_steps_(std::max<int64_t>(2, warmup_steps)),
        cos_min_ratio_(cos_min_ratio),
        log_warmup_(log_warmup) {}

  double lr() const override { return base_lr_ * ratio(); }

 private:
  double ratio() const {
    // DeepSpeed: 0 before the first step(), not warmup_min_ratio.
    if (iteration_ < 0) return 0.0;
    if (iteration_ < warmup_steps_) {
      const double r = warmup_gamma(log_warmup_, warmup_steps_, iteration_);
      return warmup_min_ratio_ + r * (1.0 - warmup_min_ratio_);
    }
    const double done = static_cast<double>(iteration_ - warmup_steps_ + 1);
    const double span = static_cast<double>(std::max<int64_t>(1, total_steps_ - warmup_steps_));
    const double progress = std::min(1.0, done / span);
    const double cosine = (1 + std::cos(std::numbers::pi * progress)) / 2;
    return std::max(0.0, cos_min_ratio_ + (1.0 - cos_min_ratio_) * cosine);
  }

  double base_lr_;
  int64_t total_steps_;
  double warmup_min_ratio_;
  int64_t warmup_steps_;
  double cos_min_ratio_;
  bool log_warmup_;
};

struct OneCycleParams {
  double min_lr = 0;
  double max_lr = 0;
  double decay_lr_rate = 0;
  double first_step_size = 2000;
  std::optional<double> second_step_size;  // absent: first_step_size
  int64_t first_stair_count = 0;
  std::optional<int64_t> second_stair_count;  // absent: first_stair_count
  double decay_step_size = 0;
  bool cycle_momentum = true;
  double min_mom = 0.8;
  double max_mom = 0.9;
  double decay_mom_rate = 0;
};

class OneCycleSchedule final : public CountingSchedule {
 public:
  explicit OneCycleSchedule(const OneCycleParams& p)
      : p_(p),
        second_(p.second_step_size.value_or(p.first_step_size)),
        total_(p.first_step_size + second_),
        step_ratio_(p.first_step_size / total_),
        second_stairs_(p.second_stair_count.value_or(p.first_stair_count)),
        // DeepSpeed decays only when both the step size and the rate are nonzero.
        decay_lr_(p.decay_step_size != 0 && p.decay_lr_rate != 0),
        decay_mom_(p.decay_step_size != 0 && p.decay_mom_rate != 0) {}

  double lr() const override {
    if (in_cycle()) return p_.min_lr + (p_.max_lr - p_.min_lr) * scale_factor();
    if (!decay_lr_) return p_.min_lr;
    return p_.min_lr / (1 + p_.decay_lr_rate * decay_interval());
  }

  std::optional<std::array<double, 2>> betas() const override {
    // beta2 is pinned to 0.99 by DeepSpeed's OneCycle whatever the optimizer had.
    constexpr double kBeta2 = 0.99;
    if (!p_.cycle_momentum) return std::nullopt;
    // DeepSpeed's constructor sets cycle_min_mom, not the cycle formula's value.
    if (iteration_ < 0) return std::array{p_.min_mom, kBeta2};
    if (in_cycle())
      return std::array{p_.max_mom - (p_.max_mom - p_.min_mom) * scale_factor(), kBeta2};
    if (!decay_mom_) return std::array{p_.max_mom, kBeta2};
    return std::array{p_.max_mom * (1 + p_.decay_mom_rate * decay_interval()), kBeta2};
  }

 private:
  bool in_cycle() const { return static_cast<double>(iteration_) < total_; }

  double decay_interval() const {
    return (static_cast<double>(iteration_) - total_ + 1) / p_.decay_step_size;
  }

  // Position in the cycle: 0 at cycle_min_lr, 1 at cycle_max_lr.
  double scale_factor() const {
    const double b = static_cast<double>(iteration_ + 1);
    const double cycle = std::floor(1 + b / total_);
    const double x = 1. + b / total_ - cycle;
    double scale;
    int64_t stairs;
    if (x <= step_ratio_) {
      scale = x / step_ratio_;
      stairs = p_.first_stair_count;
    } else {
      scale = (x - 1) / (step_ratio_ - 1);
      stairs = second_stairs_;
    }
    if (stairs > 0) {
      const double in_cycle = std::fmod(b, total_);
      const double position = in_cycle <= p_.first_step_size
                                  ? in_cycle * static_cast<double>(stairs) / p_.first_step_size
                                  : (total_ - in_cycle) * static_cast<double>(stairs) / second_;
      scale = std::floor(position) / static_cast<double>(stairs);
    }
    return scale;
  }

  OneCycleParams p_;
  double second_;
  double total_;
  double step_ratio_;
  int64_t second_stairs_;
  bool decay_lr_;
  bool decay_mom_;
};

class RangeTestSchedule final : public CountingSchedule {
 public:
  RangeTestSchedule(double min_lr, int64_t step_size, double step_rate, bool staircase)
      : min_lr_(min_lr), step_size_(step_size), step_rate_(step_rate), staircase_(staircase) {}

  double lr() const override {
    double interval = static_cast<double>(iteration_ + 1) / static_cast<double>(step_size_);
    if (staircase_) interval = std::floor(interval);
    return min_lr_ * (1 + step_rate_ * interval);
  }

 private:
  double min_lr_;
  int64_t step_size_;
  double step_rate_;
  bool staircase_;
};

// Reads one scheduler's params; every error names "scheduler.params.KEY".
class ParamReader {
 public:
  ParamReader(const nlohmann::json& params, SchedulerType type)
      : diag_{"ds_config"},
        reader_(params, "scheduler.params", &diag_),
        params_(params),
        type_(type) {}

  config::ObjectReader& r() { return reader_; }

  absl::Status require(std::string_view key, std::string_view why) {
    if (reader_.has(key)) return absl::OkStatus();
    return diag_.error(reader_.key_path(key),
                       absl::StrCat("missing; ", std::string(config::to_string(type_)),
                                    " needs it (", std::string(why), ")"));
  }

  absl::Status error(std::string_view key, std::string_view message) const {
    return diag_.error(reader_.key_path(key), message);
  }

  absl::Status read_warmup_type(bool* log_warmup) {
    std::string type = "log";
    STRATA_RETURN_IF_ERROR(reader_.read_enum("warmup_type", &type, {"log", "linear"}));
    *log_warmup = type == "log";
    return absl::OkStatus();
  }

  // DeepSpeed passes params as keyword arguments, so it rejects unknown keys
  // (TypeError); so does strata, with a "did you mean".
  absl::Status reject_unknown(const std::vector<std::string>& allowed) {
    for (auto it = params_.begin(); it != params_.end(); ++it) {
      if (std::find(allowed.begin(), allowed.end(), it.key()) != allowed.end()) continue;
      std::string message =
          absl::StrCat("not a parameter of ", std::string(config::to_string(type_)), " (it takes ",
                       absl::StrJoin(allowed, ", "), ")");
      if (it.key() == "last_batch_iteration") {
        absl::StrAppend(&message, "; resume from a checkpoint instead");
      } else if (auto guess = config::closest_key(it.key(), allowed)) {
        absl::StrAppend(&message, "; did you mean \"", reader_.key_path(*guess), "\"?");
      }
      return diag_.error(reader_.key_path(it.key()), message);
    }
    return absl::OkStatus();
  }

 private:
  config::Diagnostics diag_;
  config::ObjectReader reader_;
  const nlohmann::json& params_;
  SchedulerType type_;
};

absl::StatusOr<std::unique_ptr<LrSchedule>> make_warmup(ParamReader& pr, bool decay,
                                                        double optimizer_lr) {
  auto& r = pr.r();
  // WarmupLR's warmup_max_lr defaults to the optimizer's lr; WarmupDecayLR's to 0.001.
  double min_lr = 0, max_lr = decay ? 0.001 : optimizer_lr;
  int64_t warmup_steps = 1000;
  bool log_warmup = true;
  std::optional<int64_t> total_steps;
  if (decay) {
    STRATA_RETURN_IF_ERROR(pr.require("total_num_steps", "the step at which the lr reaches 0"));
    STRATA_ASSIGN_OR_RETURN(total_steps, r.read_optional_int("total_num_steps", 1, kMaxSteps));
  }
  STRATA_RETURN_IF_ERROR(r.read_double("warmup_min_lr", &min_lr, 0, kInf));
  STRATA_RETURN_IF_ERROR(r.read_double("warmup_max_lr", &max_lr, 0, kInf));
  STRATA_RETURN_IF_ERROR(r.read_int("warmup_num_steps", &warmup_steps, 1, kMaxSteps));
  STRATA_RETURN_IF_ERROR(pr.read_warmup_type(&log_warmup));
  std::vector<std::string> allowed = {"warmup_min_lr", "warmup_max_lr", "warmup_num_steps",
                                      "warmup_type"};
  if (decay) allowed.insert(allowed.begin(), "total_num_steps");
  STRATA_RETURN_IF_ERROR(pr.reject_unknown(allowed));
  return std::make_unique<WarmupSchedule>(min_lr, max_lr, warmup_steps, log_warmup, total_steps);
}

absl::StatusOr<std::unique_ptr<LrSchedule>> make_cosine(ParamReader& pr, double optimizer_lr) {
  auto& r = pr.r();
  double warmup_min_ratio = 0, cos_min_ratio = 1e-4;
  int64_t warmup_steps = 1000, total_steps = 0;
  bool log_warmup = true;
  STRATA_RETURN_IF_ERROR(pr.require("total_num_steps", "the step at which the cosine ends"));
  STRATA_RETURN_IF_ERROR(r.read_int("total_num_steps", &total_steps, 1, kMaxSteps));
  STRATA_RETURN_IF_ERROR(r.read_double("warmup_min_ratio", &warmup_min_ratio, 0, 1));
  STRATA_RETURN_IF_ERROR(r.read_int("warmup_num_steps", &warmup_steps, 1, kMaxSteps));
  STRATA_RETURN_IF_ERROR(r.read_double("cos_min_ratio", &cos_min_ratio, 0, 1));
  STRATA_RETURN_IF_ERROR(pr.read_warmup_type(&log_warmup));
  STRATA_RETURN_IF_ERROR(pr.reject_unknown(
      {"total_num_steps", "warmup_min_ratio", "warmup_num_steps", "cos_min_ratio", "warmup_type"}));
  return std::make_unique<WarmupCosineSchedule>(optimizer_lr, total_steps, warmup_min_ratio,
                                                warmup_steps, cos_min_ratio, log_warmup);
}

absl::StatusOr<std::unique_ptr<LrSchedule>> make_one_cycle(ParamReader& pr) {
  auto& r = pr.r();
  OneCycleParams p;
  STRATA_RETURN_IF_ERROR(pr.require("cycle_min_lr", "the lr at both ends of the cycle"));
  STRATA_RETURN_IF_ERROR(pr.require("cycle_max_lr", "the lr at the top of the cycle"));
  STRATA_RETURN_IF_ERROR(r.read_double("cycle_min_lr", &p.min_lr, 0, kInf));
  STRATA_RETURN_IF_ERROR(r.read_double("cycle_max_lr", &p.max_lr, 0, kInf));
  STRATA_RETURN_IF_ERROR(r.read_double("decay_lr_rate", &p.decay_lr_rate, 0, kInf));
  STRATA_RETURN_IF_ERROR(r.read_double("cycle_first_step_size", &p.first_step_size, 0, kInf));
  if (p.first_step_size == 0) {
    return pr.error("cycle_first_step_size",
                    "must be > 0 (steps from cycle_min_lr up to cycle_max_lr)");
  }
  double second = 0;
  if (r.has("cycle_second_step_size")) {
    STRATA_RETURN_IF_ERROR(r.read_double("cycle_second_step_size", &second, 0, kInf));
    p.second_step_size = second;
  }
  STRATA_RETURN_IF_ERROR(r.read_int("cycle_first_stair_count", &p.first_stair_count, 0, kMaxSteps));
  STRATA_ASSIGN_OR_RETURN(p.second_stair_count,
                          r.read_optional_int("cycle_second_stair_count", 0, kMaxSteps));
  STRATA_RETURN_IF_ERROR(r.read_double("decay_step_size", &p.decay_step_size, 0, kInf));
  STRATA_RETURN_IF_ERROR(r.read_bool("cycle_momentum", &p.cycle_momentum));
  STRATA_RETURN_IF_ERROR(r.read_double("cycle_min_mom", &p.min_mom, 0, 1));
  STRATA_RETURN_IF_ERROR(r.read_double("cycle_max_mom", &p.max_mom, 0, 1));
  STRATA_RETURN_IF_ERROR(r.read_double("decay_mom_rate", &p.decay_mom_rate, 0, kInf));
  STRATA_RETURN_IF_ERROR(pr.reject_unknown(
      {"cycle_min_lr", "cycle_max_lr", "decay_lr_rate", "cycle_first_step_size",
       "cycle_second_step_size", "cycle_first_stair_count", "cycle_second_stair_count",
       "decay_step_size", "cycle_momentum", "cycle_min_mom", "cycle_max_mom", "decay_mom_rate"}));
  return std::make_unique<OneCycleSchedule>(p);
}

absl::StatusOr<std::unique_ptr<LrSchedule>> make_range_test(ParamReader& pr) {
  auto& r = pr.r();
  double min_lr = 1e-3, step_rate = 1.0;
  int64_t step_size = 2000;
  bool staircase = false;
  STRATA_RETURN_IF_ERROR(r.read_double("lr_range_test_min_lr", &min_lr, 0, kInf));
  STRATA_RETURN_IF_ERROR(r.read_int("lr_range_test_step_size", &step_size, 1, kMaxSteps));
  STRATA_RETURN_IF_ERROR(r.read_double("lr_range_test_step_rate", &step_rate, 0, kInf));
  STRATA_RETURN_IF_ERROR(r.read_bool("lr_range_test_staircase", &staircase));
  STRATA_RETURN_IF_ERROR(pr.reject_unknown({"lr_range_test_min_lr", "lr_range_test_step_size",
                                            "lr_range_test_step_rate", "lr_range_test_staircase"}));
  return std::make_unique<RangeTestSchedule>(min_lr, step_size, step_rate, staircase);
}

}  // namespace

absl::StatusOr<std::unique_ptr<LrSchedule>> make_lr_schedule(const config::SchedulerConfig& config,
                                                             double optimizer_lr) {
  if (config.type == SchedulerType::kNone) return std::make_unique<ConstantSchedule>(optimizer_lr);
  if (!config.params.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ds_config: scheduler.params: expected an object, got ", config::describe(config.params)));
  }
  ParamReader pr(config.params, config.type);
  switch (config.type) {
    case SchedulerType::kWarmupLR:
      return make_warmup(pr, /*decay=*/false, optimizer_lr);
    case SchedulerType::kWarmupDecayLR:
      return make_warmup(pr, /*decay=*/true, optimizer_lr);
    case SchedulerType::kWarmupCosineLR:
      return make_cosine(pr, optimizer_lr);
    case SchedulerType::kOneCycle:
      return make_one_cycle(pr);
    case SchedulerType::kLRRangeTest:
      return make_range_test(pr);
    case SchedulerType::kNone:
      break;
  }
  return std::make_unique<ConstantSchedule>(optimizer_lr);
}

}  // namespace strata::engine
