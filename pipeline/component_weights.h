// The weights of one component of a model, whatever its format: a diffusers folder's own
// COMPONENT/*.safetensors, or the diffusers-named view (ldm_keys.h) of a single-file
// checkpoint's part for that component. Either way the loaders see diffusers module names.
// Thread-safety: free function; the returned file is immutable (any thread may read it).
#pragma once

#include <memory>
#include <string>

#include "pipeline/model_folder.h"
#include "pipeline/safetensors.h"

namespace diffusiond {

// component: "unet", "vae", "text_encoder", "text_encoder_2". Throws ModelNotFound (no such
// weights), SafetensorsError, LdmLayoutError.
std::shared_ptr<const SafetensorsFile> open_component_weights(const ModelFolder& model,
                                                              const std::string& component);

}  // namespace diffusiond
