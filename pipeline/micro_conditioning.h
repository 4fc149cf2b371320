// SDXL micro-conditioning: the add_time_ids of an image's conditional and unconditional rows.
// Ref: diffusers v0.27.2 StableDiffusionXLPipeline._get_add_time_ids and __call__ ("7. Prepare
// added time ids & embeddings"). Part of diffusiond_pipeline; pure functions, any thread.
#pragma once

#include <torch/torch.h>

#include "pipeline/txt2img.h"

namespace diffusiond {

// Throws std::invalid_argument naming the field: any of the six micro-conditioning pairs given
// for a model that is not SDXL (`xl` false), a size below 1 or a crop below 0.
void check_micro_conditioning(const Txt2ImgParams& params, bool xl);

struct AddTimeIds {
  torch::Tensor cond;    // [1, 6]: original_size + crops_coords_top_left + target_size
  torch::Tensor uncond;  // [1, 6]: the negative_ ones when both negative sizes are given, else cond
};
// In `dtype`, on the CPU. Defaults as diffusers: original_size and target_size (height, width),
// crops (0, 0); negative crops (0, 0).
AddTimeIds add_time_ids(const Txt2ImgParams& params, torch::ScalarType dtype);

}  // namespace diffusiond
