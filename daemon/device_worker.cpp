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

int default_max_batch(const DeviceSpec& device) {
  // CUDA: a batch of 4 costs about 1.5x a batch of 1 per step (bench/RESULTS.md); the CPU is
  // compute-bound at batch 1 already, so batching gains nothing there (README.md, --max-batch).
  return device.kind == DeviceSpec::Kind::cuda ? 4 : 1;
}

DeviceWorker::DeviceWorker(int index, DeviceSpec spec, ModelBackend& backend,
                           Dispatcher& dispatcher, TaskHost& host, int max_loaded_models,
                           WorkerBatching batching)
    : index_(index),
      spec_(std::move(spec)),
      backend_(backend),
      dispatcher_(dispatcher),
      host_(host),
      max_loaded_models_(max_loaded_models),
      batching_{std::max(1, batching.max_batch), batching.wait} {
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
    while (auto task = dispatcher_.take(index_)) run_batch(*task);
  }
  try {
    cache_.reset();  // frees the replicas on their own thread (and CUDA stream)
  } catch (...) {
  }
  running_ = false;
}

void DeviceWorker::run_batch(const TaskRef& first) {
  std::vector<TaskRef> tasks;
  std::vector<ImageSpec> specs;
  auto begin = [&](const TaskRef& task) {
    try {
      if (auto spec = host_.begin_task(index_, task)) {
        tasks.push_back(task);
        specs.push_back(std::move(*spec));
      }
    } catch (const std::exception& e) {
      spdlog::error("{}: cannot start {}/{}: {}", spec_.name, task.job_id, task.image, e.what());
    }
  };
  begin(first);
  if (tasks.empty()) return;
  // Partners: compatible tasks (the same batch key, so the same model) already in this
  // device's share; waits for more only up to batching_.wait (0: never idles for them).
  const auto until = Clock::now() + batching_.wait;
  while (static_cast<int>(tasks.size()) < batching_.max_batch) {
    const int want = batching_.max_batch - static_cast<int>(tasks.size());
    const auto more = dispatcher_.take_compatible(index_, first, want, until);
    if (more.empty()) break;
    for (const auto& task : more) begin(task);
  }
  if (tasks.empty()) return;

  const auto started = Clock::now();
  {
    std::lock_guard lock(mu_);
    stats_.busy = true;
    stats_.current_job = first.job_id;
    stats_.current_batch = tasks;
    busy_since_ = last_progress_ = started;
  }
  ImageGenerator* generator = nullptr;
  std::string load_error;
  try {
    generator = &cache_->acquire(first.model);  // loads (and evicts) here, on this thread
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
      stats_.current_batch.clear();
      stats_.busy_seconds += seconds(Clock::now() - started);
    }
  }
  if (!generator) {
    const std::string error =
        "cannot load model '" + specs.front().model + "' on " + spec_.name + ": " + load_error;
    spdlog::error("{}", error);
    for (const auto& task : tasks) {
      try {
        host_.task_model_failed(index_, task, error);
      } catch (const std::exception& e) {
        spdlog::error("{}: cannot record the end of {}/{}: {}", spec_.name, task.job_id, task.image,
                      e.what());
      }
    }
    return;
  }
  run_images(*generator, tasks, specs);
}

