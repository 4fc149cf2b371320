#include "daemon/pipeline_params.h"

#include "pipeline/media/config_util.h"
#include "pipeline/model_family.h"
#include "pipeline/schedulers/scheduler.h"

namespace diffusiond {

Txt2ImgParams txt2img_params(const ImageSpec& image) {
  Txt2ImgParams params;
  params.prompts = {image.prompt};
  params.negative_prompt = image.negative_prompt;
  params.num_images_per_prompt = 1;
  params.steps = image.steps;
  params.guidance_scale = image.guidance_scale;
  params.seed = image.seed;  // the pipeline seeds its image 0 with it: image k's own seed
  params.width = image.width;
  params.height = image.height;
  params.scheduler = image.scheduler;
  params.original_size = image.original_size;
  params.crops_coords_top_left = image.crops_coords_top_left;
  params.target_size = image.target_size;
  params.negative_original_size = image.negative_original_size;
  params.negative_crops_coords_top_left = image.negative_crops_coords_top_left;
  params.negative_target_size = image.negative_target_size;
  params.a1111_prompt_syntax = image.prompt_syntax == PromptSyntax::a1111;
  return params;
}

Txt2ImgParams txt2img_params(const JobRequest& request) {
  Txt2ImgParams params;
  params.prompts = request.prompts;
  params.negative_prompt = request.negative_prompt;
  params.num_images_per_prompt = request.n;
  params.steps = request.steps;
  params.guidance_scale = request.guidance_scale;
  params.seed = request.seed;  // image k: seed + k
  params.width = request.width;
  params.height = request.height;
  params.scheduler = request.scheduler;
  params.original_size = request.original_size;
  params.crops_coords_top_left = request.crops_coords_top_left;
  params.target_size = request.target_size;
  params.negative_original_size = request.negative_original_size;
  params.negative_crops_coords_top_left = request.negative_crops_coords_top_left;
  params.negative_target_size = request.negative_target_size;
  params.a1111_prompt_syntax = request.prompt_syntax == PromptSyntax::a1111;
  return params;
}

ModelInfo model_info(const ModelFolder& model, int steps_override) {
  ModelInfo info;
  info.name = model.name;
  info.path = model.location().string();
  const auto unet_file = model.config_path("unet");
  const auto vae_file = model.config_path("vae");
  const auto unet = read_json_file(unet_file);
  const auto vae = read_json_file(vae_file);
  const int sample_size = require_key<int>(unet, "sample_size", unet_file.string());
  const auto blocks = require_key<std::vector<int>>(vae, "block_out_channels", vae_file.string());
  const int scale = 1 << (blocks.empty() ? 0 : static_cast<int>(blocks.size()) - 1);
  info.default_width = info.default_height = sample_size * scale;
  const ModelFamily family = model_family(model);
  const FamilyDefaults defaults = family_defaults(family);
  info.family = family_name(family);
  info.default_steps = steps_override > 0 ? steps_override : defaults.steps;
  info.default_guidance_scale = defaults.guidance_scale;
  info.default_scheduler = default_scheduler_name(model.scheduler_config());
  for (const auto& entry : scheduler_registry())
    info.schedulers.push_back({entry.name, entry.aliases});
  info.micro_conditioning = is_sdxl(model);
  info.size_presets = size_presets(family, info.default_width);
  return info;
}

torch::ScalarType scalar_type(const std::string& dtype) {
  if (dtype == "fp16") return torch::kHalf;
  if (dtype == "bf16") return torch::kBFloat16;
  return torch::kFloat;
}

}  // namespace diffusiond
