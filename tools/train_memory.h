// TrainMemoryEstimate: the peak resident memory (RSS) of a `strata train`
// run, predicted from the model shape and the ds_config before anything is
// allocated. `strata plan --device cpu` prints it; `strata train` prints it
// beside the peak it measured at the end, so the prediction stays honest.
//
// Parts: the engine's host arena (engine::plan_placement: host-homed
// tensors plus the NVMe cache), overlap mode's rollback copies, the
// simulated device's memory (--device cpu: the "GPU" is host memory: params
// and grads of every layer, or everything without offload), the CPU model's
// buffers (gpt2_activation_memory_for plus its fp32 copies of one layer's
// 16-bit params and grads), the corpus (4 bytes a token), --async-save's
// snapshot (fp32 master and states plus the compute param) and a fixed
// baseline for the program, its libraries and thread pools.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "core/config/ds_config.h"
#include "model/gpt2_config.h"
#include "nlohmann/json.hpp"

namespace strata::tools {

struct TrainMemoryEstimate {
  uint64_t host_arena = 0;
  uint64_t rollback = 0;
  uint64_t simulated_device = 0;  // 0 on a real GPU
  uint64_t model_buffers = 0;     // 0 on a real GPU (activations live there)
  uint64_t data = 0;
  uint64_t checkpoint_snapshot = 0;  // --async-save
  uint64_t baseline = 0;
  uint64_t total() const {
    return host_arena + rollback + simulated_device + model_buffers + data + checkpoint_snapshot +
           baseline;
  }
  nlohmann::json to_json() const;
  // "host arena 11.6 MiB, rollback 0 B, ..., program 24.0 MiB": the parts.
  std::string describe_parts() const;
};

struct TrainMemoryInputs {
  model::Gpt2Config model;  // vocab_size as trained (256 for bytes)
  config::DsConfig config;
  int64_t seq_len = 0;  // 0: the model's
  bool simulated_device = true;
  bool checkpoint_activations = false;
  int64_t data_tokens = 0;
  bool async_checkpoint = false;
};

// `strata train`'s own: ~12 MiB before the run's first allocation, plus
// OpenBLAS's and oneTBB's per-thread buffers (~12 MiB on 2 cores), measured.
inline constexpr uint64_t kTrainBaselineBytes = uint64_t{24} << 20;

absl::StatusOr<TrainMemoryEstimate> estimate_train_memory(const TrainMemoryInputs& in);

// Peak resident set of this process so far (getrusage), in bytes.
uint64_t peak_rss_bytes();

}  // namespace strata::tools