void DeviceWorker::run_images(ImageGenerator& generator, const std::vector<TaskRef>& tasks,
                              const std::vector<ImageSpec>& specs) {
  const TaskRef& first = tasks.front();
  const int batch_size = static_cast<int>(tasks.size());

  const auto started = Clock::now();
  {
    std::lock_guard lock(mu_);
    stats_.busy = true;
    stats_.current_job = first.job_id;
    stats_.current_batch = tasks;
    busy_since_ = last_progress_ = started;
  }
  // A step of the batch is over when its first image still in the batch reports it.
  auto previous_step = started;
  int last_step = 0;
  auto progress = [&](int k, int step, int steps) {
    if (step != last_step) {
      last_step = step;
      const auto now = Clock::now();
      const double step_time = seconds(now - previous_step);
      previous_step = now;
      step_seconds_.observe(step_time);
      std::lock_guard lock(mu_);
      ++stats_.steps_done;
      last_progress_ = now;
      if (step_time > 0) blend(stats_.steps_per_second, 1.0 / step_time);
    }
    return host_.task_progress(index_, tasks[static_cast<std::size_t>(k)], step, steps, batch_size);
  };

  std::string error;
  bool failed = false, out_of_memory = false;
  bool input_error = false;  // the task's fault (TaskInputError): not the device's
  std::vector<std::optional<RgbImage>> images;
  try {
    const bool previews = std::any_of(specs.begin(), specs.end(),
                                      [](const ImageSpec& spec) { return spec.previews; });
    if (previews)  // the replica makes them only for the images that asked (ImageSpec)
      generator.set_previews([this, &tasks](int k, RgbImage preview) {
        host_.task_preview(index_, tasks.at(static_cast<std::size_t>(k)), std::move(preview));
      });
    else
      generator.set_previews({});
    if (batch_size > 1) {
      images = generator.generate_batch(specs, progress);
    } else {
      try {  // one image: the replica's single path (bit for bit what `generate` makes)
        images.emplace_back(generator.generate_one(
            specs.front(), [&](int step, int steps) { return progress(0, step, steps); }));
      } catch (const GenerationStopped&) {
        images.emplace_back(std::nullopt);
      }
    }
    if (images.size() != tasks.size())
      throw std::runtime_error("the replica returned " + std::to_string(images.size()) +
                               " images for a batch of " + std::to_string(tasks.size()));
  } catch (const DeviceOutOfMemory& e) {
    failed = out_of_memory = true;
    error = std::string(DeviceOutOfMemory::reason) + ": " + e.what();
  } catch (const TaskInputError& e) {
    failed = input_error = true;
    error = e.what();
  } catch (const std::exception& e) {
    failed = true;
    error = e.what();
  } catch (...) {
    failed = true;
    error = "unknown error";
  }
  if (failed && batch_size > 1) {
    // Which image is at fault? Each runs again alone on this device, so only the culprit
    // fails (and only those runs count for the device's health).
    spdlog::warn("{}: a batch of {} failed ({}); running its images one by one", spec_.name,
                 batch_size, error);
    {
      std::lock_guard lock(mu_);
      stats_.busy = false;
      stats_.current_batch.clear();
    }
    for (std::size_t k = 0; k < tasks.size(); ++k) run_images(generator, {tasks[k]}, {specs[k]});
    return;
  }
  const auto end = Clock::now();
  int done = 0;
  for (const auto& image : images) done += image ? 1 : 0;
  {
    std::lock_guard lock(mu_);
    stats_.busy = false;
    stats_.current_job.clear();
    stats_.current_batch.clear();
    stats_.busy_seconds += seconds(end - started);
    if (!failed && done > 0) {
      stats_.images_done += done;
      blend(stats_.seconds_per_image, seconds(end - started) / done);
    }
    if (failed) {
      ++stats_.images_failed;
      if (out_of_memory) ++stats_.images_out_of_memory;
      stats_.last_error = error;
      stats_.last_error_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                                 std::chrono::system_clock::now().time_since_epoch())
                                 .count();
    }
  }
  try {
    const DeviceMemory memory = generator.memory();
    std::lock_guard lock(mu_);
    stats_.memory = memory;
  } catch (...) {
  }
  // One verdict per generation (a batch of 4 that fails counts once against the device); a
  // task's own bad input (an unreadable LoRA file) says nothing about the device.
  if ((failed && !input_error) || done > 0) {
    std::int64_t pixels = 0;
    for (const auto& spec : specs) pixels += static_cast<std::int64_t>(spec.width) * spec.height;
    report_health(!failed, out_of_memory, pixels);
  }
  for (std::size_t k = 0; k < tasks.size(); ++k) {
    const TaskRef& task = tasks[k];
    try {
      if (failed)
        host_.task_failed(index_, task, error);
      else if (images[k])
        host_.task_succeeded(index_, task, std::move(*images[k]));
      else
        host_.task_stopped(index_, task);
    } catch (const std::exception& e) {
      spdlog::error("{}: cannot record the end of {}/{}: {}", spec_.name, task.job_id, task.image,
                    e.what());
    }
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
