// validate_for_training: every check the training engine makes on a
// ds_config by itself (no model, device or files needed), so that
// `strata config check` and `strata train` refuse the same configs, and a
// config that passes the check does not fail when training starts.
//
// What it adds to parse_ds_config (core/config, which checks each key and
// DeepSpeed's rules across keys): what this engine does not run (a world
// size other than the run's `world_size`, its ranks: 1 without a
// communicator, offload_param without offload_optimizer, a partial CPU step
// (offload_optimizer.ratio below 1)) and the scheduler's parameters, read by the
// same code the engine uses (engine/lr_schedule.h make_lr_schedule).
// Checks that need the machine (NVMe directories writable, memory budgets)
// stay where the engine is built.
//
// Errors: InvalidArgument or Unimplemented, one line starting with `source`
// (the config's file name) and naming the key path and what to change.
// Pure function; any thread.
//
//   STRATA_ASSIGN_OR_RETURN(config::DsConfig cfg, config::load_ds_config(path, &warnings));
//   STRATA_RETURN_IF_ERROR(engine::validate_for_training(cfg, path));
#pragma once

#include <string_view>

#include "absl/status/status.h"
#include "core/config/ds_config.h"

namespace strata::engine {

absl::Status validate_for_training(const config::DsConfig& cfg, std::string_view source,
                                   int world_size = 1);

}  // namespace strata::engine
