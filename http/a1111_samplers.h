// AUTOMATIC1111's sampler vocabulary mapped onto diffusiond's canonical schedulers (the registry:
// pipeline/schedulers/registry.cpp, seen here through ImageService::canonical_scheduler and
// ModelInfo::schedulers). A1111 >= 1.9 names the sampler ("DPM++ 2M") and the noise schedule
// ("karras") apart; older clients send combined names ("DPM++ 2M Karras"). Both work:
//   - scheduler "automatic" (or absent/empty) and "normal": the sampler's own schedule, as the
//     model's scheduler_config.json sets it (diffusers' behaviour);
//   - "karras": Karras sigmas; diffusiond has them for DPM++ 2M (dpmpp_2m_karras) only;
//   - a combined old name gives its schedule unless the scheduler field names another one;
//   - every other A1111 schedule (exponential, sgm_uniform, ...) is a 400 naming `scheduler`.
// Pure functions; any thread.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "daemon/api/service.h"

namespace diffusiond::http_api {

// The canonical scheduler for an A1111 sampler_name + scheduler pair; nullopt when neither says
// anything (the model's default applies). Throws ServiceError invalid_request (unknown_scheduler,
// field "sampler_name" or "scheduler").
std::optional<std::string> a1111_scheduler(const std::optional<std::string>& sampler_name,
                                           const std::optional<std::string>& scheduler,
                                           const ImageService& service);

// GET /sdapi/v1/samplers: [{name, aliases, options}], name = the A1111 display name.
nlohmann::json a1111_samplers_json(const ModelInfo& model);
// GET /sdapi/v1/schedulers: [{name, label, aliases, default_rho, need_inner_model}].
nlohmann::json a1111_schedulers_json();

}  // namespace diffusiond::http_api
