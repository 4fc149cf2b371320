// Subcommands of the diffusiond executable. Each add_*_command registers itself on the CLI11 app
// and runs when selected. Thread-safety: called once from main().
#pragma once

namespace CLI {
class App;
}

namespace diffusiond {
void add_tokenize_command(CLI::App& app);           // daemon/cmd_tokenize.cpp
void add_generate_command(CLI::App& app);           // daemon/cmd_generate.cpp
void add_make_random_model_command(CLI::App& app);  // daemon/cmd_make_random_model.cpp
void add_serve_command(CLI::App& app);              // daemon/cmd_serve.cpp
}  // namespace diffusiond
