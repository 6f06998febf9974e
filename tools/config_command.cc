#include "tools/commands.h"
namespace strata::tools {
void add_config_command(CLI::App& app, int* exit_code) {}
}  // namespace strata::tools
