// Which images may share one UNet batch (batches across requests, issue 11): the one rule.
// Part of diffusiond_api; pure function, any thread.
//
// Two images may run in one batch when their batch keys are equal. The key holds everything a
// batch shares (pipeline/txt2img.h StableDiffusion::generate_batch): the model (resolved name) and
// its LoRA set, the prompt syntax, width, height, steps, sampler and
// classifier-free guidance on or off. What may differ per image stays out of it: prompt,
// negative prompt (absent or given), seed, guidance scale (> 1), SDXL micro-conditioning.
// Prompts whose embeddings differ in shape (prompt weighting / chunking: more than 77 tokens)
// are split into sub-batches by the pipeline itself, so the key need not know token counts.
//
// The dispatcher compares keys as opaque strings (it never sees what they mean); "" never
// batches.
#pragma once

#include <string>

#include "daemon/api/request.h"

namespace diffusiond {

std::string batch_key(const ImageSpec& image);

}  // namespace diffusiond
