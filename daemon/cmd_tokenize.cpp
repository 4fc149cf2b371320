// `diffusiond tokenize --model MODEL "TEXT"`: prints the padded CLIP token ids of TEXT as one
// JSON array on one line, exactly what the text encoder would receive.
#include <CLI/CLI.hpp>

#include <iostream>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "daemon/commands.h"
#include "pipeline/model_folder.h"
#include "pipeline/text/clip_tokenizer.h"

namespace diffusiond {

void add_tokenize_command(CLI::App& app) {
  struct Options {
    std::string model;
    std::string model_config;
    std::string text;
  };
  auto options = std::make_shared<Options>();
  auto* cmd = app.add_subcommand(
      "tokenize", "Print the CLIP token ids of TEXT (bos, tokens, eos, padding) as a JSON array");
  cmd->add_option("--model", options->model,
                  "model folder, Hugging Face repo id found in the local HF cache, or "
                  "single-file checkpoint (its tokenizer: see generate --model-config)")
      ->required();
  cmd->add_option("--model-config", options->model_config,
                  "For a single-file --model: the diffusers folder whose tokenizer to use");
  cmd->add_option("text", options->text, "the prompt (put -- before it if it starts with '-')")
      ->required();
  cmd->callback([options] {
    const ModelFolder model = resolve_model(options->model, "", options->model_config);
    const ClipTokenizer tokenizer = ClipTokenizer::load(model.root / "tokenizer");
    std::cout << nlohmann::json(tokenizer.encode(options->text)).dump() << std::endl;
  });
}

}  // namespace diffusiond
