// `diffusiond make-random-model`: a full-size diffusers folder with random weights, so the real
// architectures can be benchmarked without downloading a checkpoint.
// Thread-safety: runs once on the main thread.
#include <CLI/CLI.hpp>

#include <filesystem>
#include <iostream>

#include "daemon/commands.h"
#include "pipeline/random_model.h"

namespace diffusiond {
namespace {

namespace fs = std::filesystem;

// The bundled tiny model's tokenizer (the full CLIP vocabulary): installed copy, then the source
// tree this binary was built from.
fs::path default_tokenizer_dir() {
  std::vector<fs::path> candidates;
#ifdef DIFFUSIOND_DATADIR
  candidates.push_back(fs::path(DIFFUSIOND_DATADIR) / "tiny-sd1" / "tokenizer");
#endif
#ifdef DIFFUSIOND_SOURCE_DIR
  candidates.push_back(fs::path(DIFFUSIOND_SOURCE_DIR) / "tests" / "fixtures" / "tiny-sd1" /
                       "tokenizer");
#endif
  std::string tried;
  for (const auto& c : candidates) {
    if (fs::is_regular_file(c / "vocab.json")) return c;
    tried += (tried.empty() ? "" : ", ") + c.string();
  }
  throw std::invalid_argument(
      "no default tokenizer folder found (tried: " + (tried.empty() ? std::string("none") : tried) +
      "); pass --tokenizer DIR (a model's tokenizer/ folder)");
}

}  // namespace

void add_make_random_model_command(CLI::App& app) {
  struct Options {
    std::string arch, out, tokenizer, dtype = "fp32", weights_from;
    std::uint64_t seed = 0;
  };
  auto o = std::make_shared<Options>();
  auto* cmd = app.add_subcommand(
      "make-random-model", "Write a diffusers model folder with random weights (for benchmarks)");
  cmd->add_option("--arch", o->arch, "Architecture")
      ->required()
      ->check(CLI::IsMember(random_model_archs()));
  cmd->add_option("--out", o->out, "Output folder")->required();
  cmd->add_option("--tokenizer", o->tokenizer,
                  "Tokenizer folder to copy (default: the bundled tiny model's)");
  cmd->add_option("--seed", o->seed, "Seed of the random weights")->capture_default_str();
  cmd->add_option("--dtype", o->dtype,
                  "How the weights are stored: fp32, or fp16 (half the bytes, as the "
                  "checkpoints' fp16 variants; loading casts to the --dtype asked for)")
      ->check(CLI::IsMember({"fp32", "fp16"}))
      ->capture_default_str();
  cmd->add_option("--weights-from", o->weights_from,
                  "Link the weight files of this folder (same networks, e.g. an sdxl folder for "
                  "--arch sdxl-turbo) instead of writing new ones");
  cmd->callback([o] {
    const fs::path tokenizer =
        o->tokenizer.empty() ? default_tokenizer_dir() : fs::path(o->tokenizer);
    RandomModelOptions options;
    options.seed = o->seed;
    options.dtype =
        o->dtype == "fp16" ? RandomWeightsDtype::kFloat16 : RandomWeightsDtype::kFloat32;
    options.weights_from = o->weights_from;
    write_random_model(o->arch, o->out, tokenizer, options, [](const std::string& stage) {
      std::cerr << "writing " << stage << "...\n";
    });
    std::cout << o->out << "\n";
  });
}

}  // namespace diffusiond
