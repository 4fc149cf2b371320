// POST /v1/images/generations body (the OpenAI Images API) -> GenerateRequest plus how to answer.
// Pure function; any thread.
//
// Fields: prompt (required), model, n, size ("WxH" or "auto"), quality, response_format
// (b64_json | url; default b64_json), output_format (png | jpeg | webp), output_compression
// (0..100: the JPEG/WebP quality; default 100), background (auto | opaque; transparent: 400),
// moderation, style and user (accepted, no effect), stream, partial_images (0..3); diffusiond's
// own negative_prompt, seed, steps, guidance_scale, scheduler. Unknown fields: 400, as OpenAI.
//
// quality -> steps (of the model's default D, `GET /model`): low ceil(D/4), medium ceil(D/2),
// high, hd, standard and auto D; `steps` overrides it.
// model: a served model's name, or one of OpenAI's own names (dall-e-*, gpt-image-*,
// chatgpt-image-*), which mean the daemon's default model (clients send them by default).
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "daemon/api/service.h"

namespace diffusiond::http_api {

struct OpenAiImageRequest {
  GenerateRequest request;
  bool url = false;  // response_format url
  ImageFormat format = ImageFormat::png;
  int compression = 100;         // JPEG/WebP quality
  std::string quality = "high";  // echoed: low | medium | high (auto -> high) | standard | hd
  std::string background = "opaque";
  bool stream = false;
  int partial_images = 0;
};

// Throws ServiceError invalid_request (reason invalid_field / unknown_field / missing_field,
// field = the parameter).
OpenAiImageRequest parse_openai_image_request(const nlohmann::json& body, const ModelInfo& model);

}  // namespace diffusiond::http_api
