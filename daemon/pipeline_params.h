// The pipeline's parameters (pipeline/txt2img.h) built from the core's request types: one image
// (the daemon's device workers) or a whole normalised request (`diffusiond generate`, which runs
// the images of a request as one batch). The only place that maps the one onto the other.
// Needs LibTorch (part of diffusiond_core). Pure functions; any thread.
#pragma once

#include "daemon/api/request.h"
#include "daemon/api/views.h"
#include "pipeline/model_folder.h"
#include "pipeline/txt2img.h"

namespace diffusiond {

// prompt_syntax a1111 -> a1111_prompt_syntax. pad_cond_uncond is the daemon's (serve
// --pad-cond-uncond), not the request's: the caller sets it.
Txt2ImgParams txt2img_params(const ImageSpec& image);  // one image, seeded with its own seed
Txt2ImgParams txt2img_params(const JobRequest& request);

// What a model folder implies for requests and UIs, for `serve` (GET /model) and `generate`
// alike: name, path, native size (unet sample_size x the VAE's factor), steps and guidance from
// its family (pipeline/model_family.h; steps_override > 0, serve --default-steps, replaces the
// family's steps), the scheduler its folder ships, every known scheduler, micro-conditioning
// (SDXL) and the size presets. Reads the configs (disk): call at start-up, not per request.
ModelInfo model_info(const ModelFolder& model, int steps_override = 0);

// The LibTorch type of a canonical dtype name (daemon/dtype.h): fp32, fp16 or bf16.
torch::ScalarType scalar_type(const std::string& dtype);

}  // namespace diffusiond
