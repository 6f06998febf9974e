// strata: the command-line front end; each command registers itself (tools/commands.h).
#include <cstdio>
#include <exception>
#include <string>

#include "CLI/CLI.hpp"
#include "core/build_info.h"
#include "core/log.h"
#include "tools/cli_util.h"
#include "tools/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"strata: memory-hierarchy offload runtime for training large models"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string(strata::build_info().version));
  std::string log_level;
  app.add_option(
      "--log-level", log_level,
      "trace|debug|info|warn|error|off, or info,swap=debug (default: $STRATA_LOG or info)");

  int exit_code = 0;
  strata::tools::add_report_command(app, &exit_code);
  strata::tools::add_config_command(app, &exit_code);
  strata::tools::add_plan_command(app, &exit_code);
  strata::tools::add_train_command(app, &exit_code);
  strata::tools::add_sample_command(app, &exit_code);
  strata::tools::add_ckpt_command(app, &exit_code);
  strata::tools::add_top_command(app, &exit_code);
  CLI::App* bench = app.add_subcommand("bench", "Measure what this box can do");
  bench->require_subcommand(1);
  strata::tools::add_bench_memory_command(*bench, &exit_code);
  strata::tools::add_bench_cpu_adam_command(*bench, &exit_code);
  strata::tools::add_bench_io_command(*bench, &exit_code);
  strata::tools::add_bench_store_command(*bench, &exit_code);
  strata::tools::add_bench_step_command(*bench, &exit_code);
  strata::tools::add_bench_pcie_command(*bench, &exit_code);
  strata::tools::add_bench_train_command(*bench, &exit_code);

  // Logging is configured before any command callback runs.
  app.parse_complete_callback([&] {
    if (absl::Status s = strata::log::init_logging(log_level); !s.ok()) {
      throw CLI::ValidationError("--log-level", std::string(s.message()));
    }
  });
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return 2;  // usage error
  } catch (const std::exception& e) {
    // A net only: each failure is meant to be a Status where it arises. An
    // exception that gets here is a bug, but it still ends in one line.
    std::fprintf(stderr, "strata: error: internal error: %s\n", e.what());
    return 1;
  } catch (...) {
    std::fprintf(stderr, "strata: error: internal error: an unknown exception\n");
    return 1;
  }
  return exit_code;
}
