// A cheap preview of an image still being denoised: a fixed linear map of the 4 latent channels
// to RGB, no VAE (AUTOMATIC1111's "Approx cheap" live preview). Ref: A1111
// modules/sd_vae_approx.py cheap_approximation (the SD 1.x/2.x and the SDXL coefficients), then
// sd_samplers_common's (x + 1) / 2 clamped to 0..1, * 255.
// Thread-safety: pure; the caller's device thread.
#pragma once

#include <torch/torch.h>

#include "pipeline/media/image.h"

namespace diffusiond {

// latents: [4, h, w] or [1, 4, h, w] (any device, any float dtype) -> an h x w RGB image on the
// host. `xl` picks SDXL's coefficients. Throws std::invalid_argument on another shape.
RgbImage cheap_latent_preview(const torch::Tensor& latents, bool xl);

}  // namespace diffusiond
