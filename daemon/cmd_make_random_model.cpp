#include <CLI/CLI.hpp>

#include "daemon/commands.h"

namespace diffusiond {
// Placeholder until its issue lands: registers the subcommand so the CLI is complete.
void add_make_random_model_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("make-random-model", "(being built)");
  cmd->callback([] { throw std::runtime_error("'make-random-model' is not built yet"); });
}
}  // namespace diffusiond
