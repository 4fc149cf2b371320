// POST /sdapi/v1/txt2img body (AUTOMATIC1111's StableDiffusionTxt2ImgProcessingAPI) ->
// GenerateRequest, and the A1111 answer's `parameters` and `info` from the finished job.
// Pure functions; any thread.
//
// Every field A1111 accepts is accepted. A field asking for an effect diffusiond does not have
// (enable_hr, restore_faces, tiling, styles, subseed_strength, seed_resize_from_*, eta, s_churn,
// s_tmin, s_tmax, s_noise, s_min_uncond, script_name, alwayson_scripts, refiner_checkpoint,
// firstpass_image, infotext, override_settings.CLIP_stop_at_last_layers / sd_vae /
// eta_noise_seed_delta, clip_skip) is a 400 naming it, unless it holds its "off"/default value,
// which is accepted silently. Fields that only matter with such an effect (hr_*,
// denoising_strength, ...), bookkeeping fields (save_images, comments, force_task_id, ...) and
// unknown fields are ignored, as A1111 (pydantic) ignores unknown fields: SillyTavern sends its
// own `url` and `auth` in the body. Never echoed back: unknown fields.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "daemon/api/service.h"

namespace diffusiond::http_api {

struct A1111Txt2Img {
  GenerateRequest request;  // prompt_syntax "a1111"; `model` unset (the handler picks it)
  bool send_images = true;
  std::optional<std::string> checkpoint;  // override_settings.sd_model_checkpoint as sent
  int batch_size = 1;
  int n_iter = 1;
  nlohmann::json parameters;  // the known fields with A1111's defaults: the answer's echo
};

// Throws ServiceError invalid_request (reason invalid_field / unknown_scheduler; the field).
A1111Txt2Img parse_a1111_txt2img(const nlohmann::json& body, const ImageService& service);

// The A1111 `info` object (the answer carries it as a JSON string): prompt, all_prompts,
// negative_prompt, all_negative_prompts, seed, all_seeds, subseed, all_subseeds, width, height,
// sampler_name, cfg_scale, steps, batch_size, sd_model_name, infotexts, job_timestamp, ...
// `done` lists the images answered (their indices), `infotexts` their "parameters" texts.
nlohmann::json a1111_info(const JobView& job, const A1111Txt2Img& asked,
                          const std::vector<int>& done, const std::vector<std::string>& infotexts,
                          const std::string& sampler_display_name);

// A1111's parse_generation_parameters, simplified: {"Prompt", "Negative prompt", "Steps", ...,
// "Size-1", "Size-2"} from an infotext ("parameters" text).
nlohmann::json parse_infotext(const std::string& text);

}  // namespace diffusiond::http_api
