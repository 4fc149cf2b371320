// What the PNG metadata chunks of one image say (pipeline/media/png.h writes them: the A1111
// `parameters` text and the `diffusiond` JSON), built from the image's ImageSpec and its job's
// normalised request, for the daemon and `diffusiond generate` alike.
// Torch-free. Thread-safety: pure function.
#pragma once

#include <string>

#include "daemon/api/request.h"
#include "pipeline/media/png.h"

namespace diffusiond {

struct PngContext {
  std::string model_name;
  std::string sampler;  // the A1111 display name ("Euler a"), see sampler_display()
  std::string device;   // "cpu", "cuda:0", ...
  std::string dtype;    // "fp32", "fp16", "bf16"
  std::string job_id;   // empty outside the daemon; else added to the request JSON
};

PngGenerationInfo make_png_info(const ImageSpec& image, const JobRequest& request,
                                const PngContext& context);

}  // namespace diffusiond
