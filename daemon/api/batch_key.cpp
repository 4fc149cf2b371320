#include "daemon/api/batch_key.h"

namespace diffusiond {

std::string batch_key(const ImageSpec& image) {
  std::string key;
  auto field = [&key](const char* name, const std::string& value) {
    key += name;
    key += '=';
    key += value;
    key += ';';
  };
  // The model the image runs on. One model per daemon today; per-request models
  // (`loramodels`): add image.model here, and the LoRA set as a canonical list (sorted names
  // with their weights), e.g. field("model", image.model); field("loras", canonical(loras)).
  field("model", "");
  field("loras", "");
  // Prompt syntax (`prompt`: plain or a1111 weighting): add image.prompt_syntax here.
  field("syntax", "");
  field("size", std::to_string(image.width) + "x" + std::to_string(image.height));
  field("steps", std::to_string(image.steps));
  field("sampler", image.scheduler);
  // Classifier-free guidance runs when the scale is above 1 (pipeline/txt2img.h Txt2ImgParams):
  // a batch either doubles every row (uncond + text) or none.
  field("cfg", image.guidance_scale > 1.0 ? "on" : "off");
  return key;
}

}  // namespace diffusiond
