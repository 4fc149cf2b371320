// Which model `diffusiond serve` loads when: --model, else $DIFFUSIOND_MODEL, else a Stable
// Diffusion 1.5 in the Hugging Face cache (stable-diffusion-v1-5/stable-diffusion-v1-5, then
// runwayml/stable-diffusion-v1-5), else the bundled random-weight test model tiny-sd1 (found
// next to the sources this binary was built from, in the build tree, or in the installed
// share/diffusiond) with a loud warning.
// Thread-safety: free function, called once by cmd_serve.
#pragma once

#include <filesystem>
#include <string>

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

// Where the bundled tiny-sd1 may be, in the order tried.
std::vector<std::filesystem::path> bundled_model_candidates(
    const std::filesystem::path& executable);

}  // namespace diffusiond
