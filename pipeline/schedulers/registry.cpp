// The sampler names users type (canonical, AUTOMATIC1111 display names, diffusers class names)
// and the factory that builds each one. Ref: diffusers KarrasDiffusionSchedulers (the classes).
// Thread-safety: the registry is an immutable static; every function may be called from any
// thread.
#include <algorithm>
#include <cctype>
#include <stdexcept>

#include "pipeline/schedulers/factories.h"
#include "pipeline/schedulers/scheduler.h"

namespace diffusiond {
namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

std::string trim(const std::string& s) {
  const auto first = s.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) return {};
  const auto last = s.find_last_not_of(" \t\r\n");
  return s.substr(first, last - first + 1);
}

std::string valid_names_message() {
  std::string names, aliases;
  for (const auto& e : scheduler_registry()) {
    names += (names.empty() ? "" : ", ") + e.name;
    for (const auto& a : e.aliases) aliases += (aliases.empty() ? "\"" : ", \"") + a + "\"";
  }
  return "valid names: " + names + " (aliases: " + aliases + ")";
}

}  // namespace

const std::vector<SchedulerEntry>& scheduler_registry() {
  static const std::vector<SchedulerEntry> entries = {
      {"pndm", "PNDMScheduler", {"PLMS", "PNDM"}},
      {"ddim", "DDIMScheduler", {"DDIM"}},
      {"euler", "EulerDiscreteScheduler", {"Euler"}},
      {"euler_a", "EulerAncestralDiscreteScheduler", {"Euler a"}},
      {"dpmpp_2m", "DPMSolverMultistepScheduler", {"DPM++ 2M"}},
      {"dpmpp_2m_karras", "DPMSolverMultistepScheduler", {"DPM++ 2M Karras"}},
      {"lms", "LMSDiscreteScheduler", {"LMS"}},
      {"heun", "HeunDiscreteScheduler", {"Heun"}},
      {"unipc", "UniPCMultistepScheduler", {"UniPC"}},
      {"lcm", "LCMScheduler", {"LCM"}},
  };
  return entries;
}

std::optional<std::string> canonical_scheduler_name(const std::string& name_or_alias) {
  const std::string key = lower(trim(name_or_alias));
  if (key.empty()) return std::nullopt;
  for (const auto& e : scheduler_registry()) {
    if (key == e.name) return e.name;
    for (const auto& a : e.aliases) {
      if (key == lower(a)) return e.name;
    }
  }
  // diffusers class names, with or without the "Scheduler" suffix; the first entry of a class
  // wins (DPMSolverMultistepScheduler -> dpmpp_2m).
  for (const auto& e : scheduler_registry()) {
    const std::string cls = lower(e.diffusers_class);
    const std::string bare = cls.substr(0, cls.size() - std::string("scheduler").size());
    if (key == cls || key == bare) return e.name;
  }
  return std::nullopt;
}

std::string default_scheduler_name(const nlohmann::json& model_scheduler_config) {
  auto it = model_scheduler_config.find("_class_name");
  if (!model_scheduler_config.is_object() || it == model_scheduler_config.end() ||
      !it->is_string()) {
    throw std::invalid_argument(
        "scheduler_config.json: missing string key '_class_name' (cannot pick a default "
        "sampler; " +
        valid_names_message() + ")");
  }
  const std::string cls = it->get<std::string>();
  if (cls == "DPMSolverMultistepScheduler") {
    auto k = model_scheduler_config.find("use_karras_sigmas");
    const bool karras = k != model_scheduler_config.end() && k->is_boolean() && k->get<bool>();
    return karras ? "dpmpp_2m_karras" : "dpmpp_2m";
  }
  for (const auto& e : scheduler_registry()) {
    if (e.diffusers_class == cls) return e.name;
  }
  throw std::invalid_argument("scheduler_config.json: _class_name '" + cls +
                              "' is not a supported sampler; pick one explicitly (" +
                              valid_names_message() + ")");
}

std::unique_ptr<Scheduler> make_scheduler(const std::string& name_or_alias,
                                          const nlohmann::json& model_scheduler_config) {
  const std::optional<std::string> name = canonical_scheduler_name(name_or_alias);
  if (!name) {
    throw std::invalid_argument("unknown scheduler '" + name_or_alias + "'; " +
                                valid_names_message());
  }
  const nlohmann::json& cfg = model_scheduler_config;
  if (*name == "pndm") return make_pndm_scheduler(cfg);
  if (*name == "ddim") return make_ddim_scheduler(cfg);
  if (*name == "euler") return make_euler_scheduler(cfg);
  if (*name == "euler_a") return make_euler_ancestral_scheduler(cfg);
  if (*name == "dpmpp_2m") return make_dpmpp_2m_scheduler(cfg, false);
  if (*name == "dpmpp_2m_karras") return make_dpmpp_2m_scheduler(cfg, true);
  if (*name == "lms") return make_lms_scheduler(cfg);
  if (*name == "heun") return make_heun_scheduler(cfg);
  if (*name == "unipc") return make_unipc_scheduler(cfg);
  if (*name == "lcm") return make_lcm_scheduler(cfg);
  throw std::logic_error("scheduler registry: no factory for '" + *name + "'");
}

}  // namespace diffusiond
