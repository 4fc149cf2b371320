// Which model `diffusiond serve` loads when: --model, else $DIFFUSIOND_MODEL, else a Stable
// Diffusion 1.5 in the Hugging Face cache (stable-diffusion-v1-5/stable-diffusion-v1-5, then
// runwayml/stable-diffusion-v1-5), else the bundled random-weight test model tiny-sd1 (found
// next to the sources this binary was built from, in the build tree, or in the installed
// share/diffusiond) with a loud warning.
// Thread-safety: free function, called once by cmd_serve.
#pragma once

#include <filesystem>
#include <string>

#include "daemon/model_library.h"
#include "pipeline/model_folder.h"

namespace diffusiond {

struct ModelChoice {
  ModelFolder folder;
  std::string source;  // "--model", "$DIFFUSIOND_MODEL", "the Hugging Face cache", "bundled"
  bool is_test_model = false;
  std::string notice;  // for the log, /devices and the UI when is_test_model
};

// Throws ModelNotFound naming what was tried.
// `model_config`: --model-config, for a single-file model (resolve_model).
ModelChoice choose_model(const std::string& model_option, const std::string& variant,
                         const std::filesystem::path& executable,
                         const std::string& model_config = "");

// Every model `serve` serves and which is the default. Without --models-dir: the one
// choose_model() gives. With it: its entries (scan_models_dir), and the default is --model (or
// $DIFFUSIOND_MODEL) when given: an entry of the dir by find_model's rules, else a folder or HF
// id loaded as without --models-dir and listed first; when neither is given, the dir's first
// entry by name. Throws ModelNotFound.
struct ServedModels {
  ModelChoice choice;               // the default (its folder; for a dir entry, that entry's)
  std::vector<ModelSource> models;  // the default has info.is_default
};
ServedModels choose_served_models(const std::string& model_option, const std::string& models_dir,
                                  const std::string& variant, int default_steps,
                                  const std::filesystem::path& executable,
                                  const std::string& model_config = "");

// Where the bundled tiny-sd1 may be, in the order tried.
std::vector<std::filesystem::path> bundled_model_candidates(
    const std::filesystem::path& executable);

}  // namespace diffusiond
