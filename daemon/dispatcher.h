// The dispatcher: which device runs which image task, and in what order, and each device's
// health. It never sees tensors, requests or the store: a task is (job id, image index,
// priority, submission order).
//
// Order: higher priority first; FIFO by job submission (seq) within a priority; image index
// within a job.
// Policies:
//  - round_robin (default): each task is assigned on arrival to the next healthy device in
//    rotation and waits in that device's own queue (image k of a 4-image job on 2 devices runs
//    on device k % 2 when the rotation starts at 0). Not work-conserving.
//  - least_loaded: one shared queue; whichever device is idle takes the next task
//    (work-conserving).
// Health (the states are daemon/api/status.h's DeviceHealth):
//  - report_failure() counts consecutive failures per device, report_success() resets the
//    count. At `unhealthy_after` the device turns unhealthy: it gets no new work and its queued
//    tasks move to the other devices. While no device is healthy, tasks wait in the shared
//    queue for one (enqueue() still accepts them).
//  - `probe_interval` later it is probing: it takes one task at a time (the next task placed
//    goes to it, else it takes the first queued one). A success makes it healthy again; a
//    failure makes it unhealthy again with the interval doubled, up to probe_backoff_max times
//    the first one.
//  - mark_disabled() (its model replica failed to load): never given work, never probed.
//  A retried task avoids the device it failed on while another device can take it.
// Models (several per daemon): a task names its model by id; each device's worker tells which
// ids it holds (set_models). Only while some but not all healthy devices hold a task's model
// does the dispatcher prefer a holder:
//  - round_robin: the next holder in rotation whose queue is at most one task longer than the
//    shortest healthy queue (else the plain rotation: a device that must load the model).
//  - least_loaded: a device takes, among the first 16 tasks of the head's priority, the first
//    one whose model it holds, passing over tasks whose model another healthy device holds; a
//    task is passed over at most kMaxPassOver times, then the next device takes it.
// With one model (or all devices holding the same ones) both policies are exactly as above.
// Batches (issue 11): after take(), a device worker may take_compatible() more tasks with the
// same batch key (an opaque string the core computes, daemon/api/batch_key.h; it includes the
// model) and priority from its own share only (round_robin: its queue; least_loaded: the shared
// queue, leaving one task for each other device that waits idle), never while probing.
//
// Owner: CoreService. Thread-safety: every method may be called from any thread; take() blocks.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "daemon/api/status.h"

namespace diffusiond {

enum class DispatchPolicy { round_robin, least_loaded };
const char* to_string(DispatchPolicy policy);
std::optional<DispatchPolicy> parse_dispatch_policy(const std::string& text);

struct TaskRef {
  std::string job_id;
  int image = 0;
  int priority = 0;
  std::int64_t seq = 0;         // job submission order
  int avoid_device = -1;        // device it failed on (retry elsewhere), -1 = none
  int model = 0;                // model id (ModelBackend::models() index); part of any batch key
  mutable int passed_over = 0;  // least_loaded: times a device took a later task instead
  std::string batch_key;        // tasks with equal non-empty keys may share a batch (opaque here)

  bool operator==(const TaskRef& o) const { return job_id == o.job_id && image == o.image; }
};

// Run order: priority desc, seq asc, image asc.
struct TaskOrder {
  bool operator()(const TaskRef& a, const TaskRef& b) const;
};

struct DeviceHealthOptions {
  using Clock = std::chrono::steady_clock;
  int unhealthy_after = 3;  // consecutive failures (--device-failure-threshold)
  std::chrono::milliseconds probe_interval{std::chrono::seconds(60)};  // --device-probe-interval
  int probe_backoff_max = 16;  // the interval doubles per failed probe, up to this many times it
  std::function<Clock::time_point()> clock;  // empty: steady_clock::now (tests inject one)
};

struct DeviceHealthState {
  DeviceHealth health = DeviceHealth::healthy;
  int consecutive_failures = 0;
  std::chrono::milliseconds probe_in{0};  // unhealthy: time left until it is probed (0: due)
};

class Dispatcher {
 public:
  Dispatcher(int num_devices, DispatchPolicy policy, DeviceHealthOptions health = {});

  DispatchPolicy policy() const { return policy_; }
  int num_devices() const { return static_cast<int>(devices_.size()); }

  // Queues a task. Returns false (and queues nothing) only when every device is disabled.
  bool enqueue(TaskRef task);
  // Queues a task again after it failed on `failed_device` (preferring another device).
  bool requeue(TaskRef task, int failed_device);

