// Turns a POST /generate JSON body into a validated, normalised GenerateRequest.
// Owner: engineer "http". Pure function of its inputs; any thread.
//
// Policy (documented in http/README.md):
// - the body must be one JSON object; unknown fields are rejected (400 unknown_field naming
//   them), so a typo such as "step" never silently falls back to a default;
// - null is the same as an absent optional field;
// - exactly one of "prompt" (string) or "prompts" (array of strings) is required;
// - "seed" absent or -1 picks a random 32-bit seed; image k of the job gets seed + k;
// - missing values come from the model's defaults (ModelInfo).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

#include "http/server.h"
#include "http/service.h"

namespace diffusiond::http_api {

struct ValidationError {
  int http_status = 400;
  std::string code;  // invalid_json, missing_field, invalid_field, unknown_field, unknown_scheduler
  std::string field;  // empty when about the whole body
  std::string message;
};

using SchedulerResolver = std::function<std::optional<std::string>(const std::string&)>;

std::variant<GenerateRequest, ValidationError> parse_generate_request(
    std::string_view body, const ModelInfo& model, const SchedulerResolver& resolve_scheduler,
    const HttpOptions& limits, std::uint32_t random_seed);

// Number of Unicode code points in valid UTF-8 text.
std::size_t utf8_length(std::string_view text);

}  // namespace diffusiond::http_api
