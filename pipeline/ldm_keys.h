// The one map from a single-file checkpoint's original CompVis/LDM key names onto the diffusers
// module names this project's loaders use (UNet2DConditionModel, AutoencoderKL, CLIPTextModel,
// CLIPTextModelWithProjection), and the one list of keys a checkpoint may carry that no model
// reads (EMA copies, the LDM noise-schedule buffers, ...).
// Ref: diffusers v0.27.2 loaders/single_file_utils.py (convert_ldm_unet_checkpoint,
// convert_ldm_vae_checkpoint, create_text_encoder_from_ldm_clip_checkpoint,
// create_text_encoder_from_open_clip_checkpoint, SD_2_TEXT_ENCODER_KEYS_TO_IGNORE); written here
// as a pure name -> name (+ split) transform of the safetensors index, so it composes with any
// way of materialising the tensors.
// Layouts understood:
//   SD 1.x:       model.diffusion_model.*, first_stage_model.*, cond_stage_model.transformer.*
//   SD 2.x:       ... cond_stage_model.model.* (OpenCLIP ViT-H: fused attn.in_proj split into
//                 q/k/v; its last block and text_projection are unused, as in diffusers)
//   SDXL:         ... conditioner.embedders.0.transformer.* (CLIP ViT-L) and
//                 conditioner.embedders.1.model.* (OpenCLIP ViT-bigG, text_projection transposed)
//   SDXL refiner: ... conditioner.embedders.0.model.* only
// Thread-safety: pure functions; torch-free.
#pragma once

#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "pipeline/media/safetensors_map.h"
#include "pipeline/tensor_alias.h"

namespace diffusiond {

// A checkpoint whose keys are not (entirely) one understood layout; what() names the file, the
// first few offending keys and the layouts understood.
class LdmLayoutError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class LdmLayout { kSD1, kSD2, kSDXL, kSDXLRefiner };

struct LdmCheckpoint {
  LdmLayout layout = LdmLayout::kSD1;
  // "unet", "vae", "text_encoder", "text_encoder_2" -> that module's tensors (sorted by name).
  std::map<std::string, std::vector<TensorAlias>> components;
  std::vector<std::string> ignored;  // the checkpoint's keys skipped as known strays
};

// Maps every key of `index` (a safetensors header) or throws LdmLayoutError: a key of no known
// layout, two keys onto one name, no UNet / text encoder / VAE. `path` names the file in errors.
LdmCheckpoint map_ldm_checkpoint(const std::vector<StTensorInfo>& index, const std::string& path);

// "SD 1.x", "SD 2.x", "SDXL", "SDXL refiner".
const char* layout_name(LdmLayout layout);
// One line per understood layout and its key prefixes (error messages, --help).
std::string understood_layouts();

}  // namespace diffusiond
