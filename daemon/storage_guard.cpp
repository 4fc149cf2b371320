#include "daemon/storage_guard.h"

#include <sys/statvfs.h>
#include <unistd.h>

#include <pthread.h>
#include <cerrno>
#include <system_error>

#include "daemon/atomic_file.h"
#include "daemon/job_store.h"

namespace diffusiond {

bool is_storage_full_error(const std::exception& e) {
  if (const auto* store = dynamic_cast<const StoreError*>(&e)) return store->storage_full();
  if (const auto* sys = dynamic_cast<const std::system_error*>(&e)) {
    const int err = sys->code().value();
    return sys->code().category() == std::generic_category() && (err == ENOSPC || err == EDQUOT);
  }
  return false;
}

namespace {
std::string mib(std::uint64_t bytes) {
  return std::to_string(bytes >> 20) + " MiB";
}
}  // namespace

StorageGuard::StorageGuard(StorageGuardOptions options,
                           std::function<void(bool, const std::string&)> on_change)
    : options_(std::move(options)), on_change_(std::move(on_change)) {}

StorageGuard::~StorageGuard() {
  stop();
}

void StorageGuard::start() {
  std::lock_guard lock(mu_);
  if (thread_.joinable() || stopping_) return;
  thread_ = std::thread([this] { run(); });
}

void StorageGuard::stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void StorageGuard::report_full(const std::string& why) {
  set_state(true, why);
}

bool StorageGuard::full() const {
  std::lock_guard lock(mu_);
  return full_;
}

std::string StorageGuard::reason() const {
  std::lock_guard lock(mu_);
  return reason_;
}

void StorageGuard::check_now() {
  struct statvfs st {};
  if (::statvfs(options_.dir.c_str(), &st) != 0) return;  // cannot tell: keep the state
  const std::uint64_t free_bytes = std::uint64_t{st.f_bavail} * st.f_frsize;
  const bool no_inodes = st.f_files > 0 && st.f_favail == 0;
  if (free_bytes < options_.min_free_bytes || no_inodes) {
    set_state(true, no_inodes ? "no free inodes are left in " + options_.dir.string()
                              : "only " + mib(free_bytes) + " free in " + options_.dir.string() +
                                    " (reserve: " + mib(options_.min_free_bytes) + ")");
    return;
  }
  if (full() && probe()) set_state(false, {});
}

void StorageGuard::run() {
  pthread_setname_np(pthread_self(), "storage guard");
  for (;;) {
    check_now();
    std::unique_lock lock(mu_);
    if (cv_.wait_for(lock, options_.interval, [&] { return stopping_; })) return;
  }
}

void StorageGuard::set_state(bool full, const std::string& why) {
  std::lock_guard change(change_mu_);
  {
    std::lock_guard lock(mu_);
    if (full_ == full) {
      if (full) reason_ = why;  // the newest reason
      return;
    }
    full_ = full;
    reason_ = why;
  }
  if (on_change_) on_change_(full, why);
}

bool StorageGuard::probe() const {
  const auto path = options_.dir / ".storage-probe";
  try {
    write_file_atomically(path, std::string(options_.probe_bytes, '\0'));
  } catch (const std::exception&) {
    ::unlink(path.c_str());
    return false;
  }
  ::unlink(path.c_str());
  return true;
}

}  // namespace diffusiond
