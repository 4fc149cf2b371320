// CoreService::metrics_text: the Prometheus text exposition of the daemon's state.
#include <spdlog/spdlog.h>

#include "daemon/core_service.h"

namespace diffusiond {

std::string CoreService::metrics_text() const {
  PrometheusWriter w;
  w.header("diffusiond_ready", "gauge", "1 when every model replica is loaded");
  w.sample("diffusiond_ready", {}, ready() ? 1 : 0);

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
  w.header("diffusiond_device_healthy", "gauge", "0 once a device is marked unhealthy");
  for (const auto& d : views)
    w.sample("diffusiond_device_healthy", {{"device", d.name}}, d.healthy ? 1 : 0);
  w.header("diffusiond_device_memory_used_bytes", "gauge", "Device memory in use (0: unknown)");
  for (const auto& d : views)
    w.sample("diffusiond_device_memory_used_bytes", {{"device", d.name}},
             static_cast<double>(d.memory_used_bytes));

  w.header("diffusiond_step_seconds", "histogram", "Time per denoising step");
  for (const auto& worker : workers_)
    w.histogram("diffusiond_step_seconds", {{"device", worker->spec().name}},
                worker->step_seconds());
  w.header("diffusiond_queue_wait_seconds", "histogram", "Time from queued to started, per image");
  w.histogram("diffusiond_queue_wait_seconds", {}, queue_wait_.snapshot());
  return w.text();
}

}  // namespace diffusiond
