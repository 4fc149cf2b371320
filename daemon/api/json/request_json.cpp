#include "daemon/api/json/request_json.h"

#include <stdexcept>

namespace diffusiond {

nlohmann::json request_to_json(const JobRequest& r) {
  return nlohmann::json{{"prompts", r.prompts},
                        {"negative_prompt", r.negative_prompt},
                        {"n", r.n},
                        {"steps", r.steps},
                        {"guidance_scale", r.guidance_scale},
                        {"seed", r.seed},
                        {"width", r.width},
                        {"height", r.height},
                        {"scheduler", r.scheduler},
                        {"priority", r.priority}};
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
}  // namespace

JobRequest request_from_json(const nlohmann::json& json) {
  if (!json.is_object()) throw std::runtime_error("request is not a JSON object");
  JobRequest r;
  r.prompts = field<std::vector<std::string>>(json, "prompts");
  r.negative_prompt = field<std::string>(json, "negative_prompt");
  r.n = field<int>(json, "n");
  r.steps = field<int>(json, "steps");
  r.guidance_scale = field<double>(json, "guidance_scale");
  r.seed = field<std::uint64_t>(json, "seed");
  r.width = field<int>(json, "width");
  r.height = field<int>(json, "height");
  r.scheduler = field<std::string>(json, "scheduler");
  r.priority = field<int>(json, "priority");
  return r;
}

}  // namespace diffusiond
