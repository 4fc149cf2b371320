#include "http/request_validation.h"

#include <algorithm>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

namespace diffusiond::http_api {
namespace {

using nlohmann::json;

const std::set<std::string>& known_fields() {
  static const std::set<std::string> fields = {
      "prompt", "prompts", "negative_prompt", "n",         "steps",   "guidance_scale",
      "seed",   "width",   "height",          "scheduler", "priority"};
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

std::int64_t integer_field(const json& v, const char* name, std::int64_t lo, std::int64_t hi) {
  if (!v.is_number_integer()) {
    fail("invalid_field", name,
         std::string("field '") + name + "' must be an integer, got " + type_name(v));
  }
  if (v.is_number_unsigned() &&
      v.get<std::uint64_t>() > static_cast<std::uint64_t>(std::numeric_limits<int64_t>::max())) {
    fail("invalid_field", name,
         std::string("field '") + name + "' must be between " + std::to_string(lo) + " and " +
             std::to_string(hi));
  }
  const std::int64_t x = v.get<std::int64_t>();
  if (x < lo || x > hi) {
    fail("invalid_field", name,
         std::string("field '") + name + "' must be between " + std::to_string(lo) + " and " +
             std::to_string(hi) + ", got " + std::to_string(x));
  }
  return x;
}

std::string text_field(const json& v, const std::string& name, std::size_t max_chars) {
  if (!v.is_string()) {
    fail("invalid_field", name, "field '" + name + "' must be a string, got " + type_name(v));
  }
  std::string s = v.get<std::string>();
  const std::size_t chars = utf8_length(s);
  if (chars > max_chars) {
    fail("invalid_field", name,
         "field '" + name + "' is too long: " + std::to_string(chars) + " characters, at most " +
             std::to_string(max_chars));
  }
  return s;
}

int side_field(const json& body, const char* name, int fallback, const HttpOptions& limits) {
  const json* v = optional_field(body, name);
  if (v == nullptr) return fallback;
  const int x = static_cast<int>(integer_field(*v, name, limits.min_side, limits.max_side));
  if (x % 8 != 0) {
    fail("invalid_field", name,
         std::string("field '") + name + "' must be a multiple of 8, got " + std::to_string(x));
  }
  return x;
}

json parse_object(std::string_view body) {
  if (body.find_first_not_of(" \t\r\n") == std::string_view::npos) {
    fail("invalid_json", "", "request body is empty; expected a JSON object");
  }
  json parsed;
  try {
    parsed = json::parse(body);
  } catch (const json::parse_error& e) {
    fail("invalid_json", "", std::string("request body is not valid JSON: ") + e.what());
  }
  if (!parsed.is_object()) {
    fail("invalid_json", "", "request body must be a JSON object, got " + type_name(parsed));
  }
  return parsed;
}

void reject_unknown_fields(const json& body) {
  std::string unknown;
  std::string first;
  for (const auto& [key, value] : body.items()) {
    if (known_fields().count(key)) continue;
    if (first.empty()) first = key;
    unknown += (unknown.empty() ? "'" : ", '") + key + "'";
  }
  if (!unknown.empty()) {
    fail("unknown_field", first,
         "unknown field(s) " + unknown +
             "; accepted fields: prompt, prompts, negative_prompt, n, "
             "steps, guidance_scale, seed, width, height, scheduler, priority");
  }
}

std::vector<std::string> read_prompts(const json& body, const HttpOptions& limits) {
  const json* one = optional_field(body, "prompt");
  const json* many = optional_field(body, "prompts");
  if (one != nullptr && many != nullptr) {
    fail("invalid_field", "prompts", "give either 'prompt' or 'prompts', not both");
  }
  if (one == nullptr && many == nullptr) {
    fail("missing_field", "prompt",
         "field 'prompt' (a string) or 'prompts' (an array) is required");
  }
  if (one != nullptr) return {text_field(*one, "prompt", limits.max_prompt_chars)};
  if (!many->is_array()) {
    fail("invalid_field", "prompts",
         "field 'prompts' must be an array of strings, got " + type_name(*many));
  }
  if (many->empty() || many->size() > static_cast<std::size_t>(limits.max_prompts)) {
    fail("invalid_field", "prompts",
         "field 'prompts' must hold 1 to " + std::to_string(limits.max_prompts) + " prompts, got " +
             std::to_string(many->size()));
  }
  std::vector<std::string> prompts;
  for (std::size_t i = 0; i < many->size(); ++i) {
    prompts.push_back(
        text_field((*many)[i], "prompts[" + std::to_string(i) + "]", limits.max_prompt_chars));
  }
  return prompts;
}

GenerateRequest build(const json& body, const ModelInfo& model,
                      const SchedulerResolver& resolve_scheduler, const HttpOptions& limits,
                      std::uint32_t random_seed) {
  reject_unknown_fields(body);
  GenerateRequest r;
  r.prompts = read_prompts(body, limits);
  if (const json* v = optional_field(body, "negative_prompt")) {
    r.negative_prompt = text_field(*v, "negative_prompt", limits.max_prompt_chars);
  }
  if (const json* v = optional_field(body, "n")) {
    r.n = static_cast<int>(integer_field(*v, "n", 1, limits.max_n));
  }
  const std::size_t images = r.prompts.size() * static_cast<std::size_t>(r.n);
  if (images > static_cast<std::size_t>(limits.max_images_per_job)) {
    fail("invalid_field", "n",
         "this request asks for " + std::to_string(images) + " images (prompts x n); at most " +
             std::to_string(limits.max_images_per_job) + " per job");
  }
  r.steps = model.default_steps;
  if (const json* v = optional_field(body, "steps")) {
    r.steps = static_cast<int>(integer_field(*v, "steps", 1, limits.max_steps));
  }
  r.guidance_scale = model.default_guidance_scale;
  if (const json* v = optional_field(body, "guidance_scale")) {
    if (!v->is_number()) {
      fail("invalid_field", "guidance_scale",
           "field 'guidance_scale' must be a number, got " + type_name(*v));
    }
    const double g = v->get<double>();
    if (!(g >= 0.0 && g <= limits.max_guidance_scale)) {
      fail("invalid_field", "guidance_scale",
           "field 'guidance_scale' must be between 0 and " +
               json(limits.max_guidance_scale).dump() + ", got " + v->dump());
    }
    r.guidance_scale = g;
  }
  r.seed = random_seed;
  if (const json* v = optional_field(body, "seed")) {
    if (v->is_number_integer() && !v->is_number_unsigned() && v->get<std::int64_t>() == -1) {
      r.seed = random_seed;  // A1111 convention: -1 = random
    } else if (v->is_number_unsigned() || (v->is_number_integer() && v->get<std::int64_t>() >= 0)) {
      r.seed = v->get<std::uint64_t>();
      if (r.seed > std::numeric_limits<std::uint64_t>::max() - (images - 1)) {
        fail("invalid_field", "seed",
             "field 'seed' is too large: seed + image index must fit in 64 bits");
      }
    } else {
      fail("invalid_field", "seed",
           "field 'seed' must be a non-negative integer or -1 (random), got " +
               (v->is_number_integer() ? v->dump() : type_name(*v)));
    }
  }
  r.width = side_field(body, "width", model.default_width, limits);
  r.height = side_field(body, "height", model.default_height, limits);
  const std::int64_t pixels = static_cast<std::int64_t>(r.width) * r.height;
  if (pixels > limits.max_pixels) {
    fail("invalid_field", optional_field(body, "width") ? "width" : "height",
         "width x height = " + std::to_string(pixels) + " pixels exceeds the limit of " +
             std::to_string(limits.max_pixels));
  }
  r.scheduler = model.default_scheduler;
  if (const json* v = optional_field(body, "scheduler")) {
    if (!v->is_string()) {
      fail("invalid_field", "scheduler",
           "field 'scheduler' must be a string, got " + type_name(*v));
    }
    const std::string name = v->get<std::string>();
    std::optional<std::string> canonical = resolve_scheduler(name);
    if (!canonical) {
      std::string known;
      for (const auto& s : model.schedulers) known += (known.empty() ? "" : ", ") + s.name;
      fail("unknown_scheduler", "scheduler",
           "field 'scheduler': unknown scheduler '" + name.substr(0, 100) + "'; known: " + known);
    }
    r.scheduler = *canonical;
  } else if (!r.scheduler.empty()) {
    if (auto canonical = resolve_scheduler(r.scheduler)) r.scheduler = *canonical;
  }
  if (const json* v = optional_field(body, "priority")) {
    r.priority =
        static_cast<int>(integer_field(*v, "priority", -limits.max_priority, limits.max_priority));
  }
  return r;
}

}  // namespace

std::size_t utf8_length(std::string_view text) {
  return static_cast<std::size_t>(std::count_if(text.begin(), text.end(), [](char c) {
    return (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  }));
}

std::variant<GenerateRequest, ValidationError> parse_generate_request(
    std::string_view body, const ModelInfo& model, const SchedulerResolver& resolve_scheduler,
    const HttpOptions& limits, std::uint32_t random_seed) {
  try {
    json parsed = parse_object(body);
    return build(parsed, model, resolve_scheduler, limits, random_seed);
  } catch (const Invalid& e) {
    return e.error;
  }
}

}  // namespace diffusiond::http_api
