#include "daemon/dispatcher.h"

#include <algorithm>
#include <cstdint>
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

Dispatcher::Dispatcher(int num_devices, DispatchPolicy policy, DeviceHealthOptions health)
    : policy_(policy), options_(std::move(health)) {
  if (num_devices < 1) throw std::invalid_argument("dispatcher needs at least one device");
  if (options_.unhealthy_after < 1)
    throw std::invalid_argument("the device failure threshold must be at least 1");
  if (options_.probe_interval <= std::chrono::milliseconds(0) || options_.probe_backoff_max < 1)
    throw std::invalid_argument("the device probe interval must be positive");
  devices_.resize(static_cast<std::size_t>(num_devices));
}

Dispatcher::Clock::time_point Dispatcher::now() const {
  return options_.clock ? options_.clock() : Clock::now();
}

void Dispatcher::check_device(int device) const {
  if (device < 0 || device >= num_devices())
    throw std::out_of_range("no device " + std::to_string(device) + " in the dispatcher");
}

void Dispatcher::refresh_locked() {
  const auto t = now();
  for (auto& dev : devices_) {
    if (dev.health != DeviceHealth::unhealthy || t < dev.probe_at) continue;
    dev.health = DeviceHealth::probing;
    dev.probe_running = false;
    cv_.notify_all();
  }
}

bool Dispatcher::holds_locked(int device, int model) const {
  const auto& held = devices_[static_cast<std::size_t>(device)].models;
  return std::find(held.begin(), held.end(), model) != held.end();
}

bool Dispatcher::affinity_applies_locked(int model, int avoid) const {
  int holders = 0, candidates = 0;
  for (int d = 0; d < num_devices(); ++d) {
    if (d == avoid || devices_[static_cast<std::size_t>(d)].health != DeviceHealth::healthy)
      continue;
    ++candidates;
    holders += holds_locked(d, model) ? 1 : 0;
  }
  return holders > 0 && holders < candidates;
}

bool Dispatcher::other_holder_locked(int model, int device) const {
  for (int d = 0; d < num_devices(); ++d)
    if (d != device && devices_[static_cast<std::size_t>(d)].health == DeviceHealth::healthy &&
        holds_locked(d, model))
      return true;
  return false;
}

int Dispatcher::pick_device_locked(int avoid, int model) {
  const int n = num_devices();
  int probe_fallback = -1;  // a probing device waiting for its task: it gets the next one
  for (int d = 0; d < n; ++d) {
    const auto& dev = devices_[static_cast<std::size_t>(d)];
    if (dev.health != DeviceHealth::probing || dev.probe_running || !dev.queue.empty()) continue;
    if (d != avoid) return d;
    probe_fallback = d;
  }
  if (affinity_applies_locked(model, avoid)) {
    std::size_t shortest = SIZE_MAX;
    for (int d = 0; d < n; ++d)
      if (d != avoid && devices_[static_cast<std::size_t>(d)].health == DeviceHealth::healthy)
        shortest = std::min(shortest, devices_[static_cast<std::size_t>(d)].queue.size());
    for (int i = 0; i < n; ++i) {
      const int d = (next_device_ + i) % n;
      const auto& dev = devices_[static_cast<std::size_t>(d)];
      if (d == avoid || dev.health != DeviceHealth::healthy || !holds_locked(d, model)) continue;
      if (dev.queue.size() > shortest + 1) continue;
      next_device_ = (d + 1) % n;
      return d;
    }
  }
  int fallback = -1;
  for (int i = 0; i < n; ++i) {
    const int d = (next_device_ + i) % n;
    if (devices_[static_cast<std::size_t>(d)].health != DeviceHealth::healthy) continue;
    if (d == avoid) {
      fallback = d;
      continue;
    }
    next_device_ = (d + 1) % n;
    return d;
  }
  if (fallback >= 0) {
    next_device_ = (fallback + 1) % n;
    return fallback;
  }
  return probe_fallback;
}

