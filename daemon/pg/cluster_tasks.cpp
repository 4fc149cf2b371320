// ClusterService's side of the device workers (TaskHost): memory only, under mu_; every write
// to the database is queued to the writer thread. See cluster_service.h for the rules.
#include <spdlog/spdlog.h>

#include "daemon/core_shared.h"
#include "daemon/pg/cluster_service.h"

namespace diffusiond {

void ClusterService::replica_loaded(int worker, const std::string& error) {
  const auto& name = devices_[static_cast<std::size_t>(worker)].name;
  if (error.empty()) {
    spdlog::info("{}: model replica loaded", name);
  } else {
    spdlog::error("{}: cannot load the model: {}; this device gets no work", name, error);
    for (const auto& t : dispatcher_.mark_disabled(worker)) {  // back to the fleet
      std::lock_guard lock(mu_);
      end_locked({t.job_id, t.image}, pg::ImageOutcome::give_back, "");
    }
  }
  {
    std::lock_guard lock(load_mu_);
    ++loads_finished_;
    if (error.empty()) ++loads_ok_;
  }
  load_cv_.notify_all();
  wake_claimer();
}

std::optional<ImageSpec> ClusterService::begin_task(int worker, const TaskRef& task) {
  std::lock_guard lock(mu_);
  auto it = local_.find({task.job_id, task.image});
  if (it == local_.end()) return std::nullopt;
  LocalTask& t = it->second;
  if (t.lost || t.cancel || stop_now_) {
    end_locked(it->first, t.cancel ? pg::ImageOutcome::cancelled : pg::ImageOutcome::give_back, "");
    return std::nullopt;
  }
  t.started = true;
  Write start;
  start.kind = Write::Kind::start;
  start.job_id = task.job_id;
  start.image = task.image;
  start.attempt = t.claimed.attempt;
  start.device = daemon_id_ + "/" + devices_[static_cast<std::size_t>(worker)].name;  // fleet-wide
  start.at_ms = unix_ms_now();
  queue_write(std::move(start));
  ImageSpec spec = image_spec(t.claimed.request, task.image);
  spec.model = models_[static_cast<std::size_t>(t.model)].name;
  return spec;
}

bool ClusterService::task_progress(int, const TaskRef& task, int step, int steps, int batch_size) {
  std::lock_guard lock(mu_);
  auto it = local_.find({task.job_id, task.image});
  if (it == local_.end()) return false;
  LocalTask& t = it->second;
  if (t.lost || t.cancel || stop_now_) return false;
  t.step = step;
  t.steps = steps;
  t.batch_size = batch_size;
  t.progress_dirty = true;
  return true;
}

void ClusterService::task_succeeded(int worker, const TaskRef& task, RgbImage image) {
  const std::string device = devices_[static_cast<std::size_t>(worker)].name;
  PngGenerationInfo info;
  std::string hash_file;
  int attempt = 0, batch_size = 0;
  {
    std::lock_guard lock(mu_);
    auto it = local_.find({task.job_id, task.image});
    if (it == local_.end()) return;
    LocalTask& t = it->second;
    t.on_device = false;  // the device is free: the claimer may take another image
    attempt = t.claimed.attempt;
    batch_size = t.batch_size;
    const auto& request = t.claimed.request;
    const auto& model = models_[static_cast<std::size_t>(t.model)];
    info = make_png_info(image_spec(request, task.image), request,
                         {model.name, sampler_display(model_info_.schedulers, request.scheduler),
                          device, options_.dtype, task.job_id});
    hash_file = model.hash_file;
  }
  wake_claimer();
  auto shared = std::make_shared<RgbImage>(std::move(image));
  auto work = [this, task, shared, info, hash_file, attempt, batch_size]() mutable {
    add_hashes(info, options_.hasher.get(), hash_file, options_.loras.get());
    Write finish;
    finish.job_id = task.job_id;
    finish.image = task.image;
    finish.attempt = attempt;
    finish.batch_size = batch_size;
    finish.at_ms = unix_ms_now();
    try {
      finish.kind = Write::Kind::finish;
      finish.png = encoder_(*shared, info);
    } catch (const std::exception& e) {
      finish.kind = Write::Kind::end;
      finish.outcome = pg::ImageOutcome::failed;
      finish.error = std::string("cannot encode the PNG: ") + e.what();
    }
    queue_write(std::move(finish));
  };
  if (!png_pool_->post(work)) work();
}

void ClusterService::task_stopped(int, const TaskRef& task) {
  std::lock_guard lock(mu_);
  auto it = local_.find({task.job_id, task.image});
  if (it == local_.end()) return;
  const LocalTask& t = it->second;
  if (t.cancel)
    end_locked(it->first, pg::ImageOutcome::cancelled, "");
  else if (t.lost || stop_now_)
    end_locked(it->first, pg::ImageOutcome::give_back, "");
  else
    end_locked(it->first, pg::ImageOutcome::failed, "generation stopped unexpectedly");
}

void ClusterService::task_failed(int worker, const TaskRef& task, const std::string& error) {
  const auto& name = devices_[static_cast<std::size_t>(worker)].name;
  spdlog::error("job {} image {} failed on {}: {}", task.job_id, task.image, name, error);
  std::lock_guard lock(mu_);
  auto it = local_.find({task.job_id, task.image});
  if (it == local_.end()) return;
  const LocalTask& t = it->second;
  if (t.cancel)
    end_locked(it->first, pg::ImageOutcome::cancelled, "");
  else if (t.claimed.attempt < options_.max_attempts && !stop_now_)
    end_locked(it->first, pg::ImageOutcome::retry,
               error + " (on " + daemon_id_ + " " + name + "; retrying)");
  else
    end_locked(it->first, pg::ImageOutcome::failed,
               error + " (on " + daemon_id_ + " " + name + ")");
}

void ClusterService::task_model_failed(int, const TaskRef& task, const std::string& error) {
  std::lock_guard lock(mu_);
  auto it = local_.find({task.job_id, task.image});
  if (it == local_.end()) return;
  end_locked(it->first, it->second.cancel ? pg::ImageOutcome::cancelled : pg::ImageOutcome::failed,
             error);
}

void ClusterService::end_locked(const Key& key, pg::ImageOutcome outcome,
                                const std::string& error) {
  auto it = local_.find(key);
  if (it == local_.end()) return;
  if (!it->second.lost) {
    Write end;
    end.kind = Write::Kind::end;
    end.job_id = key.first;
    end.image = key.second;
    end.attempt = it->second.claimed.attempt;
    end.outcome = outcome;
    end.error = error;
    end.at_ms = unix_ms_now();
    queue_write(std::move(end));
  }
  if (outcome == pg::ImageOutcome::failed) ++images_failed_;
  local_.erase(it);
  wake_claimer();
}

int ClusterService::free_slots_locked() const {
  int on_device = 0;
  for (const auto& [key, t] : local_) on_device += t.on_device ? 1 : 0;
  int usable = 0;
  for (const auto& worker : workers_) {
    const auto health = dispatcher_.health(worker->index()).health;
    const bool loaded = worker->stats().loaded;
    if (loaded && health != DeviceHealth::disabled && health != DeviceHealth::unhealthy)
      usable += max_batch(static_cast<std::size_t>(worker->index()));
  }
  return std::max(0, usable - on_device);
}

int ClusterService::max_batch(std::size_t device) const {
  return options_.max_batch > 0 ? options_.max_batch : default_max_batch(devices_[device]);
}

std::vector<std::string> ClusterService::served_model_names() const {
  std::vector<std::string> names;
  for (const auto& m : models_) names.push_back(m.name);
  return names;
}

}  // namespace diffusiond
