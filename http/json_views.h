// JSON shapes of the API's answers (jobs, events, devices, model, schedulers).
// Owner: engineer "http". Pure functions; any thread.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "http/service.h"

namespace diffusiond::http_api {

// "/jobs/{id}", "/jobs/{id}/events", "/jobs/{id}/images/{k}.png"
std::string job_url(const std::string& id);
std::string events_url(const std::string& id);
std::string image_url(const std::string& id, int k);

bool is_terminal(JobStatus s);

nlohmann::json request_json(const GenerateRequest& r);
// The job as the API shows it: status, request, per-image seed/status/device/progress/url,
// overall progress, timings, error and links.
nlohmann::json job_json(const JobView& job);
nlohmann::json device_json(const DeviceView& d);
nlohmann::json model_json(const ModelInfo& m);
nlohmann::json schedulers_json(const ModelInfo& m);

}  // namespace diffusiond::http_api
