// strata config check FILE [--world-size N] [--json]: validate a DeepSpeed
// ds_config (every check `strata train` makes on the file alone, for a job
// of N data-parallel ranks: train_batch_size = micro x accumulation x N) and
// print it resolved (defaults filled in). Warnings go to stderr in both modes; with
// --json stdout holds one object {file, valid, warnings, summary, config}.
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/config/ds_config.h"
#include "engine/config_validate.h"
#include "tools/cli_util.h"
#include "tools/commands.h"

namespace strata::tools {
namespace {

std::string summary(const config::DsConfig& c) {
  std::string precision = c.fp16.enabled   ? (c.fp16.loss_scale == 0 ? "fp16 (dynamic loss scale)"
                                                                     : "fp16 (static loss scale)")
                          : c.bf16.enabled ? "bf16"
                                           : "fp32";
  std::string offload = absl::StrCat(
      "optimizer on ", std::string(config::to_string(c.zero.offload_optimizer.device)));
  if (c.zero.offload_optimizer.device == config::OffloadDevice::kNone)
    offload = "no optimizer offload";
  if (c.zero.offload_param.device != config::OffloadDevice::kNone) {
    absl::StrAppend(&offload, ", params on ",
                    std::string(config::to_string(c.zero.offload_param.device)));
  }
  return absl::StrCat("ZeRO stage ", c.zero.stage, ", ", precision, ", ", offload, ", batch ",
                      c.train_batch_size, " = micro ", c.train_micro_batch_size_per_gpu,
                      " x accumulation ", c.gradient_accumulation_steps, " x world ", c.world_size,
                      ", optimizer ", std::string(config::to_string(c.optimizer.type)));
}

int run_check(const std::string& file, int world_size, bool json) {
  std::vector<std::string> warnings;
  absl::StatusOr<config::DsConfig> cfg = config::load_ds_config(file, &warnings, world_size);
  for (const std::string& w : warnings) std::fprintf(stderr, "strata: warning: %s\n", w.c_str());
  if (!cfg.ok()) return report_status(cfg.status());
  // What `strata train` refuses, refused here too.
  if (absl::Status s = engine::validate_for_training(*cfg, file, world_size); !s.ok()) {
    return report_status(s);
  }
  if (json) {
    print_json({{"file", file},
                {"valid", true},
                {"warnings", warnings},
                {"summary", summary(*cfg)},
                {"config", config::to_json(*cfg)}});
  } else {
    std::fprintf(stderr, "%s: ok: %s\n", file.c_str(), summary(*cfg).c_str());
    print_json(config::to_json(*cfg));
  }
  return 0;
}

}  // namespace

void add_config_command(CLI::App& app, int* exit_code) {
  auto* cmd = app.add_subcommand("config", "DeepSpeed ds_config files");
  cmd->require_subcommand(1);
  auto* check = cmd->add_subcommand(
      "check", "Validate a ds_config JSON and print it resolved, defaults filled in");
  auto file = std::make_shared<std::string>();
  auto json = std::make_shared<bool>(false);
  auto world = std::make_shared<int>(1);
  check->add_option("FILE", *file, "the ds_config JSON file")->required();
  check
      ->add_option("--world-size", *world,
                   "data-parallel ranks the batch sizes are resolved for, as strata train "
                   "--nproc N runs them (1)")
      ->check(whole_number(1, 1 << 20));
  check->add_flag("--json", *json, "print one JSON object on stdout");
  check->callback([=] { *exit_code = run_check(*file, *world, *json); });
}

}  // namespace strata::tools
