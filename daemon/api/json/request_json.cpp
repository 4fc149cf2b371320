#include "daemon/api/json/request_json.h"

#include <optional>
#include <stdexcept>

namespace diffusiond {

nlohmann::json request_to_json(const JobRequest& r) {
  auto j = nlohmann::json{{"prompts", r.prompts},
                          {"negative_prompt", r.negative_prompt ? nlohmann::json(*r.negative_prompt)
                                                                : nlohmann::json(nullptr)},
                          {"n", r.n},
                          {"steps", r.steps},
                          {"guidance_scale", r.guidance_scale},
                          {"seed", r.seed},
                          {"width", r.width},
                          {"height", r.height},
                          {"scheduler", r.scheduler},
                          {"priority", r.priority}};
  // SDXL micro-conditioning: present only for models that take it.
  if (r.original_size) j["original_size"] = *r.original_size;
  if (r.crops_coords_top_left) j["crops_coords_top_left"] = *r.crops_coords_top_left;
  if (r.target_size) j["target_size"] = *r.target_size;
  if (r.negative_original_size) j["negative_original_size"] = *r.negative_original_size;
  if (r.negative_crops_coords_top_left)
    j["negative_crops_coords_top_left"] = *r.negative_crops_coords_top_left;
  if (r.negative_target_size) j["negative_target_size"] = *r.negative_target_size;
  // Present only when set, so that version-1 records read back unchanged.
  if (!r.model.empty()) j["model"] = r.model;
  if (!r.loras.empty()) {
    auto loras = nlohmann::json::array();
    for (const LoraRef& l : r.loras) loras.push_back({{"name", l.name}, {"weight", l.weight}});
    j["loras"] = loras;
  }
  if (r.prompt_syntax != PromptSyntax::plain) j["prompt_syntax"] = to_string(r.prompt_syntax);
  return j;
}

namespace {
template <typename T>
T field(const nlohmann::json& json, const char* name) {
  auto it = json.find(name);
  if (it == json.end()) throw std::runtime_error(std::string("request lacks '") + name + "'");
  try {
    return it->get<T>();
  } catch (const nlohmann::json::exception&) {
    throw std::runtime_error(std::string("request has a mistyped '") + name + "'");
  }
}
// An optional field: absent or null -> unset.
template <typename T>
std::optional<T> optional(const nlohmann::json& json, const char* name) {
  auto it = json.find(name);
  if (it == json.end() || it->is_null()) return std::nullopt;
  return field<T>(json, name);
}
}  // namespace

JobRequest request_from_json(const nlohmann::json& json) {
  if (!json.is_object()) throw std::runtime_error("request is not a JSON object");
  JobRequest r;
  r.prompts = field<std::vector<std::string>>(json, "prompts");
  r.negative_prompt = optional<std::string>(json, "negative_prompt");
  r.n = field<int>(json, "n");
  r.steps = field<int>(json, "steps");
  r.guidance_scale = field<double>(json, "guidance_scale");
  r.seed = field<std::uint64_t>(json, "seed");
  r.width = field<int>(json, "width");
  r.height = field<int>(json, "height");
  r.scheduler = field<std::string>(json, "scheduler");
  r.priority = field<int>(json, "priority");
  r.original_size = optional<std::array<int, 2>>(json, "original_size");
  r.crops_coords_top_left = optional<std::array<int, 2>>(json, "crops_coords_top_left");
  r.target_size = optional<std::array<int, 2>>(json, "target_size");
  r.negative_original_size = optional<std::array<int, 2>>(json, "negative_original_size");
  r.negative_crops_coords_top_left =
      optional<std::array<int, 2>>(json, "negative_crops_coords_top_left");
  r.negative_target_size = optional<std::array<int, 2>>(json, "negative_target_size");
  r.model = optional<std::string>(json, "model").value_or("");
  if (auto loras = json.find("loras"); loras != json.end() && loras->is_array())
    for (const auto& l : *loras)
      r.loras.push_back({field<std::string>(l, "name"), field<double>(l, "weight")});
  const std::string syntax = optional<std::string>(json, "prompt_syntax").value_or("plain");
  if (syntax == "a1111")
    r.prompt_syntax = PromptSyntax::a1111;
  else if (syntax != "plain")
    throw std::runtime_error("request has an unknown prompt_syntax '" + syntax + "'");
  return r;
}

}  // namespace diffusiond
