// TrainMemoryEstimate: the peak resident memory (RSS) of a training run,
// predicted from the model's parameters and the ds_config before anything
// is allocated. `strata plan --device cpu` prints it; `strata train` prints
// it beside the peak it measured at the end, so the prediction stays honest.
// The model's library adds what only it knows (model::
// estimate_gpt2_train_memory for strata's GPT-2).
//
// Parts: the engine's host arena (plan_placement: host-homed tensors plus
// the NVMe cache), overlap mode's rollback copies, the simulated device's
// memory (a SimDevice's "GPU" is host memory: params and grads of every
// layer, or everything without offload, plus the overflow check's scratch),
// the model's own host buffers (given), the corpus (what it keeps resident), an
// async checkpoint's snapshot (fp32 master and states plus the compute
// param) and a fixed baseline for the program, its libraries and thread
// pools.
//
// Pure; thread-safe. Errors: what plan_placement refuses.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/config/ds_config.h"
#include "engine/model.h"
#include "nlohmann/json.hpp"

namespace strata::engine {

struct TrainMemoryEstimate {
  uint64_t host_arena = 0;
  uint64_t rollback = 0;
  uint64_t simulated_device = 0;  // 0 on a real GPU
  uint64_t model_buffers = 0;     // 0 on a real GPU (activations live there)
  uint64_t data = 0;
  uint64_t checkpoint_snapshot = 0;  // async save
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
  config::DsConfig config;
  std::vector<std::vector<ParamSpec>> layers;  // as Model::layer_params
  // SimDevice (train --device cpu); false: a CUDA GPU (across ranks Gloo
  // then reduces on the host, which holds the compute grads whole).
  bool simulated_device = true;
  uint64_t model_buffer_bytes = 0;  // the model's host buffers on a simulated device
  // What the corpus keeps resident (TextCorpus::resident_bytes): a byte
  // corpus's mapped file, a BPE corpus's 4-byte tokens.
  uint64_t data_bytes = 0;
  bool async_checkpoint = false;
};

// `strata train`'s own: ~12 MiB before the run's first allocation, plus
// OpenBLAS's and oneTBB's per-thread buffers (~12 MiB on 2 cores), measured.
inline constexpr uint64_t kTrainBaselineBytes = uint64_t{24} << 20;

absl::StatusOr<TrainMemoryEstimate> estimate_train_memory(const TrainMemoryInputs& in);

// Peak resident set of this process so far (getrusage), in bytes.
uint64_t peak_rss_bytes();

// Sets the peak back to the current resident set (Linux: "5" into
// /proc/self/clear_refs), so a transient probe run before training (the
// Adam-like stream) is not reported as the run's peak. False where the
// kernel refuses; the peak then still includes it.
bool reset_peak_rss();

}  // namespace strata::engine
