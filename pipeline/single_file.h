// A single-file checkpoint (FILE.safetensors, original CompVis/LDM key names) as a ModelFolder:
// the weights come from FILE (ldm_keys.h maps its keys), the architecture (configs, tokenizers,
// scheduler) from, in this order:
//   1. `model_config` (--model-config DIR): a diffusers folder or HF cache id, as diffusers'
//      from_single_file(config=...);
//   2. a sibling FILE.yaml in the LDM inference format A1111 reads: its UNet context_dim /
//      cond_stage target say SD 1.x, SD 2.x or SDXL, `parameterization: "v"` says v-prediction
//      (SD 2.x without it: the 512 epsilon model, stable-diffusion-2-1-base);
//   3. the family recognised from the keys, with the configs its official diffusers folder ships
//      (models/configs/<family>/, installed in <prefix>/share/diffusiond/configs): SD 1.x ->
//      sd15; SD 2.x -> sd21 (768-v, v_prediction: what diffusers' from_single_file defaults to,
//      the weights cannot tell 768-v from 512-base); SDXL -> sdxl-base; a file whose name contains
//      "turbo" -> sd-turbo / sdxl-turbo (the weights cannot tell Turbo from its base either).
// SDXL refiner checkpoints are recognised and refused (an img2img-only model).
// Thread-safety: free functions; reads files only.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "pipeline/ldm_keys.h"
#include "pipeline/model_folder.h"

namespace diffusiond {

// What a sibling LDM .yaml says (only what diffusiond uses of it).
struct LdmYaml {
  std::optional<LdmLayout> layout;  // from context_dim / cond_stage_config.target
  bool v_prediction = false;        // model.params.parameterization: "v"
};
// Reads the indented key: value subset of YAML the LDM configs use. Throws ConfigError naming
// the file when it cannot be read.
LdmYaml read_ldm_yaml(const std::filesystem::path& path);

// The shipped family folder names: sd15, sd21, sd21-base, sd-turbo, sdxl-base, sdxl-turbo.
const std::vector<std::string>& known_families();
// Where models/configs/<family>/ may be, in the order tried: $DIFFUSIOND_SOURCE_DIR/models/
// configs, the source tree this binary was built from, <exe>/../share/diffusiond/configs, the
// build tree (<exe>/../../models/configs), the install prefix's share/diffusiond/configs.
std::vector<std::filesystem::path> family_config_candidates();
// The first candidate holding <family>/model_index.json. Throws ModelNotFound listing them.
std::filesystem::path family_config_dir(const std::string& family);

// Resolves FILE and its configs (see above). Throws SafetensorsError (not a safetensors file,
// truncated), LdmLayoutError (no known layout, unknown keys), ModelNotFound / ConfigError.
ModelFolder resolve_single_file(const std::filesystem::path& file,
                                const std::string& model_config = "");

}  // namespace diffusiond
