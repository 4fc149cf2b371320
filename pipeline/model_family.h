// Which family a model folder belongs to, and that family's generation defaults: the one owner
// of "SDXL 30 steps / guidance 5.0, Turbo 1 step / guidance 0.0, SD 1.x/2.x 50 / 7.5".
// Ref: the defaults of diffusers v0.27.2 StableDiffusionPipeline.__call__ /
// StableDiffusionXLPipeline.__call__ (50 / 7.5, 50 / 5.0; the SDXL base model card and the
// diffusers SDXL docs use 30 steps) and the SD-Turbo / SDXL-Turbo model cards (1 step,
// guidance 0). Thread-safety: free functions and value types; torch-free.
#pragma once

#include <array>
#include <string>
#include <vector>

#include "pipeline/model_folder.h"

namespace diffusiond {

enum class ModelFamily { kSD, kSDTurbo, kSDXL, kSDXLTurbo };

struct FamilyDefaults {
  int steps = 50;
  double guidance_scale = 7.5;
};

// SDXL: model_index.json's _class_name is StableDiffusionXLPipeline. Turbo: the shipped
// scheduler is EulerAncestralDiscreteScheduler with timestep_spacing "trailing" (what
// stabilityai/sd-turbo and stabilityai/sdxl-turbo ship; no SD 1.x/2.x or SDXL base does).
bool is_sdxl(const ModelFolder& model);
ModelFamily model_family(const ModelFolder& model);
FamilyDefaults family_defaults(ModelFamily family);
// "sd", "sd-turbo", "sdxl", "sdxl-turbo" (GET /model, PNG metadata, logs).
std::string family_name(ModelFamily family);

// The image sizes (width, height) a UI offers for a model whose native size is native x native:
// SDXL families the 1024-pixel-area buckets SDXL was trained on (1024x1024, 1152x896, 896x1152,
// 1216x832, 832x1216, 1344x768, 768x1344, 1536x640, 640x1536), scaled by native/1024 and
// rounded to multiples of 8; SD families native x native, then 2:3 and 3:2 at that width.
std::vector<std::array<int, 2>> size_presets(ModelFamily family, int native);

// model_index.json's force_zeros_for_empty_prompt (StableDiffusionXLPipeline's default: true).
bool force_zeros_for_empty_prompt(const ModelFolder& model);

}  // namespace diffusiond