bool Dispatcher::place_locked(TaskRef task, int avoid) {
  task.avoid_device = avoid;
  refresh_locked();
  if (!any_enabled_locked()) return false;
  if (policy_ == DispatchPolicy::round_robin) {
    const int device = pick_device_locked(avoid, task.model);
    if (device >= 0) {
      devices_[static_cast<std::size_t>(device)].queue.insert(std::move(task));
      cv_.notify_all();
      return true;
    }
  }
  // least_loaded: the queue; round_robin: no device can take it now, it waits for one.
  shared_.insert(std::move(task));
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

bool Dispatcher::others_healthy_locked(int device) const {
  for (int d = 0; d < num_devices(); ++d)
    if (d != device && devices_[static_cast<std::size_t>(d)].health == DeviceHealth::healthy)
      return true;
  return false;
}

std::optional<TaskRef> Dispatcher::steal_locked(int device) {
  const bool others = others_healthy_locked(device);
  Queue* from = nullptr;
  Queue::iterator best;
  for (int d = 0; d < num_devices(); ++d) {
    if (d == device) continue;
    auto& queue = devices_[static_cast<std::size_t>(d)].queue;
    for (auto it = queue.begin(); it != queue.end(); ++it) {
      if (it->avoid_device == device && others) continue;
      if (!from || TaskOrder{}(*it, *best)) {
        from = &queue;
        best = it;
      }
      break;  // the queue is in run order: its first eligible task is its best
    }
  }
  if (!from) return std::nullopt;
  TaskRef task = *best;
  from->erase(best);
  return task;
}

std::optional<TaskRef> Dispatcher::pop_locked(int device) {
  auto& dev = devices_[static_cast<std::size_t>(device)];
  std::optional<TaskRef> task;
  if (!dev.queue.empty()) {
    task = *dev.queue.begin();
    dev.queue.erase(dev.queue.begin());
  }
  if (!task) {
    // The first task in order that does not avoid this device, unless no other healthy device
    // may take it.
    const bool others = others_healthy_locked(device);
    auto chosen = shared_.end();
    auto first = shared_.end();  // the first task it may take
    int looked = 0;
    for (auto it = shared_.begin(); it != shared_.end() && looked < 16; ++it) {
      if (it->avoid_device == device && others) continue;
      if (first == shared_.end()) first = it;
      if (it->priority != first->priority) break;
      ++looked;
      // Its model is here, or it may not be passed over: another healthy device holding its
      // model takes it soon, up to kMaxPassOver times.
      if (holds_locked(device, it->model) || it->passed_over >= kMaxPassOver ||
          !other_holder_locked(it->model, device)) {
        chosen = it;
        break;
      }
    }
    if (chosen == shared_.end()) chosen = first;
    if (chosen != shared_.end()) {
      for (auto it = first; it != chosen; ++it)
        if (!(it->avoid_device == device && others)) ++it->passed_over;
      task = *chosen;
      shared_.erase(chosen);
    }
  }
  if (!task && dev.health == DeviceHealth::probing && policy_ == DispatchPolicy::round_robin)
    task = steal_locked(device);
  if (task && dev.health == DeviceHealth::probing) dev.probe_running = true;
  return task;
}

std::optional<TaskRef> Dispatcher::take(int device) {
  std::unique_lock lock(mu_);
  check_device(device);
  auto& dev = devices_[static_cast<std::size_t>(device)];
  dev.probe_running = false;  // asking again: its previous task ended without a verdict
  for (;;) {
    if (stopped_ || dev.health == DeviceHealth::disabled) return std::nullopt;
    refresh_locked();
    if (dev.health == DeviceHealth::unhealthy) {  // no work until its probe is due
      cv_.wait_for(lock, dev.probe_at - now());
      continue;
    }
    if (!paused_)  // storage full: nothing is handed out
      if (auto task = pop_locked(device)) return task;
    dev.waiting = true;
    cv_.wait(lock);
    dev.waiting = false;
  }
}

std::vector<TaskRef> Dispatcher::compatible_locked(int device, const TaskRef& first, int max) {
  std::vector<TaskRef> found;
  auto& dev = devices_[static_cast<std::size_t>(device)];
  if (stopped_ || paused_ || first.batch_key.empty() || dev.health != DeviceHealth::healthy)
    return found;
  const bool others = others_healthy_locked(device);
  auto sweep = [&](Queue& queue, int limit) {
    for (auto it = queue.begin(); it != queue.end() && static_cast<int>(found.size()) < limit;) {
      // In run order: a higher priority queued since `first` was taken is not delayed by a
      // bigger batch (no partners then), and nothing after a lower priority qualifies.
      if (it->priority != first.priority) break;
      if (it->batch_key == first.batch_key && !(it->avoid_device == device && others)) {
        found.push_back(*it);
        it = queue.erase(it);
      } else {
        ++it;
      }
    }
  };
  sweep(dev.queue, max);
  if (static_cast<int>(found.size()) < max) {
    // The shared queue (least_loaded, or round_robin tasks no device could take): leave one
    // task for every other device that waits idle, so batching never leaves a device without
    // work it could have had.
    int idle_others = 0;
    for (int d = 0; d < num_devices(); ++d)
      if (d != device && devices_[static_cast<std::size_t>(d)].waiting &&
          devices_[static_cast<std::size_t>(d)].health == DeviceHealth::healthy)
        ++idle_others;
    const int spare = static_cast<int>(shared_.size()) - idle_others;
    const int have = static_cast<int>(found.size());
    sweep(shared_, have + std::max(0, std::min(max - have, spare)));
  }
  return found;
}

std::vector<TaskRef> Dispatcher::take_compatible(int device, const TaskRef& first, int max,
                                                 Clock::time_point until) {
  std::unique_lock lock(mu_);
  check_device(device);
  if (max < 1) return {};
  refresh_locked();
  auto found = compatible_locked(device, first, max);
  while (found.empty() && Clock::now() < until) {  // the real clock: cv_ waits on it
    const auto& dev = devices_[static_cast<std::size_t>(device)];
    if (stopped_ || paused_ || dev.health != DeviceHealth::healthy) break;
    cv_.wait_until(lock, until);
    found = compatible_locked(device, first, max);
  }
  return found;
}

std::optional<TaskRef> Dispatcher::try_take(int device) {
  std::lock_guard lock(mu_);
  check_device(device);
  auto& dev = devices_[static_cast<std::size_t>(device)];
  if (stopped_ || paused_) return std::nullopt;
  refresh_locked();
  if (dev.health != DeviceHealth::healthy && dev.health != DeviceHealth::probing)
    return std::nullopt;
  dev.probe_running = false;
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
  for (auto& dev : devices_) sweep(dev.queue);
  std::sort(removed.begin(), removed.end(), TaskOrder{});
  return removed;
}

void Dispatcher::make_unhealthy_locked(Device& dev, std::chrono::milliseconds backoff) {
  dev.health = DeviceHealth::unhealthy;
  dev.backoff = backoff;
  dev.probe_at = now() + backoff;
  dev.probe_running = false;
  cv_.notify_all();
}

std::optional<std::chrono::milliseconds> Dispatcher::report_failure(int device) {
  std::lock_guard lock(mu_);
  check_device(device);
  auto& dev = devices_[static_cast<std::size_t>(device)];
  if (dev.health == DeviceHealth::disabled) return std::nullopt;
  ++dev.consecutive_failures;
  if (dev.health == DeviceHealth::probing) {  // the probe failed: wait twice as long
    const auto longest = options_.probe_interval * options_.probe_backoff_max;
    make_unhealthy_locked(dev, std::min(dev.backoff * 2, longest));
  } else if (dev.health == DeviceHealth::healthy &&
             dev.consecutive_failures >= options_.unhealthy_after) {
    make_unhealthy_locked(dev, options_.probe_interval);
  } else {
    return std::nullopt;
  }
  move_queue_locked(device);  // nothing is orphaned: this device is still enabled
  return dev.backoff;
}

bool Dispatcher::report_success(int device) {
  std::lock_guard lock(mu_);
  check_device(device);
  auto& dev = devices_[static_cast<std::size_t>(device)];
  dev.consecutive_failures = 0;
  if (dev.health != DeviceHealth::probing && dev.health != DeviceHealth::unhealthy) return false;
  dev.health = DeviceHealth::healthy;
  dev.backoff = std::chrono::milliseconds(0);
  dev.probe_running = false;
  if (policy_ == DispatchPolicy::round_robin) {  // tasks that waited for a device: rotate them
    Queue waiting;
    waiting.swap(shared_);
    for (const auto& task : waiting) place_locked(task, task.avoid_device);
  }
  cv_.notify_all();
  return true;
}

std::vector<TaskRef> Dispatcher::mark_disabled(int device) {
  std::lock_guard lock(mu_);
  check_device(device);
  devices_[static_cast<std::size_t>(device)].health = DeviceHealth::disabled;
  cv_.notify_all();  // its take() returns nullopt
  return move_queue_locked(device);
}

std::vector<TaskRef> Dispatcher::move_queue_locked(int device) {
  Queue moved;
  moved.swap(devices_[static_cast<std::size_t>(device)].queue);
  std::vector<TaskRef> orphans;
  for (const auto& task : moved)
    if (!place_locked(task, task.avoid_device)) orphans.push_back(task);
  if (!any_enabled_locked()) {  // every device disabled: nothing will ever take them
    orphans.insert(orphans.end(), shared_.begin(), shared_.end());
    shared_.clear();
  }
  return orphans;
}

void Dispatcher::set_models(int device, std::vector<int> models) {
  std::lock_guard lock(mu_);
  check_device(device);
  devices_[static_cast<std::size_t>(device)].models = std::move(models);
}

std::vector<int> Dispatcher::models(int device) const {
  std::lock_guard lock(mu_);
  check_device(device);
  return devices_[static_cast<std::size_t>(device)].models;
}

bool Dispatcher::healthy(int device) const {
  std::lock_guard lock(mu_);
  check_device(device);
  return devices_[static_cast<std::size_t>(device)].health == DeviceHealth::healthy;
}

DeviceHealthState Dispatcher::health(int device) const {
  std::lock_guard lock(mu_);
  check_device(device);
  const auto& dev = devices_[static_cast<std::size_t>(device)];
  DeviceHealthState state;
  state.health = dev.health;
  state.consecutive_failures = dev.consecutive_failures;
  if (dev.health == DeviceHealth::unhealthy)
    state.probe_in = std::max(std::chrono::milliseconds(0),
                              std::chrono::ceil<std::chrono::milliseconds>(dev.probe_at - now()));
  return state;
}

int Dispatcher::healthy_count_locked() const {
  return static_cast<int>(std::count_if(devices_.begin(), devices_.end(), [](const Device& d) {
    return d.health == DeviceHealth::healthy;
  }));
}

int Dispatcher::healthy_count() const {
  std::lock_guard lock(mu_);
  return healthy_count_locked();
}

bool Dispatcher::any_enabled_locked() const {
  return std::any_of(devices_.begin(), devices_.end(),
                     [](const Device& d) { return d.health != DeviceHealth::disabled; });
}

bool Dispatcher::any_enabled() const {
  std::lock_guard lock(mu_);
  return any_enabled_locked();
}

std::size_t Dispatcher::queued() const {
  std::lock_guard lock(mu_);
  std::size_t total = shared_.size();
  for (const auto& dev : devices_) total += dev.queue.size();
  return total;
}

std::size_t Dispatcher::queued_for(int device) const {
  std::lock_guard lock(mu_);
  check_device(device);
  if (policy_ == DispatchPolicy::least_loaded) return shared_.size();
  return devices_[static_cast<std::size_t>(device)].queue.size();
}

void Dispatcher::stop() {
  std::lock_guard lock(mu_);
  stopped_ = true;
  cv_.notify_all();
}

}  // namespace diffusiond
