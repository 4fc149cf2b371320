// StorageGuard: whether the data dir can take more writes ("storage full" or not).
//
// The data dir is full when a write failed for lack of space (the store writer's SQLITE_FULL, a
// PNG write's ENOSPC or EDQUOT: report_full()) or when the free space drops below
// `min_free_bytes` (checked every `interval` with statvfs, so the daemon stops taking work
// before SQLite or a PNG hits the wall). It is clear again once the free space is back above
// the reserve and a probe file of `probe_bytes` can be written and synced there.
// While full the core takes no new jobs (storage_full), /readyz is not ready and the devices
// take no new images; nothing already accepted is dropped.
//
// Owner: CoreService. Thread-safety: report_full/full/reason from any thread; the callback runs
// on the thread that changed the state (the guard's own thread or a reporter), outside the
// guard's lock; it must not call back into the guard.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

namespace diffusiond {

// True for a failure that only says "no space": StoreError::storage_full(), or a
// std::system_error with ENOSPC or EDQUOT. The one place that classifies write errors.
bool is_storage_full_error(const std::exception& e);

struct StorageGuardOptions {
  std::filesystem::path dir;                    // the data dir
  std::uint64_t min_free_bytes = 100ull << 20;  // reserve; 0 = only react to failed writes
  std::chrono::milliseconds interval{1000};     // statvfs (and, while full, probe) period
  std::uint64_t probe_bytes = 64 * 1024;        // written and synced to prove space is back
};

class StorageGuard {
 public:
  // on_change(full, why): called once per transition.
  StorageGuard(StorageGuardOptions options,
               std::function<void(bool, const std::string&)> on_change);
  ~StorageGuard();  // stop()
  StorageGuard(const StorageGuard&) = delete;
  StorageGuard& operator=(const StorageGuard&) = delete;

  void start();  // the checking thread; before it, only report_full() changes the state
  void stop();   // idempotent

  // A write failed for lack of space: full until the checks say otherwise.
  void report_full(const std::string& why);
  bool full() const;
  std::string reason() const;  // why it is full ("" when not)

  // One round of checks (public for tests): statvfs, then the probe while full.
  void check_now();

 private:
  void run();
  void set_state(bool full, const std::string& why);
  bool probe() const;  // writes, syncs and removes the probe file

  const StorageGuardOptions options_;
  const std::function<void(bool, const std::string&)> on_change_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool full_ = false;
  std::string reason_;
  bool stopping_ = false;
  std::mutex change_mu_;  // serialises transitions and their callbacks
  std::thread thread_;
};

}  // namespace diffusiond
