// JSON shapes of the API's answers (jobs, events, devices, model, schedulers).
// Pure functions; any thread. The "request" object is daemon/api/json/request_json.h's.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "daemon/api/service.h"

namespace diffusiond::http_api {

// "/jobs/{id}", "/jobs/{id}/events", "/jobs/{id}/images/{k}.png"
std::string job_url(const std::string& id);
std::string events_url(const std::string& id);
std::string image_url(const std::string& id, int k);

// The job as the API shows it: status, request, per-image seed/status/device/progress/url,
// overall progress, timings, error and links.
nlohmann::json job_json(const JobView& job);
nlohmann::json device_json(const DeviceView& d);
nlohmann::json model_json(const ModelInfo& m);
nlohmann::json schedulers_json(const ModelInfo& m);
// {"loras": [{"name", "size_bytes", "sha256", "short_hash"}]} (no paths).
nlohmann::json loras_json(const std::vector<LoraView>& loras);

}  // namespace diffusiond::http_api
