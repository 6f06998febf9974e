// The `strata` subcommands. Each add_* registers one command (and its
// flags) on the parent app; when the command runs, its exit code is stored in
// *exit_code: 0 success, 1 runtime failure (one line on stderr), 2 usage.
#pragma once

#include "CLI/CLI.hpp"

namespace strata::tools {

void add_report_command(CLI::App& app, int* exit_code);
void add_config_command(CLI::App& app, int* exit_code);
void add_plan_command(CLI::App& app, int* exit_code);
void add_train_command(CLI::App& app, int* exit_code);
void add_sample_command(CLI::App& app, int* exit_code);
void add_ckpt_command(CLI::App& app, int* exit_code);  // ckpt info / ckpt export
void add_top_command(CLI::App& app, int* exit_code);   // stratad's sessions
void add_bench_memory_command(CLI::App& bench, int* exit_code);
void add_bench_cpu_adam_command(CLI::App& bench, int* exit_code);
void add_bench_io_command(CLI::App& bench, int* exit_code);
void add_bench_store_command(CLI::App& bench, int* exit_code);
void add_bench_step_command(CLI::App& bench, int* exit_code);
void add_bench_pcie_command(CLI::App& bench, int* exit_code);
void add_bench_train_command(CLI::App& bench, int* exit_code);

}  // namespace strata::tools
