// The supervisor thread of `diffusiond serve`: every few seconds it tells systemd the STATUS=
// (queue depth, running images, healthy devices), pings WATCHDOG=1 while the device workers are
// alive (only when systemd set a watchdog; a stalled or dead worker stops the pings so systemd
// restarts the daemon), and applies the retention policy every `prune_every`.
// Owner: cmd_serve. Thread-safety: start/stop from the control thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <thread>

#include "daemon/core_service.h"
#include "daemon/job_store.h"

namespace diffusiond {

struct SupervisorOptions {
  RetentionPolicy retention;
  std::chrono::milliseconds prune_every{std::chrono::minutes(10)};
  std::chrono::milliseconds status_every{std::chrono::seconds(5)};
};

class Supervisor {
 public:
  Supervisor(CoreService& service, JobStore& store, SupervisorOptions options);
  ~Supervisor();  // stop()
  void start();
  void stop();  // idempotent

  // One round (public for tests): STATUS=, WATCHDOG=1 if alive, prune when due.
  void tick();

 private:
  void run();

  CoreService& service_;
  JobStore& store_;
  const SupervisorOptions options_;
  std::optional<std::chrono::microseconds> watchdog_;
  std::chrono::steady_clock::time_point last_prune_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread thread_;
  bool warned_dead_ = false;
};

}  // namespace diffusiond
