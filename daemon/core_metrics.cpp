// How CoreService reports its state: metrics_text (Prometheus text exposition), the systemd
// STATUS= line, the supervisor's liveness check and the queued-image count.
#include <spdlog/spdlog.h>

#include "daemon/core_service.h"

namespace diffusiond {

std::size_t CoreService::queued_images() const {
  std::lock_guard lock(mu_);
  std::size_t count = 0;
  for (const auto& [id, job] : active_)
    for (const auto& image : job.record.view.images) count += image.status == ImageStatus::queued;
  return count;
}

bool CoreService::workers_alive() const {
  if (draining_) return true;  // workers exit on purpose while draining
  if (dispatcher_.healthy_count() == 0) return false;
  for (const auto& worker : workers_) {
    if (!dispatcher_.healthy(worker->index())) continue;
    if (!worker->alive(options_.stall_limit)) return false;
  }
  return true;
}

std::string CoreService::status_line() const {
  int busy = 0, loaded = 0;
  for (const auto& worker : workers_) {
    const auto s = worker->stats();
    busy += s.busy ? 1 : 0;
    loaded += s.loaded ? 1 : 0;
  }
  std::string line = "queue=" + std::to_string(dispatcher_.queued()) +
                     " running=" + std::to_string(busy) +
                     " devices=" + std::to_string(dispatcher_.healthy_count()) + "/" +
                     std::to_string(workers_.size());
  if (loaded < static_cast<int>(workers_.size()) && !draining_) line += " loading";
  std::string unhealthy;
  for (const auto& worker : workers_) {
    const auto health = dispatcher_.health(worker->index()).health;
    if (health == DeviceHealth::unhealthy || health == DeviceHealth::probing)
      unhealthy += (unhealthy.empty() ? "" : ",") + worker->spec().name;
  }
  if (!unhealthy.empty()) line += " unhealthy=" + unhealthy;
  if (draining_) line += " draining";
  if (store_failed_) line += " store=failed";
  if (storage_->full()) line += " storage=full";
  return line;
}

std::string CoreService::metrics_text() const {
  PrometheusWriter w;
  w.header("diffusiond_ready", "gauge",
           "1 when ready (/readyz): replicas loaded, a healthy device, the store writable, space");
  w.sample("diffusiond_ready", {}, ready() ? 1 : 0);

  w.header("diffusiond_storage_full", "gauge",
           "1 while the data dir is full: no new jobs or images until space is freed");
  w.sample("diffusiond_storage_full", {}, storage_->full() ? 1 : 0);

  w.header("diffusiond_queue_depth", "gauge", "Image tasks waiting for a device");
  w.sample("diffusiond_queue_depth", {}, static_cast<double>(dispatcher_.queued()));

  w.header("diffusiond_jobs", "gauge", "Jobs in the store by state");
  try {
    for (const auto& [status, count] : store_.count_by_status())
      w.sample("diffusiond_jobs", {{"state", to_string(status)}}, static_cast<double>(count));
  } catch (const std::exception& e) {
    spdlog::warn("metrics: {}", e.what());
  }

  std::int64_t written = 0, failed = 0;
  {
    std::lock_guard lock(mu_);
    written = images_written_;
    failed = images_failed_;
  }
  w.header("diffusiond_images_written_total", "counter", "PNG files written");
  w.sample("diffusiond_images_written_total", {}, static_cast<double>(written));
  w.header("diffusiond_images_failed_total", "counter", "Images that failed for good");
  w.sample("diffusiond_images_failed_total", {}, static_cast<double>(failed));

  const auto views = devices();
  w.header("diffusiond_device_images_total", "counter", "Images generated per device");
  for (const auto& d : views)
    w.sample("diffusiond_device_images_total", {{"device", d.name}},
             static_cast<double>(d.images_done));
  w.header("diffusiond_device_steps_total", "counter", "Denoising steps run per device");
  for (const auto& d : views)
    w.sample("diffusiond_device_steps_total", {{"device", d.name}},
             static_cast<double>(d.steps_done));
  w.header("diffusiond_device_busy_ratio", "gauge", "Share of time generating since start");
  for (const auto& d : views)
    w.sample("diffusiond_device_busy_ratio", {{"device", d.name}}, d.busy_ratio);
  w.header("diffusiond_device_busy", "gauge", "1 while the device runs an image");
  for (const auto& d : views)
    w.sample("diffusiond_device_busy", {{"device", d.name}}, d.busy ? 1 : 0);
  w.header("diffusiond_device_healthy", "gauge",
           "1 while the device takes new work; 0 when unhealthy, probing or disabled");
  for (const auto& d : views)
    w.sample("diffusiond_device_healthy", {{"device", d.name}}, d.healthy ? 1 : 0);
  w.header("diffusiond_device_consecutive_failures", "gauge",
           "Failures in a row that count against the device (unhealthy at the threshold)");
  for (const auto& d : views)
    w.sample("diffusiond_device_consecutive_failures", {{"device", d.name}},
             d.consecutive_failures);
  w.header("diffusiond_device_failures_total", "counter",
           "Generations that failed on the device (each attempt)");
  for (const auto& d : views)
    w.sample("diffusiond_device_failures_total", {{"device", d.name}},
             static_cast<double>(d.images_failed));
  w.header("diffusiond_device_out_of_memory_total", "counter",
           "Generations that ran out of device memory");
  for (const auto& d : views)
    w.sample("diffusiond_device_out_of_memory_total", {{"device", d.name}},
             static_cast<double>(d.images_out_of_memory));
  w.header("diffusiond_device_memory_used_bytes", "gauge", "Device memory in use (0: unknown)");
  for (const auto& d : views)
    w.sample("diffusiond_device_memory_used_bytes", {{"device", d.name}},
             static_cast<double>(d.memory_used_bytes));
  w.header("diffusiond_device_models_loaded", "gauge", "Models the device holds now");
  for (const auto& d : views)
    w.sample("diffusiond_device_models_loaded", {{"device", d.name}},
             static_cast<double>(d.models.size()));
  w.header("diffusiond_device_model_loads_total", "counter",
           "Models loaded onto the device (the start-up load included)");
  for (const auto& d : views)
    w.sample("diffusiond_device_model_loads_total", {{"device", d.name}},
             static_cast<double>(d.model_loads));
  w.header("diffusiond_device_model_evictions_total", "counter",
           "Models dropped from the device to make room (least recently used)");
  for (const auto& d : views)
    w.sample("diffusiond_device_model_evictions_total", {{"device", d.name}},
             static_cast<double>(d.model_evictions));
  w.header("diffusiond_device_model_load_failures_total", "counter",
           "Model loads that failed on the device");
  for (const auto& d : views)
    w.sample("diffusiond_device_model_load_failures_total", {{"device", d.name}},
             static_cast<double>(d.model_load_failures));

  w.header("diffusiond_step_seconds", "histogram", "Time per denoising step");
  for (const auto& worker : workers_)
    w.histogram("diffusiond_step_seconds", {{"device", worker->spec().name}},
                worker->step_seconds());
  w.header("diffusiond_queue_wait_seconds", "histogram", "Time from queued to started, per image");
  w.histogram("diffusiond_queue_wait_seconds", {}, queue_wait_.snapshot());
  return w.text();
}

}  // namespace diffusiond