  // The next task for `device`; blocks while there is none, and while the device is unhealthy
  // until its probe is due. nullopt once stop() was called or the device is disabled.
  std::optional<TaskRef> take(int device);
  // Non-blocking take().
  std::optional<TaskRef> try_take(int device);
  // Partners for a batch that starts with `first` (a task this device took): up to `max` queued
  // tasks with first's batch key and priority, from this device's share, in run order (none
  // while a task of higher priority waits there: a bigger batch would delay it). Waits
  // until `until` while it has found none (until <= now: does not wait); returns early on stop,
  // pause or a change of the device's health. Nothing for a probing device or an empty key.
  std::vector<TaskRef> take_compatible(int device, const TaskRef& first, int max,
                                       std::chrono::steady_clock::time_point until = {});

  // Removes the queued tasks of a job and returns them (tasks already taken are not affected).
  std::vector<TaskRef> cancel_job(const std::string& job_id);

  // The verdict of a task the device ran. report_failure returns, when the device is unhealthy
  // after this failure (it just crossed the threshold, or its probe failed), the time until its
  // next probe. report_success returns true when it made the device healthy again.
  std::optional<std::chrono::milliseconds> report_failure(int device);
  bool report_success(int device);
  // The device never gets work again (its model failed to load); returns the tasks that no
  // device can ever take (every device disabled).
  std::vector<TaskRef> mark_disabled(int device);

  // The model ids `device` holds now (its worker's ModelCache), most recently used first.
  void set_models(int device, std::vector<int> models);
  std::vector<int> models(int device) const;

  bool healthy(int device) const;
  DeviceHealthState health(int device) const;
  int healthy_count() const;
  bool any_enabled() const;  // a device that is not disabled (it may run work now or later)

  std::size_t queued() const;                // tasks waiting, all devices
  std::size_t queued_for(int device) const;  // round_robin: that device's queue; else all

  // Wakes every take() with nullopt; later takes return nullopt too. Queued tasks stay queued.
  void stop();
  // While paused (e.g. the disk is full) take() hands out nothing and waits; queueing goes on.
  void set_paused(bool paused);
  bool paused() const;

 private:
  using Queue = std::set<TaskRef, TaskOrder>;
  using Clock = DeviceHealthOptions::Clock;
  struct Device {
    DeviceHealth health = DeviceHealth::healthy;
    int consecutive_failures = 0;
    Clock::time_point probe_at{};
    std::chrono::milliseconds backoff{0};  // unhealthy: the current probe interval
    bool probe_running = false;            // probing: it holds a task with no verdict yet
    bool waiting = false;                  // blocked in take(): idle, wants work
    Queue queue;                           // round_robin: its own queue
    std::vector<int> models;               // model ids it holds
  };
  static constexpr int kMaxPassOver = 4;
  bool holds_locked(int device, int model) const;
  // Some but not all healthy devices (besides `avoid`) hold the model.
  bool affinity_applies_locked(int model, int avoid) const;
  bool other_holder_locked(int model, int device) const;  // a healthy device but `device`

  Clock::time_point now() const;
  void refresh_locked();  // unhealthy devices whose probe is due become probing
  // round_robin: the device the next task goes to: a probing device waiting for its task, else
  // the next healthy device in rotation, skipping `avoid` when another one exists; -1 if none.
  int pick_device_locked(int avoid, int model);
  bool place_locked(TaskRef task, int avoid);
  std::optional<TaskRef> pop_locked(int device);
  std::optional<TaskRef> steal_locked(int device);  // round_robin probe: from the others
  std::vector<TaskRef> compatible_locked(int device, const TaskRef& first, int max);
  void check_device(int device) const;
  int healthy_count_locked() const;
  bool others_healthy_locked(int device) const;  // a healthy device besides `device`
  bool any_enabled_locked() const;
  // Moves the device's queued tasks to the others; returns the ones nothing can take.
  std::vector<TaskRef> move_queue_locked(int device);
  void make_unhealthy_locked(Device& device, std::chrono::milliseconds backoff);

  const DispatchPolicy policy_;
  const DeviceHealthOptions options_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stopped_ = false;
  bool paused_ = false;
  std::vector<Device> devices_;
  // least_loaded: the queue; round_robin: tasks waiting while no device can take them.
  Queue shared_;
  int next_device_ = 0;  // round_robin rotation
};

}  // namespace diffusiond
