// One device worker: one thread that loads its own model replica (on that thread, so replicas
// of all devices load in parallel), then takes image tasks from the dispatcher and runs them.
// Several models: the worker's ModelCache (model_cache.h) holds up to max_loaded_models
// replicas; a task of a model it does not hold loads it first, on this thread (evicting the
// least recently used one). The start-up load is the default model's: if it fails the device
// is disabled (as before). A later load that fails fails that task through task_model_failed
// (the model's fault, not the device's: it does not count against the device's health).
// It never touches HTTP, the store or job state: it reports to a TaskHost (the CoreService).
// A failure inside generation (exception, out of memory) is reported, never propagated.
// Device health: it gives the dispatcher the verdict of every generation before telling the
// host (so a retry already avoids a device this failure made unhealthy): a success, or a
// failure that counts against the device. Every failure counts but one: running out of memory
// at a size (width x height) larger than any this device has generated; that is the request's
// size, not the device's health (one huge request must not take every device out).
// Batches (issue 11): after each take() the worker takes up to max_batch - 1 more queued tasks
// with the first one's batch key (which holds the model: a batch is of one model)
// (Dispatcher::take_compatible: its own share only; it waits for partners only up to batch_wait, 0
// by default) and runs them as one generation; every image keeps its own progress and stop (a
// cancelled image leaves the batch at the next step). A batch that fails runs its images again one
// by one on the same device (its progress starts again at step 1), so only the image at fault fails
// and only those runs give verdicts. Owner: CoreService. Thread-safety: start/join from the control
// thread; stats()/alive() from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "daemon/device_spec.h"
#include "daemon/dispatcher.h"
#include "daemon/image_generator.h"
#include "daemon/metrics.h"
#include "daemon/model_cache.h"

namespace diffusiond {

// What a worker reports to. Called on the worker's thread.
class TaskHost {
 public:
  virtual ~TaskHost() = default;
  virtual void replica_loaded(int worker, const std::string& error) = 0;  // error "" = loaded
  // Marks the task running on `worker`; nullopt when it must not run any more.
  virtual std::optional<ImageSpec> begin_task(int worker, const TaskRef& task) = 0;
  // After every step; false stops the image (cancel or shutdown). batch_size: how many images
  // shared its batch when the batch started.
  virtual bool task_progress(int worker, const TaskRef& task, int step, int steps,
                             int batch_size) = 0;
  virtual void task_succeeded(int worker, const TaskRef& task, RgbImage image) = 0;
  virtual void task_stopped(int worker, const TaskRef& task) = 0;
  virtual void task_failed(int worker, const TaskRef& task, const std::string& error) = 0;
  // A cheap preview of the image being made (only for tasks whose ImageSpec asks for previews),
  // on the worker thread. Default: dropped.
  virtual void task_preview(int /*worker*/, const TaskRef& /*task*/, RgbImage /*preview*/) {}
  // The task's model could not be loaded on this device (`error` has the loader's message).
  virtual void task_model_failed(int worker, const TaskRef& task, const std::string& error) = 0;
};

struct WorkerStats {
  std::string name;
  std::string description;
  DeviceMemory memory;
  bool loaded = false;
  bool load_finished = false;
  std::string load_error;
  bool busy = false;
  std::string current_job;
  std::vector<TaskRef> current_batch;  // the images it runs now (empty: idle)
  std::int64_t images_done = 0;
  std::int64_t images_failed = 0;         // generations that failed (each attempt)
  std::int64_t images_out_of_memory = 0;  // of which ran out of device memory
  std::string last_error;                 // the latest failure, "" if none
  std::int64_t last_error_ms = 0;         // unix ms
  std::int64_t steps_done = 0;
  double busy_seconds = 0;
  double uptime_seconds = 0;
  double steps_per_second = 0;   // exponential moving average over recent steps
  double seconds_per_image = 0;  // moving average of generation time per image
  std::vector<int> models;       // model ids held, most recently used first
  std::int64_t model_loads = 0;
  std::int64_t model_evictions = 0;
  std::int64_t model_load_failures = 0;
};

// How a worker batches (serve --max-batch, --batch-wait-ms).
struct WorkerBatching {
  int max_batch = 1;                  // images per generation, >= 1
  std::chrono::milliseconds wait{0};  // how long a batch waits for partners
};

// --max-batch 0 ("auto"): what a device of this kind batches by default (see README.md).
int default_max_batch(const DeviceSpec& device);

class DeviceWorker {
 public:
  DeviceWorker(int index, DeviceSpec spec, ModelBackend& backend, Dispatcher& dispatcher,
               TaskHost& host, int max_loaded_models = 1, WorkerBatching batching = {});
  ~DeviceWorker();  // join()
  DeviceWorker(const DeviceWorker&) = delete;
  DeviceWorker& operator=(const DeviceWorker&) = delete;

  void start();
  void join();  // returns once take() gave nullopt (dispatcher stopped / device unhealthy)

  int index() const { return index_; }
  const DeviceSpec& spec() const { return spec_; }
  WorkerStats stats() const;
  Histogram::Snapshot step_seconds() const { return step_seconds_.snapshot(); }
  // The thread runs and, when busy, made progress within `stall_limit`.
  bool alive(std::chrono::seconds stall_limit) const;

 private:
  void run();
  // Runs `first` and the compatible tasks it finds as one batch.
  void run_batch(const TaskRef& first);
  // One generation of tasks (begun, of one model) as a batch on `generator`; a failed batch
  // runs its images one by one.
  void run_images(ImageGenerator& generator, const std::vector<TaskRef>& tasks,
                  const std::vector<ImageSpec>& specs);
  // Gives the dispatcher the verdict of one generation (and logs a change of health).
  void report_health(bool done, bool out_of_memory, std::int64_t pixels);

  using Clock = std::chrono::steady_clock;
  const int index_;
  const DeviceSpec spec_;
  ModelBackend& backend_;
  Dispatcher& dispatcher_;
  TaskHost& host_;
  const int max_loaded_models_;
  const WorkerBatching batching_;
  std::unique_ptr<ModelCache> cache_;     // touched only by the worker thread
  std::int64_t largest_done_pixels_ = 0;  // worker thread: width x height it generated
  std::thread thread_;
  std::atomic<bool> running_{false};
  Histogram step_seconds_{Histogram::step_seconds_buckets()};

  mutable std::mutex mu_;  // guards stats_ and the timestamps below
  WorkerStats stats_;
  Clock::time_point started_at_;
  Clock::time_point busy_since_;
  Clock::time_point last_progress_;
};

}  // namespace diffusiond
