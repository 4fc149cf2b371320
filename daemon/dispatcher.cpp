#include "daemon/dispatcher.h"

#include <algorithm>
#include <stdexcept>

namespace diffusiond {

const char* to_string(DispatchPolicy policy) {
  return policy == DispatchPolicy::round_robin ? "round-robin" : "least-loaded";
}

std::optional<DispatchPolicy> parse_dispatch_policy(const std::string& text) {
  if (text == "round-robin" || text == "round_robin") return DispatchPolicy::round_robin;
  if (text == "least-loaded" || text == "least_loaded") return DispatchPolicy::least_loaded;
  return std::nullopt;
}

bool TaskOrder::operator()(const TaskRef& a, const TaskRef& b) const {
  if (a.priority != b.priority) return a.priority > b.priority;
  if (a.seq != b.seq) return a.seq < b.seq;
  if (a.job_id != b.job_id) return a.job_id < b.job_id;
  return a.image < b.image;
}

Dispatcher::Dispatcher(int num_devices, DispatchPolicy policy, int unhealthy_after)
    : policy_(policy), unhealthy_after_(std::max(1, unhealthy_after)) {
  if (num_devices < 1) throw std::invalid_argument("dispatcher needs at least one device");
  healthy_.assign(static_cast<std::size_t>(num_devices), true);
  consecutive_failures_.assign(static_cast<std::size_t>(num_devices), 0);
  per_device_.resize(static_cast<std::size_t>(num_devices));
}

void Dispatcher::check_device(int device) const {
  if (device < 0 || device >= static_cast<int>(healthy_.size()))
    throw std::out_of_range("no device " + std::to_string(device) + " in the dispatcher");
}

int Dispatcher::pick_device_locked(int avoid) {
  const int n = static_cast<int>(healthy_.size());
  int fallback = -1;
  for (int i = 0; i < n; ++i) {
    const int d = (next_device_ + i) % n;
    if (!healthy_[static_cast<std::size_t>(d)]) continue;
    if (d == avoid) {
      fallback = d;
      continue;
    }
    next_device_ = (d + 1) % n;
    return d;
  }
  if (fallback >= 0) next_device_ = (fallback + 1) % n;
  return fallback;
}

bool Dispatcher::place_locked(TaskRef task, int avoid) {
  task.avoid_device = avoid;
  if (policy_ == DispatchPolicy::least_loaded) {
    if (healthy_count_locked() == 0) return false;
    shared_.insert(std::move(task));
    cv_.notify_all();
    return true;
  }
  const int device = pick_device_locked(avoid);
  if (device < 0) return false;
  per_device_[static_cast<std::size_t>(device)].insert(std::move(task));
  cv_.notify_all();
  return true;
}

bool Dispatcher::enqueue(TaskRef task) {
  std::lock_guard lock(mu_);
  return place_locked(std::move(task), -1);
}

bool Dispatcher::requeue(TaskRef task, int failed_device) {
  std::lock_guard lock(mu_);
  return place_locked(std::move(task), failed_device);
}

std::optional<TaskRef> Dispatcher::pop_locked(int device) {
  if (policy_ == DispatchPolicy::round_robin) {
    auto& queue = per_device_[static_cast<std::size_t>(device)];
    if (queue.empty()) return std::nullopt;
    TaskRef task = *queue.begin();
    queue.erase(queue.begin());
    return task;
  }
  // least_loaded: the first task in order that does not avoid this device, unless this is the
  // only healthy device.
  const bool alone = healthy_count_locked() == 1;
  for (auto it = shared_.begin(); it != shared_.end(); ++it) {
    if (it->avoid_device == device && !alone) continue;
    TaskRef task = *it;
    shared_.erase(it);
    return task;
  }
  return std::nullopt;
}

std::optional<TaskRef> Dispatcher::take(int device) {
  std::unique_lock lock(mu_);
  check_device(device);
  for (;;) {
    if (stopped_ || !healthy_[static_cast<std::size_t>(device)]) return std::nullopt;
    if (!paused_)
      if (auto task = pop_locked(device)) return task;
    cv_.wait(lock);
  }
}

std::optional<TaskRef> Dispatcher::try_take(int device) {
  std::lock_guard lock(mu_);
  check_device(device);
  if (stopped_ || paused_ || !healthy_[static_cast<std::size_t>(device)]) return std::nullopt;
  return pop_locked(device);
}

void Dispatcher::set_paused(bool paused) {
  std::lock_guard lock(mu_);
  paused_ = paused;
  cv_.notify_all();
}

bool Dispatcher::paused() const {
  std::lock_guard lock(mu_);
  return paused_;
}

std::vector<TaskRef> Dispatcher::cancel_job(const std::string& job_id) {
  std::lock_guard lock(mu_);
  std::vector<TaskRef> removed;
  auto sweep = [&](Queue& queue) {
    for (auto it = queue.begin(); it != queue.end();) {
      if (it->job_id == job_id) {
        removed.push_back(*it);
        it = queue.erase(it);
      } else {
        ++it;
      }
    }
  };
  sweep(shared_);
  for (auto& queue : per_device_) sweep(queue);
  std::sort(removed.begin(), removed.end(), TaskOrder{});
  return removed;
}

bool Dispatcher::report_failure(int device, std::vector<TaskRef>* orphans) {
  std::lock_guard lock(mu_);
  check_device(device);
  const auto d = static_cast<std::size_t>(device);
  if (!healthy_[d]) return false;
  if (++consecutive_failures_[d] < unhealthy_after_) return false;
  auto left = mark_unhealthy_locked(device);
  if (orphans) *orphans = std::move(left);
  return true;
}

void Dispatcher::report_success(int device) {
  std::lock_guard lock(mu_);
  check_device(device);
  consecutive_failures_[static_cast<std::size_t>(device)] = 0;
}

std::vector<TaskRef> Dispatcher::mark_unhealthy(int device) {
  std::lock_guard lock(mu_);
  check_device(device);
  return mark_unhealthy_locked(device);
}

std::vector<TaskRef> Dispatcher::mark_unhealthy_locked(int device) {
  const auto d = static_cast<std::size_t>(device);
  healthy_[d] = false;
  cv_.notify_all();  // its take() returns nullopt
  std::vector<TaskRef> orphans;
  if (policy_ == DispatchPolicy::least_loaded) {
    if (healthy_count_locked() == 0) {
      orphans.assign(shared_.begin(), shared_.end());
      shared_.clear();
    }
    return orphans;
  }
  Queue moved;
  moved.swap(per_device_[d]);
  for (const auto& task : moved) {
    if (!place_locked(task, task.avoid_device)) orphans.push_back(task);
  }
  return orphans;
}

bool Dispatcher::healthy(int device) const {
  std::lock_guard lock(mu_);
  check_device(device);
  return healthy_[static_cast<std::size_t>(device)];
}

int Dispatcher::healthy_count_locked() const {
  return static_cast<int>(std::count(healthy_.begin(), healthy_.end(), true));
}

int Dispatcher::healthy_count() const {
  std::lock_guard lock(mu_);
  return healthy_count_locked();
}

std::size_t Dispatcher::queued() const {
  std::lock_guard lock(mu_);
  std::size_t total = shared_.size();
  for (const auto& queue : per_device_) total += queue.size();
  return total;
}

std::size_t Dispatcher::queued_for(int device) const {
  std::lock_guard lock(mu_);
  check_device(device);
  if (policy_ == DispatchPolicy::least_loaded) return shared_.size();
  return per_device_[static_cast<std::size_t>(device)].size();
}

void Dispatcher::stop() {
  std::lock_guard lock(mu_);
  stopped_ = true;
  cv_.notify_all();
}

}  // namespace diffusiond
