// The text chunks every PNG of diffusiond carries: an AUTOMATIC1111-style `parameters` text
// (read by A1111, ComfyUI, civitai, ...) and a `diffusiond` JSON text with the full request.
// Thread-safety: pure functions.
#pragma once

#include <string>

#include "http/service.h"

namespace diffusiond {

struct PngTextChunks {
  std::string parameters;  // keyword "parameters"
  std::string diffusiond;  // keyword "diffusiond": JSON
};

// sampler_display: the A1111 name of the scheduler ("Euler a"), or the canonical name.
PngTextChunks make_png_metadata(const JobView& job, int image_index, const std::string& device,
                                const std::string& sampler_display, const std::string& version);

}  // namespace diffusiond
