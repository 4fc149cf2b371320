#include "http/json_views.h"

#include "daemon/api/json/request_json.h"

#include <set>

namespace diffusiond::http_api {
namespace {

using nlohmann::json;

json ms_or_null(std::int64_t ms) {
  return ms > 0 ? json(ms) : json(nullptr);
}
json text_or_null(const std::string& s) {
  return s.empty() ? json(nullptr) : json(s);
}

json image_json(const std::string& job_id, const ImageView& img) {
  return {{"index", img.index},
          {"prompt", img.prompt},
          {"seed", img.seed},
          {"status", to_string(img.status)},
          {"device", text_or_null(img.device)},
          {"step", img.step},
          {"steps", img.steps},
          {"url", img.has_file ? json(image_url(job_id, img.index)) : json(nullptr)},
          {"error", text_or_null(img.error)},
          {"started_ms", ms_or_null(img.started_ms)},
          {"finished_ms", ms_or_null(img.finished_ms)},
          {"batch_size", img.batch_size > 0 ? json(img.batch_size) : json(nullptr)}};
}

}  // namespace

std::string job_url(const std::string& id) {
  return "/jobs/" + id;
}
std::string events_url(const std::string& id) {
  return "/jobs/" + id + "/events";
}
std::string image_url(const std::string& id, int k) {
  return "/jobs/" + id + "/images/" + std::to_string(k) + ".png";
}

json job_json(const JobView& job) {
  json images = json::array();
  std::set<std::string> devices;
  int steps_done = 0, steps_total = 0, images_done = 0;
  for (const ImageView& img : job.images) {
    images.push_back(image_json(job.id, img));
    if (!img.device.empty()) devices.insert(img.device);
    steps_done += img.step;
    steps_total += img.steps > 0 ? img.steps : job.request.steps;
    if (img.status == ImageStatus::done) ++images_done;
  }
  json timings = {{"queue_wait_ms", nullptr}, {"run_ms", nullptr}};
  if (job.started_ms > 0 && job.created_ms > 0)
    timings["queue_wait_ms"] = job.started_ms - job.created_ms;
  if (job.finished_ms > 0 && job.started_ms > 0)
    timings["run_ms"] = job.finished_ms - job.started_ms;
  return {{"id", job.id},
          {"status", to_string(job.status)},
          {"model", job.model},
          {"request", request_to_json(job.request)},
          {"images", std::move(images)},
          {"devices", devices},
          {"progress",
           {{"step", steps_done},
            {"steps", steps_total},
            {"images_done", images_done},
            {"images", job.images.size()}}},
          {"created_ms", ms_or_null(job.created_ms)},
          {"started_ms", ms_or_null(job.started_ms)},
          {"finished_ms", ms_or_null(job.finished_ms)},
          {"timings", timings},
          {"error", text_or_null(job.error)},
          {"links", {{"self", job_url(job.id)}, {"events", events_url(job.id)}}}};
}

json device_json(const DeviceView& d) {
  json batch = json::array();
  for (const auto& b : d.current_batch) batch.push_back({{"job_id", b.job_id}, {"image", b.image}});
  return {{"name", d.name},
          {"description", d.description},
          {"memory_total_bytes", d.memory_total_bytes},
          {"memory_used_bytes", d.memory_used_bytes},
          {"loaded", d.loaded},
          {"healthy", d.healthy},
          {"health", to_string(d.health)},
          {"consecutive_failures", d.consecutive_failures},
          {"images_failed", d.images_failed},
          {"images_out_of_memory", d.images_out_of_memory},
          {"last_error", text_or_null(d.last_error)},
          {"last_error_ms", ms_or_null(d.last_error_ms)},
          {"next_probe_ms", ms_or_null(d.next_probe_ms)},
          {"busy", d.busy},
          {"state", !d.healthy  ? to_string(d.health)
                    : !d.loaded ? "loading"
                    : d.busy    ? "busy"
                                : "idle"},
          {"current_job", text_or_null(d.current_job)},
          {"current_batch", batch},
          {"batch_size", d.current_batch.size()},
          {"images_done", d.images_done},
          {"steps_done", d.steps_done},
          {"steps_per_second", d.steps_per_second},
          {"busy_ratio", d.busy_ratio},
          {"models", d.models},
          {"model_loads", d.model_loads},
          {"model_evictions", d.model_evictions},
          {"model_load_failures", d.model_load_failures}};
}

json model_json(const ModelInfo& m) {
  json presets = json::array();
  for (const auto& wh : m.size_presets) presets.push_back({wh[0], wh[1]});
  const std::string hash = short_hash(m);
  return {{"name", m.name},
          {"title", model_title(m)},
          {"path", m.path},
          {"file_name", text_or_null(m.file_name)},
          {"format", m.format},
          {"size_bytes", m.size_bytes},
          {"sha256", text_or_null(m.sha256)},
          {"hash", text_or_null(hash)},
          {"is_default", m.is_default},
          {"loaded_on", m.loaded_on},
          {"family", m.family},
          {"is_test_model", m.is_test_model},
          {"notice", text_or_null(m.notice)},
          {"micro_conditioning", m.micro_conditioning},
          {"size_presets", std::move(presets)},
          {"defaults",
           {{"width", m.default_width},
            {"height", m.default_height},
            {"steps", m.default_steps},
            {"guidance_scale", m.default_guidance_scale},
            {"scheduler", m.default_scheduler}}}};
}

json loras_json(const std::vector<LoraView>& loras) {
  json list = json::array();
  for (const LoraView& l : loras)
    list.push_back({{"name", l.name},
                    {"size_bytes", l.size_bytes},
                    {"sha256", l.sha256},
                    {"short_hash", l.short_hash}});
  return {{"loras", std::move(list)}};
}

json schedulers_json(const ModelInfo& m) {
  json list = json::array();
  for (const SchedulerName& s : m.schedulers) {
    list.push_back({{"name", s.name}, {"aliases", s.aliases}});
  }
  return {{"default", m.default_scheduler}, {"schedulers", std::move(list)}};
}

}  // namespace diffusiond::http_api
