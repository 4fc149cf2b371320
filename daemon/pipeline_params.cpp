#include "daemon/pipeline_params.h"

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
  return params;
}

torch::ScalarType scalar_type(const std::string& dtype) {
  if (dtype == "fp16") return torch::kHalf;
  if (dtype == "bf16") return torch::kBFloat16;
  return torch::kFloat;
}

}  // namespace diffusiond
