// The shape of a POST /generate body: JSON -> GenerateRequest (daemon/api/request.h).
// Pure function; any thread.
//
// This edge checks only shapes: the body is one JSON object; unknown fields are rejected
// (400 unknown_field naming them), so a typo such as "step" never silently falls back to a
// default; null is the same as an absent field; exactly one of "prompt" (string) or "prompts"
// (a non-empty array of strings) is given; integers are integers, numbers numbers, strings
// strings; "seed" is a non-negative integer or -1 (A1111's "random", the same as absent).
// Every value rule (ranges, limits, defaults, scheduler names) is the core's: api normalise().
#pragma once

#include <string>
#include <string_view>
#include <variant>

#include "daemon/api/request.h"

namespace diffusiond::http_api {

struct ValidationError {
  int http_status = 400;
  std::string code;   // invalid_json, missing_field, invalid_field, unknown_field
  std::string field;  // empty when about the whole body
  std::string message;
};

std::variant<GenerateRequest, ValidationError> parse_generate_request(std::string_view body);

}  // namespace diffusiond::http_api
