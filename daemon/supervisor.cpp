#include "daemon/supervisor.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "daemon/sd_notify.h"

namespace diffusiond {

Supervisor::Supervisor(CoreService& service, JobStore& store, SupervisorOptions options)
    : service_(service),
      store_(store),
      options_(options),
      watchdog_(systemd_watchdog_interval()),
      last_prune_(std::chrono::steady_clock::now()) {}

Supervisor::~Supervisor() {
  stop();
}

void Supervisor::start() {
  if (watchdog_)
    spdlog::info("systemd watchdog every {} ms",
                 std::chrono::duration_cast<std::chrono::milliseconds>(*watchdog_).count());
  thread_ = std::thread([this] { run(); });
}

void Supervisor::stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Supervisor::tick() {
  std::string state = "STATUS=" + service_.status_line();
  if (watchdog_) {
    if (service_.workers_alive()) {
      state += "\nWATCHDOG=1";
      warned_dead_ = false;
    } else if (!warned_dead_) {
      spdlog::critical("a device worker is dead or stalled: no more watchdog pings");
      warned_dead_ = true;
    }
  }
  notify_systemd(state);
  const bool has_policy = options_.retention.any();
  // Due, or sooner (every 10 s at most) while the disk is full: the caps may free space.
  const auto since = std::chrono::steady_clock::now() - last_prune_;
  if (has_policy && (since >= options_.prune_every ||
                     (service_.storage_full() && since >= std::chrono::seconds(10)))) {
    last_prune_ = std::chrono::steady_clock::now();
    try {
      const auto result = store_.prune(options_.retention, unix_ms_now());
      if (result.jobs_deleted > 0)
        spdlog::info("retention: deleted {} finished job(s) and {} image file(s), {} MiB",
                     result.jobs_deleted, result.files_deleted, result.bytes_deleted >> 20);
    } catch (const std::exception& e) {
      spdlog::error("retention: {}", e.what());
    }
  }
}

void Supervisor::run() {
  auto period = std::chrono::duration_cast<std::chrono::milliseconds>(options_.status_every);
  if (watchdog_)  // ping at least twice per watchdog interval
    period =
        std::min(period, std::chrono::duration_cast<std::chrono::milliseconds>(*watchdog_ / 3));
  period = std::max(period, std::chrono::milliseconds(50));
  std::unique_lock lock(mu_);
  while (!stopping_) {
    lock.unlock();
    try {
      tick();
    } catch (const std::exception& e) {
      spdlog::error("supervisor: {}", e.what());
    }
    lock.lock();
    cv_.wait_for(lock, period, [&] { return stopping_; });
  }
}

}  // namespace diffusiond
