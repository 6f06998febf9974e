#include "engine/train_memory.h"

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "core/format_bytes.h"
#include "core/status.h"
#include "engine/placement.h"

namespace strata::engine {

nlohmann::json TrainMemoryEstimate::to_json() const {
  return {{"host_arena", host_arena},
          {"rollback", rollback},
          {"simulated_device", simulated_device},
          {"model_buffers", model_buffers},
          {"data", data},
          {"checkpoint_snapshot", checkpoint_snapshot},
          {"baseline", baseline},
          {"total", total()}};
}

std::string TrainMemoryEstimate::describe_parts() const {
  auto b = [](uint64_t v) { return format_bytes(static_cast<double>(v)); };
  return absl::StrCat("host arena ", b(host_arena), ", rollback ", b(rollback),
                      ", simulated device ", b(simulated_device), ", model buffers ",
                      b(model_buffers), ", data ", b(data), ", checkpoint snapshot ",
                      b(checkpoint_snapshot), ", program ", b(baseline));
}

absl::StatusOr<TrainMemoryEstimate> estimate_train_memory(const TrainMemoryInputs& in) {
  // Across ranks a SimDevice's memory is host memory, which Gloo reduces and
  // gathers on (PlacementOptions::reduce_on_device); beside a CUDA device
  // Gloo works on the host.
  STRATA_ASSIGN_OR_RETURN(
      const Placement p,
      plan_placement(in.config, in.layers, {.reduce_on_device = in.simulated_device}));
  TrainMemoryEstimate e;
  if (p.offload) e.host_arena = p.host_homed + p.host_cache;
  e.rollback = p.rollback;
  if (in.simulated_device) {
    e.simulated_device = (p.offload ? p.device_working_set : p.device_homed) + p.device_scratch;
    e.model_buffers = in.model_buffer_bytes;
  }
  e.data = in.data_bytes;
  if (in.async_checkpoint) {
    for (const auto& layer : in.layers) {
      for (const ParamSpec& s : layer)
        e.checkpoint_snapshot += s.numel * (12 + dtype_size(p.dtype));
    }
  }
  e.baseline = kTrainBaselineBytes;
  return e;
}

bool reset_peak_rss() {
  const int fd = ::open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  const bool ok = ::write(fd, "5", 1) == 1;
  ::close(fd);
  return ok;
}

uint64_t peak_rss_bytes() {
  rusage ru{};
  if (::getrusage(RUSAGE_SELF, &ru) != 0) return 0;
  return static_cast<uint64_t>(ru.ru_maxrss) * 1024;  // kilobytes on Linux
}

}  // namespace strata::engine
