// GenerateRequest <-> JSON, for the job store's rows and the PNG's `diffusiond` chunk.
// The field names are those of the HTTP API (prompts, negative_prompt, n, steps, ...).
// Thread-safety: pure functions.
#pragma once

#include <nlohmann/json.hpp>

#include "http/service.h"

namespace diffusiond {

nlohmann::json request_to_json(const GenerateRequest& request);
// Throws std::runtime_error naming the missing or mistyped field.
GenerateRequest request_from_json(const nlohmann::json& json);

}  // namespace diffusiond
