#include "http/openai_request.h"

#include <set>

namespace diffusiond::http_api {
namespace {

using nlohmann::json;

[[noreturn]] void fail(const std::string& field, const std::string& message,
                       const std::string& reason = "invalid_field") {
  throw ServiceError(ErrorCode::invalid_request, message, reason, field);
}

const json* field(const json& body, const char* name) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

std::optional<std::string> text(const json& body, const char* name) {
  const json* v = field(body, name);
  if (!v) return std::nullopt;
  if (!v->is_string())
    fail(name, std::string("Invalid type for '") + name + "': expected a string");
  return v->get<std::string>();
}

std::optional<std::int64_t> integer(const json& body, const char* name) {
  const json* v = field(body, name);
  if (!v) return std::nullopt;
  if (!v->is_number_integer())
    fail(name, std::string("Invalid type for '") + name + "': expected an integer");
  return v->get<std::int64_t>();
}

std::string one_of(const json& body, const char* name, std::initializer_list<const char*> values,
                   const char* fallback) {
  const auto v = text(body, name);
  if (!v) return fallback;
  std::string list;
  for (const char* allowed : values) {
    if (*v == allowed) return *v;
    list += (list.empty() ? "'" : ", '") + std::string(allowed) + "'";
  }
  fail(name, "Invalid value for '" + std::string(name) + "': '" + v->substr(0, 60) +
                 "'. Supported values are: " + list + ".");
}

bool openai_model_name(const std::string& m) {
  return m.rfind("dall-e-", 0) == 0 || m.rfind("gpt-image-", 0) == 0 ||
         m.rfind("chatgpt-image-", 0) == 0;
}

}  // namespace

OpenAiImageRequest parse_openai_image_request(const json& body, const ModelInfo& model) {
  static const std::set<std::string> known = {"prompt",
                                              "model",
                                              "n",
                                              "size",
                                              "quality",
                                              "response_format",
                                              "output_format",
                                              "output_compression",
                                              "background",
                                              "moderation",
                                              "style",
                                              "user",
                                              "stream",
                                              "partial_images",
                                              "negative_prompt",
                                              "seed",
                                              "steps",
                                              "guidance_scale",
                                              "scheduler"};
  if (!body.is_object()) fail("", "The body must be a JSON object.", "invalid_json");
  for (const auto& [key, value] : body.items())
    if (!known.count(key))
      fail(key, "Unrecognized request argument supplied: " + key.substr(0, 60), "unknown_field");
  OpenAiImageRequest out;
  GenerateRequest& r = out.request;
  const auto prompt = text(body, "prompt");
  if (!prompt) fail("prompt", "Missing required parameter: 'prompt'.", "missing_field");
  r.prompts = {*prompt};
  r.negative_prompt = text(body, "negative_prompt");
  r.n = integer(body, "n").value_or(1);
  if (auto m = text(body, "model"); m && !m->empty() && !openai_model_name(*m)) r.model = *m;
  if (auto size = text(body, "size"); size && *size != "auto") {
    const auto x = size->find('x');
    try {
      std::size_t used_w = 0, used_h = 0;
      if (x == std::string::npos) throw std::invalid_argument("no x");
      r.width = std::stoll(size->substr(0, x), &used_w);
      r.height = std::stoll(size->substr(x + 1), &used_h);
      if (used_w != x || used_h != size->size() - x - 1) throw std::invalid_argument("junk");
    } catch (const std::exception&) {
      fail("size", "Invalid value for 'size': '" + size->substr(0, 40) +
                       "'. Use 'WIDTHxHEIGHT' (e.g. '512x512') or 'auto'.");
    }
  }
  out.quality =
      one_of(body, "quality", {"auto", "low", "medium", "high", "standard", "hd"}, "auto");
  const int d = model.default_steps;
  if (out.quality == "low") r.steps = std::max(1, (d + 3) / 4);
  if (out.quality == "medium") r.steps = std::max(1, (d + 1) / 2);
  if (out.quality == "auto") out.quality = "high";
  if (auto steps = integer(body, "steps")) r.steps = *steps;
  out.url = one_of(body, "response_format", {"b64_json", "url"}, "b64_json") == "url";
  out.format = *image_format_named(one_of(body, "output_format", {"png", "jpeg", "webp"}, "png"));
  if (auto c = integer(body, "output_compression")) {
    if (*c < 0 || *c > 100) fail("output_compression", "'output_compression' must be 0..100.");
    out.compression = std::max<int>(1, static_cast<int>(*c));
  }
  const std::string background =
      one_of(body, "background", {"auto", "opaque", "transparent"}, "auto");
  if (background == "transparent")
    fail("background",
         "background 'transparent' is not supported: diffusiond's models make "
         "opaque images; use 'opaque' or 'auto'.");
  one_of(body, "moderation", {"auto", "low"}, "auto");
  one_of(body, "style", {"vivid", "natural"}, "vivid");
  text(body, "user");
  if (const json* s = field(body, "stream")) {
    if (!s->is_boolean()) fail("stream", "Invalid type for 'stream': expected a boolean");
    out.stream = s->get<bool>();
  }
  if (auto partial = integer(body, "partial_images")) {
    if (*partial < 0 || *partial > 3) fail("partial_images", "'partial_images' must be 0..3.");
    out.partial_images = static_cast<int>(*partial);
  }
  if (auto seed = integer(body, "seed"); seed && *seed != -1) {
    if (*seed < 0) fail("seed", "'seed' must be -1 (random) or a non-negative integer.");
    r.seed = static_cast<std::uint64_t>(*seed);
  }
  if (const json* g = field(body, "guidance_scale")) {
    if (!g->is_number())
      fail("guidance_scale", "Invalid type for 'guidance_scale': expected a number");
    r.guidance_scale = g->get<double>();
  }
  r.scheduler = text(body, "scheduler");
  return out;
}

}  // namespace diffusiond::http_api
