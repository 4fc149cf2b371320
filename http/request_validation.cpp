#include "http/request_validation.h"

#include <algorithm>
#include <limits>
#include <nlohmann/json.hpp>
#include <vector>

namespace diffusiond::http_api {
namespace {

using nlohmann::json;

// The accepted fields, in the order the unknown-field message lists them.
const std::vector<std::string>& known_fields() {
  static const std::vector<std::string> fields = {"prompt",
                                                  "prompts",
                                                  "negative_prompt",
                                                  "n",
                                                  "steps",
                                                  "guidance_scale",
                                                  "seed",
                                                  "width",
                                                  "height",
                                                  "scheduler",
                                                  "priority",
                                                  "original_size",
                                                  "crops_coords_top_left",
                                                  "target_size",
                                                  "negative_original_size",
                                                  "negative_crops_coords_top_left",
                                                  "negative_target_size",
                                                  "model",
                                                  "loras",
                                                  "prompt_syntax"};
  return fields;
}

// Thrown inside this file only; converted to ValidationError at the boundary.
struct Invalid {
  ValidationError error;
};

[[noreturn]] void fail(std::string code, std::string field, std::string message) {
  throw Invalid{ValidationError{400, std::move(code), std::move(field), std::move(message)}};
}

std::string type_name(const json& v) {
  if (v.is_number_float()) return "a non-integer number";
  if (v.is_number()) return "an integer";
  return std::string(v.type_name()) == "null" ? "null" : std::string("a ") + v.type_name();
}

const json* optional_field(const json& body, const char* name) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

// An integer that fits in 64 signed bits (the core checks the range).
std::optional<std::int64_t> integer(const json& body, const char* name) {
  const json* v = optional_field(body, name);
  if (v == nullptr) return std::nullopt;
  if (!v->is_number_integer())
    fail("invalid_field", name,
         std::string("field '") + name + "' must be an integer, got " + type_name(*v));
  if (v->is_number_unsigned() &&
      v->get<std::uint64_t>() > static_cast<std::uint64_t>(std::numeric_limits<int64_t>::max()))
    fail("invalid_field", name, std::string("field '") + name + "' is out of range");
  return v->get<std::int64_t>();
}

std::string text(const json& v, const std::string& name) {
  if (!v.is_string())
    fail("invalid_field", name, "field '" + name + "' must be a string, got " + type_name(v));
  return v.get<std::string>();
}

json parse_object(std::string_view body) {
  if (body.find_first_not_of(" \t\r\n") == std::string_view::npos)
    fail("invalid_json", "", "request body is empty; expected a JSON object");
  json parsed;
  try {
    parsed = json::parse(body);
  } catch (const json::exception& e) {  // parse errors, numbers beyond a double (1e400)
    std::string why = e.what();
    if (why.size() > 200) why = why.substr(0, 200) + "...";  // it may quote a 3000-digit literal
    fail("invalid_json", "", "request body is not valid JSON: " + why);
  }
  if (!parsed.is_object())
    fail("invalid_json", "", "request body must be a JSON object, got " + type_name(parsed));
  return parsed;
}

void reject_unknown_fields(const json& body) {
  std::string unknown;
  std::string first;
  for (const auto& [key, value] : body.items()) {
    if (std::find(known_fields().begin(), known_fields().end(), key) != known_fields().end())
      continue;
    if (first.empty()) first = key;
    unknown += (unknown.empty() ? "'" : ", '") + key + "'";
  }
  if (unknown.empty()) return;
  std::string accepted;
  for (const std::string& f : known_fields()) accepted += (accepted.empty() ? "" : ", ") + f;
  fail("unknown_field", first, "unknown field(s) " + unknown + "; accepted fields: " + accepted);
}

std::vector<std::string> read_prompts(const json& body) {
  const json* one = optional_field(body, "prompt");
  const json* many = optional_field(body, "prompts");
  if (one != nullptr && many != nullptr)
    fail("invalid_field", "prompts", "give either 'prompt' or 'prompts', not both");
  if (one == nullptr && many == nullptr)
    fail("missing_field", "prompt",
         "field 'prompt' (a string) or 'prompts' (an array) is required");
  if (one != nullptr) return {text(*one, "prompt")};
  if (!many->is_array())
    fail("invalid_field", "prompts",
         "field 'prompts' must be an array of strings, got " + type_name(*many));
  if (many->empty())
    fail("invalid_field", "prompts", "field 'prompts' must hold at least one prompt");
  std::vector<std::string> prompts;
  for (std::size_t i = 0; i < many->size(); ++i)
    prompts.push_back(text((*many)[i], "prompts[" + std::to_string(i) + "]"));
  return prompts;
}

// SDXL micro-conditioning: [a, b], two integers (the core checks the ranges and the model).
std::optional<SizePair> integer_pair(const json& body, const char* name) {
  const json* v = optional_field(body, name);
  if (v == nullptr) return std::nullopt;
  const std::string what = std::string("field '") + name + "' must be an array of two integers";
  if (!v->is_array() || v->size() != 2)
    fail("invalid_field", name, what + ", got " + v->dump().substr(0, 100));
  SizePair out{};
  for (std::size_t i = 0; i < 2; ++i) {
    const json& e = (*v)[i];
    if (!e.is_number_integer() ||
        (e.is_number_unsigned() &&
         e.get<std::uint64_t>() > static_cast<std::uint64_t>(std::numeric_limits<int64_t>::max())))
      fail("invalid_field", name, what + ", got " + v->dump().substr(0, 100));
    out[i] = e.get<std::int64_t>();
  }
  return out;
}

// [{"name": "...", "weight": 0.8}, ...]; weight defaults to 1 (the core checks names and ranges).
std::vector<LoraRef> read_loras(const json& body) {
  const json* v = optional_field(body, "loras");
  if (v == nullptr) return {};
  if (!v->is_array())
    fail("invalid_field", "loras",
         "field 'loras' must be an array of {\"name\", \"weight\"} objects, got " + type_name(*v));
  std::vector<LoraRef> out;
  for (std::size_t i = 0; i < v->size(); ++i) {
    const json& e = (*v)[i];
    const std::string at = "loras[" + std::to_string(i) + "]";
    if (!e.is_object())
      fail("invalid_field", at, "field '" + at + "' must be an object, got " + type_name(e));
    for (const auto& [key, value] : e.items())
      if (key != "name" && key != "weight")
        fail("unknown_field", at + "." + key,
             "unknown field '" + at + "." + key.substr(0, 100) + "'; accepted: name, weight");
    const json* name = optional_field(e, "name");
    if (name == nullptr) fail("missing_field", at + ".name", "field '" + at + ".name' is required");
    LoraRef ref{text(*name, at + ".name"), 1.0};
    if (const json* w = optional_field(e, "weight")) {
      if (!w->is_number())
        fail("invalid_field", at + ".weight",
             "field '" + at + ".weight' must be a number, got " + type_name(*w));
      ref.weight = w->get<double>();
    }
    out.push_back(std::move(ref));
  }
  return out;
}

std::optional<std::uint64_t> read_seed(const json& body) {
  const json* v = optional_field(body, "seed");
  if (v == nullptr) return std::nullopt;
  if (v->is_number_unsigned()) return v->get<std::uint64_t>();
  if (v->is_number_integer() && v->get<std::int64_t>() >= 0)
    return static_cast<std::uint64_t>(v->get<std::int64_t>());
  if (v->is_number_integer() && v->get<std::int64_t>() == -1) return std::nullopt;  // random
  fail("invalid_field", "seed",
       "field 'seed' must be a non-negative integer or -1 (random), got " +
           (v->is_number_integer() ? v->dump() : type_name(*v)));
}

GenerateRequest build(const json& body) {
  reject_unknown_fields(body);
  GenerateRequest r;
  r.prompts = read_prompts(body);
  if (const json* v = optional_field(body, "negative_prompt"))
    r.negative_prompt = text(*v, "negative_prompt");
  r.n = integer(body, "n").value_or(1);
  r.steps = integer(body, "steps");
  if (const json* v = optional_field(body, "guidance_scale")) {
    if (!v->is_number())
      fail("invalid_field", "guidance_scale",
           "field 'guidance_scale' must be a number, got " + type_name(*v));
    r.guidance_scale = v->get<double>();
  }
  r.seed = read_seed(body);
  r.width = integer(body, "width");
  r.height = integer(body, "height");
  if (const json* v = optional_field(body, "scheduler")) r.scheduler = text(*v, "scheduler");
  r.priority = integer(body, "priority").value_or(0);
  r.original_size = integer_pair(body, "original_size");
  r.crops_coords_top_left = integer_pair(body, "crops_coords_top_left");
  r.target_size = integer_pair(body, "target_size");
  r.negative_original_size = integer_pair(body, "negative_original_size");
  r.negative_crops_coords_top_left = integer_pair(body, "negative_crops_coords_top_left");
  r.negative_target_size = integer_pair(body, "negative_target_size");
  if (const json* v = optional_field(body, "model")) r.model = text(*v, "model");
  r.loras = read_loras(body);
  if (const json* v = optional_field(body, "prompt_syntax"))
    r.prompt_syntax = text(*v, "prompt_syntax");
  return r;
}

}  // namespace

std::variant<GenerateRequest, ValidationError> parse_generate_request(std::string_view body) {
  try {
    return build(parse_object(body));
  } catch (const Invalid& e) {
    return e.error;
  }
}

}  // namespace diffusiond::http_api
