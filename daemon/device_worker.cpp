#include "daemon/device_worker.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <exception>

namespace diffusiond {

namespace {
double seconds(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double>(d).count();
}
void blend(double& average, double sample) {  // exponential moving average, alpha 0.2
  average = average == 0 ? sample : 0.8 * average + 0.2 * sample;
}
}  // namespace

DeviceWorker::DeviceWorker(int index, DeviceSpec spec, ModelBackend& backend,
                           Dispatcher& dispatcher, TaskHost& host, int max_loaded_models)
    : index_(index),
      spec_(std::move(spec)),
      backend_(backend),
      dispatcher_(dispatcher),
      host_(host),
      max_loaded_models_(max_loaded_models) {
  stats_.name = spec_.name;
  started_at_ = last_progress_ = Clock::now();
}

DeviceWorker::~DeviceWorker() {
  join();
}

void DeviceWorker::start() {
  running_ = true;
  thread_ = std::thread([this] { run(); });
}

void DeviceWorker::join() {
  if (thread_.joinable()) thread_.join();
}

void DeviceWorker::run() {
  std::string load_error;
  try {
    cache_ = std::make_unique<ModelCache>(
        max_loaded_models_, [this](int model) { return backend_.load_replica(spec_, model); },
        [this](const std::vector<int>& held) {
          dispatcher_.set_models(index_, held);
          std::lock_guard lock(mu_);
          stats_.models = held;
        });
    ImageGenerator& generator = cache_->acquire(backend_.default_model());
    std::lock_guard lock(mu_);
    stats_.loaded = true;
    stats_.description = generator.description();
    stats_.memory = generator.memory();
    stats_.model_loads = cache_->loads();
  } catch (const std::exception& e) {
    load_error = e.what();
  } catch (...) {
    load_error = "unknown error";
  }
  {
    std::lock_guard lock(mu_);
    stats_.load_finished = true;
    stats_.load_error = load_error;
  }
  host_.replica_loaded(index_, load_error);
  if (load_error.empty()) {
    while (auto task = dispatcher_.take(index_)) run_task(*task);
  }
  try {
    cache_.reset();  // frees the replicas on their own thread (and CUDA stream)
  } catch (...) {
  }
  running_ = false;
}

void DeviceWorker::run_task(const TaskRef& task) {
  std::optional<ImageSpec> spec;
  try {
    spec = host_.begin_task(index_, task);
  } catch (const std::exception& e) {
    spdlog::error("{}: cannot start {}/{}: {}", spec_.name, task.job_id, task.image, e.what());
  }
  if (!spec) return;
  const auto begin = Clock::now();
  {
    std::lock_guard lock(mu_);
    stats_.busy = true;
    stats_.current_job = task.job_id;
    busy_since_ = last_progress_ = begin;
  }
  ImageGenerator* generator = nullptr;
  std::string load_error;
  try {
    generator = &cache_->acquire(task.model);  // loads (and evicts) here, on this thread
  } catch (const std::exception& e) {
    load_error = e.what();
  } catch (...) {
    load_error = "unknown error";
  }
  {
    std::lock_guard lock(mu_);
    last_progress_ = Clock::now();  // a load is progress (the stall check)
    stats_.model_loads = cache_->loads();
    stats_.model_evictions = cache_->evictions();
    stats_.model_load_failures = cache_->load_failures();
    if (generator) stats_.description = generator->description();
    if (!load_error.empty()) {
      stats_.busy = false;
      stats_.current_job.clear();
      stats_.busy_seconds += seconds(Clock::now() - begin);
    }
  }
  if (!generator) {
    const std::string error =
        "cannot load model '" + spec->model + "' on " + spec_.name + ": " + load_error;
    spdlog::error("{}", error);
    try {
      host_.task_model_failed(index_, task, error);
    } catch (const std::exception& e) {
      spdlog::error("{}: cannot record the end of {}/{}: {}", spec_.name, task.job_id, task.image,
                    e.what());
    }
    return;
  }
  auto previous_step = begin;
  auto progress = [&](int step, int steps) {
    const auto now = Clock::now();
    const double step_time = seconds(now - previous_step);
    previous_step = now;
    step_seconds_.observe(step_time);
    {
      std::lock_guard lock(mu_);
      ++stats_.steps_done;
      last_progress_ = now;
      if (step_time > 0) blend(stats_.steps_per_second, 1.0 / step_time);
    }
    return host_.task_progress(index_, task, step, steps);
  };

  enum class Outcome { done, stopped, failed } outcome = Outcome::failed;
  std::string error;
  bool out_of_memory = false;
  bool input_error = false;  // the task's fault (TaskInputError): not the device's
  RgbImage image;
  try {
    if (spec->previews)
      generator->set_previews([this, &task](RgbImage preview) {
        host_.task_preview(index_, task, std::move(preview));
      });
    else
      generator->set_previews({});
    image = generator->generate_one(*spec, progress);
    outcome = Outcome::done;
  } catch (const GenerationStopped&) {
    outcome = Outcome::stopped;
  } catch (const DeviceOutOfMemory& e) {
    error = std::string(DeviceOutOfMemory::reason) + ": " + e.what();
    out_of_memory = true;
  } catch (const TaskInputError& e) {
    error = e.what();
    input_error = true;
  } catch (const std::exception& e) {
    error = e.what();
  } catch (...) {
    error = "unknown error";
  }
  const auto end = Clock::now();
  {
    std::lock_guard lock(mu_);
    stats_.busy = false;
    stats_.current_job.clear();
    stats_.busy_seconds += seconds(end - begin);
    if (outcome == Outcome::done) {
      ++stats_.images_done;
      blend(stats_.seconds_per_image, seconds(end - begin));
    }
    if (outcome == Outcome::failed) {
      ++stats_.images_failed;
      if (out_of_memory) ++stats_.images_out_of_memory;
      stats_.last_error = error;
      stats_.last_error_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                                 std::chrono::system_clock::now().time_since_epoch())
                                 .count();
    }
  }
  try {
    const DeviceMemory memory = generator->memory();
    std::lock_guard lock(mu_);
    stats_.memory = memory;
  } catch (...) {
  }
  if (outcome != Outcome::stopped && !input_error)
    report_health(outcome == Outcome::done, out_of_memory,
                  static_cast<std::int64_t>(spec->width) * spec->height);
  try {
    switch (outcome) {
      case Outcome::done:
        host_.task_succeeded(index_, task, std::move(image));
        break;
      case Outcome::stopped:
        host_.task_stopped(index_, task);
        break;
      case Outcome::failed:
        host_.task_failed(index_, task, error);
        break;
    }
  } catch (const std::exception& e) {
    spdlog::error("{}: cannot record the end of {}/{}: {}", spec_.name, task.job_id, task.image,
                  e.what());
  }
}

