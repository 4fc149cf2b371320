#include "http/a1111_samplers.h"

#include <algorithm>
#include <array>
#include <cctype>

namespace diffusiond::http_api {
namespace {

// The Karras variant of a canonical sampler (the one pair the registry has).
struct KarrasPair {
  const char* plain;
  const char* karras;
};
constexpr std::array<KarrasPair, 1> kKarras{{{"dpmpp_2m", "dpmpp_2m_karras"}}};

// A1111's schedules (modules/sd_schedulers.py), name and label; supported: the first three.
struct Schedule {
  const char* name;
  const char* label;
  double rho;
};
constexpr std::array<Schedule, 3> kSupported{
    {{"automatic", "Automatic", -1}, {"normal", "Normal", -1}, {"karras", "Karras", 7.0}}};
constexpr std::array<const char*, 9> kUnsupported{"uniform",     "exponential", "polyexponential",
                                                  "sgm_uniform", "kl_optimal",  "align_your_steps",
                                                  "simple",      "ddim",        "beta"};

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  while (!s.empty() && s.back() == ' ') s.pop_back();
  while (!s.empty() && s.front() == ' ') s.erase(s.begin());
  return s;
}

ServiceError bad(const std::string& field, const std::string& message) {
  return ServiceError(ErrorCode::invalid_request, message, "unknown_scheduler", field);
}

const KarrasPair* karras_of(const std::string& canonical) {
  for (const auto& p : kKarras)
    if (canonical == p.plain || canonical == p.karras) return &p;
  return nullptr;
}

}  // namespace

std::optional<std::string> a1111_scheduler(const std::optional<std::string>& sampler_name,
                                           const std::optional<std::string>& scheduler,
                                           const ImageService& service) {
  const ModelInfo model = service.model_info();
  std::string base = model.default_scheduler;
  std::string implied = "automatic";
  const bool named = sampler_name && !lower(*sampler_name).empty();
  if (named) {
    const std::string asked = *sampler_name;
    std::optional<std::string> canonical = service.canonical_scheduler(asked);
    const std::string l = lower(asked);
    if (!canonical && l.size() > 7 && l.substr(l.size() - 7) == " karras") {
      canonical = service.canonical_scheduler(asked.substr(0, asked.find_last_not_of(' ') - 6));
      if (canonical) implied = "karras";
    }
    if (!canonical)
      throw bad("sampler_name", "unknown sampler_name '" + asked.substr(0, 100) +
                                    "'; GET /sdapi/v1/samplers lists them");
    if (const auto* pair = karras_of(*canonical); pair && *canonical == pair->karras) {
      implied = "karras";
      base = pair->plain;
    } else {
      base = *canonical;
    }
  }
  std::string schedule = scheduler ? lower(*scheduler) : std::string();
  if (schedule.empty() || schedule == "automatic") schedule = implied;
  const bool known = std::any_of(kSupported.begin(), kSupported.end(),
                                 [&](const Schedule& s) { return schedule == s.name; });
  if (!known) {
    const bool a1111 = std::any_of(kUnsupported.begin(), kUnsupported.end(),
                                   [&](const char* s) { return schedule == s; });
    throw bad("scheduler", (a1111 ? "scheduler '" + schedule + "' is not provided by diffusiond"
                                  : "unknown scheduler '" + schedule.substr(0, 100) + "'") +
                               "; use automatic, normal or karras (GET /sdapi/v1/schedulers)");
  }
  if (schedule == "karras") {
    const auto* pair = karras_of(base);
    if (!pair)
      throw bad("scheduler",
                "scheduler 'karras' is available only with the DPM++ 2M sampler in "
                "diffusiond, not with '" +
                    sampler_display(model.schedulers, base) + "'");
    return std::string(pair->karras);
  }
  if (!named && schedule != "normal") return std::nullopt;  // nothing asked: the model's default
  if (const auto* pair = karras_of(base)) return std::string(pair->plain);  // normal = no Karras
  return base;
}

nlohmann::json a1111_samplers_json(const ModelInfo& model) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& s : model.schedulers) {
    nlohmann::json aliases = nlohmann::json::array({s.name});
    for (std::size_t i = 1; i < s.aliases.size(); ++i) aliases.push_back(s.aliases[i]);
    out.push_back({{"name", s.aliases.empty() ? s.name : s.aliases.front()},
                   {"aliases", aliases},
                   {"options", nlohmann::json::object()}});
  }
  return out;
}

nlohmann::json a1111_schedulers_json() {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& s : kSupported)
    out.push_back({{"name", s.name},
                   {"label", s.label},
                   {"aliases", nullptr},
                   {"default_rho", s.rho},
                   {"need_inner_model", false}});
  return out;
}

}  // namespace diffusiond::http_api
