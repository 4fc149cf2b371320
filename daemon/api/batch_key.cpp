#include "daemon/api/batch_key.h"

#include <cstdio>

namespace diffusiond {

std::string batch_key(const ImageSpec& image) {
  std::string key;
  auto field = [&key](const char* name, const std::string& value) {
    key += name;
    key += '=';
    key += value;
    key += ';';
  };
  // The model the image runs on (its resolved name) and the LoRAs merged into it, in the
  // order they are merged (the sums are rounded in that order), weights exactly.
  field("model", image.model);
  std::string loras;
  for (const auto& lora : image.loras) {
    char weight[32];
    std::snprintf(weight, sizeof weight, "%.17g", lora.weight);
    loras +=
        std::to_string(lora.name.size()) + '/' + lora.name + ':' + weight + ',';  // unambiguous
  }
  field("loras", loras);
  // Prompt syntax: plain prompts and A1111 weighting encode differently.
  field("syntax", to_string(image.prompt_syntax));
  field("size", std::to_string(image.width) + "x" + std::to_string(image.height));
  field("steps", std::to_string(image.steps));
  field("sampler", image.scheduler);
  // Classifier-free guidance runs when the scale is above 1 (pipeline/txt2img.h Txt2ImgParams):
  // a batch either doubles every row (uncond + text) or none.
  field("cfg", image.guidance_scale > 1.0 ? "on" : "off");
  return key;
}

}  // namespace diffusiond
