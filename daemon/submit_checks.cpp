#include "daemon/submit_checks.h"

#include <algorithm>

#include "daemon/device_worker.h"
#include "daemon/job.h"

namespace diffusiond {

int resolve_model(const std::vector<ModelInfo>& models, const GenerateRequest& asked) {
  if (const auto found = find_model(models, asked.model.value_or("")))
    return static_cast<int>(*found);
  throw ServiceError(ErrorCode::invalid_request,
                     "unknown model '" + asked.model.value_or("").substr(0, 100) +
                         "'; this daemon serves: " + model_names(models) + " (GET /models)",
                     "unknown_model", "model");
}

void check_loras(const LoraCatalog* catalog, const std::vector<LoraRef>& loras) {
  for (std::size_t i = 0; i < loras.size(); ++i) {
    const std::string& name = loras[i].name;
    if (catalog && catalog->find(name)) continue;
    std::string known;
    if (catalog) {
      const auto names = catalog->names();
      for (std::size_t k = 0; k < names.size() && k < 10; ++k) known += (k ? ", " : "") + names[k];
      if (names.size() > 10) known += ", ... (" + std::to_string(names.size()) + " in all)";
    }
    throw ServiceError(ErrorCode::invalid_request,
                       "unknown LoRA '" + name.substr(0, 100) + "': no " + name.substr(0, 100) +
                           ".safetensors in the LoRA folder (--lora-dir)" +
                           (known.empty() ? "; it holds no LoRA" : "; known: " + known),
                       "unknown_lora", "loras");
  }
}

void check_priority(const JobRequest& request, const SubmitContext& context) {
  if (request.priority > 0 && !context.may_prioritise)
    throw ServiceError(ErrorCode::forbidden,
                       "priority " + std::to_string(request.priority) +
                           " needs an API key allowed to prioritise (--priority-api-key); "
                           "priorities of 0 and below are open to every caller",
                       "priority_not_allowed", "priority");
}

DeviceView device_view(const WorkerStats& s, const DeviceHealthState& health,
                       const std::vector<ModelInfo>& models) {
  DeviceView d;
  d.name = s.name;
  d.description = s.loaded ? s.description
                           : (s.load_finished ? "model failed to load: " + s.load_error
                                              : std::string("loading the model"));
  d.memory_total_bytes = s.memory.total_bytes;
  d.memory_used_bytes = s.memory.used_bytes;
  d.loaded = s.loaded;
  d.healthy = health.health == DeviceHealth::healthy;
  d.health = health.health;
  d.consecutive_failures = health.consecutive_failures;
  if (health.health == DeviceHealth::unhealthy)
    d.next_probe_ms = unix_ms_now() + health.probe_in.count();
  d.images_failed = s.images_failed;
  d.images_out_of_memory = s.images_out_of_memory;
  d.last_error = s.last_error;
  d.last_error_ms = s.last_error_ms;
  d.busy = s.busy;
  d.current_job = s.current_job;
  for (const auto& task : s.current_batch) d.current_batch.push_back({task.job_id, task.image});
  d.images_done = s.images_done;
  d.steps_done = s.steps_done;
  d.steps_per_second = s.steps_per_second;
  d.busy_ratio = s.uptime_seconds > 0 ? std::min(1.0, s.busy_seconds / s.uptime_seconds) : 0;
  for (int id : s.models)
    if (id >= 0 && id < static_cast<int>(models.size()))
      d.models.push_back(models[static_cast<std::size_t>(id)].name);
  d.model_loads = s.model_loads;
  d.model_evictions = s.model_evictions;
  d.model_load_failures = s.model_load_failures;
  return d;
}

}  // namespace diffusiond