void DeviceWorker::report_health(bool done, bool out_of_memory, std::int64_t pixels) {
  try {
    if (done) {
      largest_done_pixels_ = std::max(largest_done_pixels_, pixels);
      if (dispatcher_.report_success(index_))
        spdlog::warn("{}: its probe succeeded; healthy again, it takes work", spec_.name);
      return;
    }
    if (out_of_memory && pixels > largest_done_pixels_) {
      spdlog::warn(
          "{}: out of memory at {} pixels, more than it has generated: the request's "
          "size, not counted against the device",
          spec_.name, pixels);
      return;
    }
    const bool was_healthy = dispatcher_.healthy(index_);
    if (const auto next_probe = dispatcher_.report_failure(index_)) {
      const auto seconds = std::chrono::duration<double>(*next_probe).count();
      if (was_healthy)
        spdlog::error(
            "{}: {} failures in a row; unhealthy: no new work, its queue moves to the "
            "other devices; probed again in {:g} s",
            spec_.name, dispatcher_.health(index_).consecutive_failures, seconds);
      else
        spdlog::error("{}: its probe failed; still unhealthy, probed again in {:g} s", spec_.name,
                      seconds);
    }
  } catch (const std::exception& e) {
    spdlog::error("{}: cannot report its health: {}", spec_.name, e.what());
  }
}

WorkerStats DeviceWorker::stats() const {
  std::lock_guard lock(mu_);
  WorkerStats s = stats_;
  const auto now = Clock::now();
  s.uptime_seconds = seconds(now - started_at_);
  if (s.busy) s.busy_seconds += seconds(now - busy_since_);
  return s;
}

bool DeviceWorker::alive(std::chrono::seconds stall_limit) const {
  if (!running_) return false;
  std::lock_guard lock(mu_);
  return !stats_.busy || Clock::now() - last_progress_ < stall_limit;
}

}  // namespace diffusiond
