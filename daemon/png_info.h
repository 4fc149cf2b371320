// What the PNG metadata chunks of one image say (pipeline/media/png.h writes them: the A1111
// `parameters` text and the `diffusiond` JSON), built from the image's ImageSpec and its job's
// normalised request, for the daemon and `diffusiond generate` alike.
// Torch-free. Thread-safety: pure function.
#pragma once

#include <functional>
#include <optional>
#include <string>

#include "daemon/api/request.h"
#include "daemon/lora_catalog.h"
#include "pipeline/media/png.h"

namespace diffusiond {

struct PngContext {
  std::string model_name;
  std::string sampler;  // the A1111 display name ("Euler a"), see sampler_display()
  std::string device;   // "cpu", "cuda:0", ...
  std::string dtype;    // "fp32", "fp16", "bf16"
  std::string job_id;   // empty outside the daemon; else added to the request JSON
};

// info.loras gets the image's LoRAs (name, weight) without hashes: see add_lora_hashes.
PngGenerationInfo make_png_info(const ImageSpec& image, const JobRequest& request,
                                const PngContext& context);

// Fills the hashes of info.loras (A1111's `Lora hashes`) from `hashes` (name -> hashes, nullopt
// when unknown). Reads files: call it on the PNG pool or the CLI, never on a device thread.
void add_lora_hashes(PngGenerationInfo& info,
                     const std::function<std::optional<LoraHashes>(const std::string&)>& hashes);

}  // namespace diffusiond
