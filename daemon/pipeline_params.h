// The pipeline's parameters (pipeline/txt2img.h) built from the core's request types: one image
// (the daemon's device workers) or a whole normalised request (`diffusiond generate`, which runs
// the images of a request as one batch). The only place that maps the one onto the other.
// Needs LibTorch (part of diffusiond_core). Pure functions; any thread.
#pragma once

#include "daemon/api/request.h"
#include "pipeline/txt2img.h"

namespace diffusiond {

Txt2ImgParams txt2img_params(const ImageSpec& image);  // one image, seeded with its own seed
Txt2ImgParams txt2img_params(const JobRequest& request);

// The LibTorch type of a canonical dtype name (daemon/dtype.h): fp32, fp16 or bf16.
torch::ScalarType scalar_type(const std::string& dtype);

}  // namespace diffusiond
