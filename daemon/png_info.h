// What the PNG metadata chunks of image k of a job say (pipeline/png.h writes them: the A1111
// `parameters` text and the `diffusiond` JSON). Torch-free: only the plain struct is used here.
// Thread-safety: pure function.
#pragma once

#include <string>

#include "http/service.h"
#include "pipeline/png.h"

namespace diffusiond {

// sampler: the A1111 display name ("Euler a"); dtype: "fp32", "fp16", "bf16".
PngGenerationInfo make_png_info(const JobView& job, int image_index, const std::string& device,
                                const std::string& sampler, const std::string& dtype);

}  // namespace diffusiond
