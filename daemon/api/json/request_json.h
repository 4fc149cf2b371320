// The one JSON shape of a normalised request (JobRequest): the job store's `request` column,
// the API's job "request" object, and the "request" of the PNG's `diffusiond` chunk, from the
// daemon and from `diffusiond generate` alike. Field names are the HTTP API's (prompts,
// negative_prompt, n, steps, guidance_scale, seed, width, height, scheduler, priority, and for
// SDXL models original_size, crops_coords_top_left, target_size, and negative_original_size,
// negative_crops_coords_top_left, negative_target_size when given). An absent negative prompt is
// written as null (a given "" stays ""); rows written before that distinction read a string.
// Part of diffusiond_api_json. Pure functions; any thread.
#pragma once

#include <nlohmann/json.hpp>

#include "daemon/api/request.h"

namespace diffusiond {

nlohmann::json request_to_json(const JobRequest& request);
// Throws std::runtime_error naming the missing or mistyped field.
JobRequest request_from_json(const nlohmann::json& json);

}  // namespace diffusiond
