#include "engine/config_validate.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "engine/lr_schedule.h"

namespace strata::engine {

absl::Status validate_for_training(const config::DsConfig& cfg, std::string_view source,
                                   int world_size) {
  const std::string src(source);
  auto refuse = [&](absl::StatusCode code, std::string_view message) {
    return absl::Status(code, absl::StrCat(src, ": ", std::string(message)));
  };
  if (cfg.world_size != world_size) {
    return refuse(
        world_size == 1 ? absl::StatusCode::kUnimplemented : absl::StatusCode::kInvalidArgument,
        absl::StrCat("world size ", cfg.world_size,
                     " from the config's batch sizes (train_batch_size = "
                     "train_micro_batch_size_per_gpu * gradient_accumulation_steps * world "
                     "size) but this run has ",
                     world_size, world_size == 1 ? " rank (no communicator)" : " ranks",
                     "; launch ", cfg.world_size,
                     " ranks or make train_batch_size equal micro * accumulation * ", world_size));
  }
  const config::ZeroConfig& z = cfg.zero;
  if (z.offload_param.device != config::OffloadDevice::kNone &&
      z.offload_optimizer.device == config::OffloadDevice::kNone) {
    return refuse(absl::StatusCode::kUnimplemented,
                  "zero_optimization.offload_param without offload_optimizer: the optimizer "
                  "would run on the device, which strata cannot do yet; set "
                  "offload_optimizer.device to \"cpu\" or \"nvme\"");
  }
  if (z.offload_optimizer.ratio < 1.0) {
    return refuse(
        absl::StatusCode::kUnimplemented,
        absl::StrCat("zero_optimization.offload_optimizer.ratio ", z.offload_optimizer.ratio,
                     ": a partial CPU step is not implemented; set it to 1"));
  }
  // The schedule the engine will build, built once here and dropped.
  absl::StatusOr<std::unique_ptr<LrSchedule>> schedule =
      make_lr_schedule(cfg.scheduler, cfg.optimizer.lr);
  if (!schedule.ok()) {
    // Its messages start with "ds_config: "; name the file instead.
    std::string message(schedule.status().message());
    constexpr std::string_view kPrefix = "ds_config: ";
    if (message.rfind(kPrefix, 0) == 0) message.erase(0, kPrefix.size());
    return refuse(schedule.status().code(), message);
  }
  return absl::OkStatus();
}

}  // namespace strata::engine
