#include "daemon/png_info.h"

#include "daemon/api/json/request_json.h"

namespace diffusiond {

PngGenerationInfo make_png_info(const ImageSpec& image, const JobRequest& request,
                                const PngContext& context) {
  PngGenerationInfo info;
  info.prompt = image.prompt;
  info.negative_prompt = image.negative_prompt;
  info.steps = image.steps;
  info.sampler = context.sampler;
  info.scheduler = image.scheduler;
  info.guidance_scale = image.guidance_scale;
  info.seed = image.seed;
  info.width = image.width;
  info.height = image.height;
  info.model_name = context.model_name;
  info.device = context.device;
  info.dtype = context.dtype;
  info.image_index = image.index;
  info.request = request_to_json(request);
  info.original_size = image.original_size;
  info.crops_coords_top_left = image.crops_coords_top_left;
  info.target_size = image.target_size;
  info.negative_original_size = image.negative_original_size;
  info.negative_crops_coords_top_left = image.negative_crops_coords_top_left;
  info.negative_target_size = image.negative_target_size;
  if (!context.job_id.empty()) info.request["job_id"] = context.job_id;
  for (const LoraRef& lora : image.loras) info.loras.push_back({lora.name, lora.weight, "", ""});
  return info;
}

void add_lora_hashes(PngGenerationInfo& info,
                     const std::function<std::optional<LoraHashes>(const std::string&)>& hashes) {
  for (auto& lora : info.loras) {
    if (const auto h = hashes(lora.name)) {
      lora.short_hash = h->short_hash;
      lora.sha256 = h->sha256;
    }
  }
}

}  // namespace diffusiond
