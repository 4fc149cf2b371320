// How ClusterService reports its state: /devices (its own devices), /readyz, /metrics (its own
// devices plus the fleet's queue), the systemd STATUS= line and the liveness check.
#include <spdlog/spdlog.h>

#include "daemon/core_shared.h"
#include "daemon/metrics.h"
#include "daemon/pg/cluster_service.h"
#include "daemon/pg/pg_pool.h"
#include "daemon/submit_checks.h"

namespace diffusiond {

std::vector<DeviceView> ClusterService::devices() const {
  std::vector<DeviceView> out;
  for (const auto& worker : workers_)
    out.push_back(device_view(worker->stats(), dispatcher_.health(worker->index()), models_));
  return out;
}

std::optional<ServiceError> ClusterService::not_ready() const {
  if (draining_)
    return ServiceError(ErrorCode::unavailable, "the daemon is shutting down", "draining", {}, 5);
  {
    std::lock_guard lock(db_mu_);
    if (!db_error_.empty())
      return ServiceError(ErrorCode::unavailable, "the job store is unreachable: " + db_error_,
                          "store_unreachable", {}, 5);
  }
  std::lock_guard lock(load_mu_);
  return devices_not_ready(dispatcher_, static_cast<int>(workers_.size()), loads_finished_,
                           loads_ok_);
}

bool ClusterService::workers_alive() const {
  if (draining_) return true;
  if (dispatcher_.healthy_count() == 0) return false;
  for (const auto& worker : workers_)
    if (dispatcher_.healthy(worker->index()) && !worker->alive(options_.stall_limit)) return false;
  return true;
}

std::string ClusterService::status_line() const {
  int busy = 0;
  for (const auto& worker : workers_) busy += worker->stats().busy ? 1 : 0;
  std::string line;
  {
    std::lock_guard lock(mu_);
    line = "fleet_queue=" + std::to_string(fleet_.queued) + " running=" + std::to_string(busy) +
           " devices=" + std::to_string(dispatcher_.healthy_count()) + "/" +
           std::to_string(workers_.size()) + " daemons=" + std::to_string(fleet_daemons_);
  }
  {
    std::lock_guard lock(db_mu_);
    if (!db_error_.empty()) line += " store=unreachable";
  }
  if (draining_) line += " draining";
  return line;
}

std::string ClusterService::metrics_text() const {
  PrometheusWriter w;
  w.header("diffusiond_ready", "gauge",
           "1 when ready (/readyz): replicas loaded, a healthy device, the database reachable");
  w.sample("diffusiond_ready", {}, ready() ? 1 : 0);
  bool reachable = false;
  {
    std::lock_guard lock(db_mu_);
    reachable = db_error_.empty();
  }
  w.header("diffusiond_store_reachable", "gauge", "1 while the PostgreSQL job store answers");
  w.sample("diffusiond_store_reachable", {}, reachable ? 1 : 0);
  pg::QueueCounts fleet;
  int daemons = 0;
  std::int64_t done = 0, failed = 0, lost = 0, claims = 0, local = 0;
  {
    std::lock_guard lock(mu_);
    fleet = fleet_;
    daemons = fleet_daemons_;
    done = images_done_;
    failed = images_failed_;
    lost = images_lost_;
    claims = claims_;
    local = static_cast<std::int64_t>(local_.size());
  }
  w.header("diffusiond_queue_depth", "gauge",
           "Image tasks waiting in the fleet's queue (PostgreSQL), as of the last heartbeat");
  w.sample("diffusiond_queue_depth", {}, static_cast<double>(fleet.queued));
  w.header("diffusiond_fleet_running_images", "gauge",
           "Images claimed by a daemon of the fleet, as of the last heartbeat");
  w.sample("diffusiond_fleet_running_images", {}, static_cast<double>(fleet.running));
  w.header("diffusiond_fleet_daemons", "gauge", "Daemons with a recent heartbeat");
  w.sample("diffusiond_fleet_daemons", {}, daemons);
  w.header("diffusiond_claimed_images", "gauge", "Images this daemon holds a lease on");
  w.sample("diffusiond_claimed_images", {}, static_cast<double>(local));
  w.header("diffusiond_claims_total", "counter", "Images this daemon claimed");
  w.sample("diffusiond_claims_total", {}, static_cast<double>(claims));
  w.header("diffusiond_images_written_total", "counter", "PNGs this daemon stored");
  w.sample("diffusiond_images_written_total", {}, static_cast<double>(done));
  w.header("diffusiond_images_failed_total", "counter", "Images that failed for good here");
  w.sample("diffusiond_images_failed_total", {}, static_cast<double>(failed));
  w.header("diffusiond_images_lost_total", "counter",
           "Images whose lease this daemon lost to another daemon (result dropped)");
  w.sample("diffusiond_images_lost_total", {}, static_cast<double>(lost));
  w.header("diffusiond_jobs", "gauge", "Jobs in the store by state");
  try {
    auto counts = pool_->with([](PgConnection& db) { return pg::count_by_status(db); });
    for (const auto& [status, count] : counts)
      w.sample("diffusiond_jobs", {{"state", to_string(status)}}, static_cast<double>(count));
  } catch (const std::exception& e) {
    spdlog::warn("metrics: {}", e.what());
  }
  write_device_metrics(w, devices(), workers_);
  w.header("diffusiond_claim_seconds", "histogram",
           "Time of one claim statement (UPDATE ... FOR UPDATE SKIP LOCKED) against PostgreSQL");
  w.histogram("diffusiond_claim_seconds", {}, claim_seconds_.snapshot());
  w.header("diffusiond_store_write_seconds", "histogram",
           "Time of one result write (start, PNG, failure) to PostgreSQL, on the writer thread");
  w.histogram("diffusiond_store_write_seconds", {}, write_seconds_.snapshot());
  w.header("diffusiond_queue_wait_seconds", "histogram",
           "Time from queued to claimed by this daemon, per image");
  w.histogram("diffusiond_queue_wait_seconds", {}, queue_wait_.snapshot());
  return w.text();
}

}  // namespace diffusiond
