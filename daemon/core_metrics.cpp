// How CoreService reports its state: metrics_text (Prometheus text exposition), the systemd
// STATUS= line, the supervisor's liveness check and the queued-image count.
#include <spdlog/spdlog.h>

#include "daemon/core_service.h"
#include "daemon/core_shared.h"

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

  write_device_metrics(w, devices(), workers_);
  w.header("diffusiond_queue_wait_seconds", "histogram", "Time from queued to started, per image");
  w.histogram("diffusiond_queue_wait_seconds", {}, queue_wait_.snapshot());
  return w.text();
}

}  // namespace diffusiond
