// diffusiond: one process that owns every GPU and serves Stable Diffusion over HTTP.
#include <CLI/CLI.hpp>

#include <exception>
#include <iostream>

#include "daemon/commands.h"
#if DIFFUSIOND_HAVE_POSTGRES
#include "daemon/pg/cmd_status.h"  // `status`: a fleet's queue (the PostgreSQL store)
#endif
#include "pipeline/cpu_thread_env.h"

int main(int argc, char** argv) {
  diffusiond::restart_with_cpu_thread_env(argv);  // before any thread of ours
  CLI::App app{"diffusiond " DIFFUSIOND_VERSION
               ": Stable Diffusion text-to-image daemon for every GPU of a workstation"};
  app.set_version_flag("--version", std::string("diffusiond ") + DIFFUSIOND_VERSION);
  app.require_subcommand(1);
  diffusiond::add_serve_command(app);
  diffusiond::add_generate_command(app);
  diffusiond::add_tokenize_command(app);
  diffusiond::add_make_random_model_command(app);
#if DIFFUSIOND_HAVE_POSTGRES
  diffusiond::add_status_command(app);
#endif
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {
    std::cerr << "diffusiond: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
