#include <CLI/CLI.hpp>

#include "daemon/commands.h"

namespace diffusiond {
// Placeholder until its issue lands: registers the subcommand so the CLI is complete.
void add_generate_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("generate", "(being built)");
  cmd->callback([] { throw std::runtime_error("'generate' is not built yet"); });
}
}  // namespace diffusiond
