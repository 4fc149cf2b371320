// The dispatcher: which device runs which image task, and in what order. It never sees tensors,
// requests or the store: a task is (job id, image index, priority, submission order).
//
// Order: higher priority first; FIFO by job submission (seq) within a priority; image index
// within a job.
// Policies:
//  - round_robin (default): each task is assigned on arrival to the next healthy device in
//    rotation and waits in that device's own queue (image k of a 4-image job on 2 devices runs
//    on device k % 2 when the rotation starts at 0). Not work-conserving.
//  - least_loaded: one shared queue; whichever device is idle takes the next task
//    (work-conserving).
// Health: report_failure() counts consecutive failures per device; at `unhealthy_after` the
// device is marked unhealthy: it gets no more work (take() returns nullopt for it) and its queued
// tasks move to the healthy devices. A retried task avoids the device it failed on when another
// healthy device exists.
//
// Owner: CoreService. Thread-safety: every method may be called from any thread; take() blocks.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace diffusiond {

enum class DispatchPolicy { round_robin, least_loaded };
const char* to_string(DispatchPolicy policy);
std::optional<DispatchPolicy> parse_dispatch_policy(const std::string& text);

struct TaskRef {
  std::string job_id;
  int image = 0;
  int priority = 0;
  std::int64_t seq = 0;   // job submission order
  int avoid_device = -1;  // device it failed on (retry elsewhere), -1 = none

  bool operator==(const TaskRef& o) const { return job_id == o.job_id && image == o.image; }
};

// Run order: priority desc, seq asc, image asc.
struct TaskOrder {
  bool operator()(const TaskRef& a, const TaskRef& b) const;
};

class Dispatcher {
 public:
  Dispatcher(int num_devices, DispatchPolicy policy, int unhealthy_after = 3);

  DispatchPolicy policy() const { return policy_; }
  int num_devices() const { return static_cast<int>(healthy_.size()); }

  // Queues a task. Returns false (and queues nothing) when no healthy device is left.
  bool enqueue(TaskRef task);
  // Queues a task again after it failed on `failed_device` (preferring another device).
  bool requeue(TaskRef task, int failed_device);

  // The next task for `device`; blocks while there is none. nullopt once stop() was called or
  // the device is unhealthy.
  std::optional<TaskRef> take(int device);
  // Non-blocking take().
  std::optional<TaskRef> try_take(int device);

  // Removes the queued tasks of a job and returns them (tasks already taken are not affected).
  std::vector<TaskRef> cancel_job(const std::string& job_id);

  // Consecutive-failure accounting. report_failure returns true when this failure made the
  // device unhealthy; then `orphans` receives the tasks no healthy device could take.
  bool report_failure(int device, std::vector<TaskRef>* orphans = nullptr);
  void report_success(int device);
  // Marks the device unhealthy now (e.g. its model failed to load); returns orphaned tasks.
  std::vector<TaskRef> mark_unhealthy(int device);
  bool healthy(int device) const;
  int healthy_count() const;

  std::size_t queued() const;                // tasks waiting, all devices
  std::size_t queued_for(int device) const;  // round_robin: that device's queue; else all

  // Wakes every take() with nullopt; later takes return nullopt too. Queued tasks stay queued.
  void stop();
  // While paused (e.g. the disk is full) take() hands out nothing and waits; queueing goes on.
  void set_paused(bool paused);
  bool paused() const;

 private:
  using Queue = std::set<TaskRef, TaskOrder>;
  // Next healthy device in rotation, skipping `avoid` when another healthy one exists; -1 if none.
  int pick_device_locked(int avoid);
  bool place_locked(TaskRef task, int avoid);
  std::optional<TaskRef> pop_locked(int device);
  void check_device(int device) const;
  int healthy_count_locked() const;
  std::vector<TaskRef> mark_unhealthy_locked(int device);

  const DispatchPolicy policy_;
  const int unhealthy_after_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stopped_ = false;
  bool paused_ = false;
  std::vector<bool> healthy_;
  std::vector<int> consecutive_failures_;
  std::vector<Queue> per_device_;  // round_robin
  Queue shared_;                   // least_loaded
  int next_device_ = 0;            // round_robin rotation
};

}  // namespace diffusiond
