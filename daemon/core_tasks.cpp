// CoreService's side of the device workers (TaskHost): a task's start, progress, success (the
// PNG written on the pool), stop and failure. See core_service.h for the rules.
#include <spdlog/spdlog.h>

#include <algorithm>

#include "daemon/atomic_file.h"
#include "daemon/core_events.h"
#include "daemon/core_service.h"
#include "daemon/core_shared.h"

namespace diffusiond {

// ---- worker callbacks ------------------------------------------------------------------------

void CoreService::replica_loaded(int worker, const std::string& error) {
  const auto& name = devices_[static_cast<std::size_t>(worker)].name;
  if (error.empty()) {
    spdlog::info("{}: model replica loaded", name);
  } else {
    spdlog::error("{}: cannot load the model: {}; this device gets no work", name, error);
    strand_orphans(dispatcher_.mark_disabled(worker));
  }
  {
    std::lock_guard lock(load_mu_);
    ++loads_finished_;
    if (error.empty()) ++loads_ok_;
  }
  load_cv_.notify_all();
}

std::optional<ImageSpec> CoreService::begin_task(int worker, const TaskRef& task) {
  std::vector<std::string> to_flush;
  ImageSpec spec;
  {
    std::lock_guard lock(mu_);
    ActiveJob* job = find_locked(task.job_id);
    if (!job || stop_now_ || job->record.cancel_requested) return std::nullopt;
    auto& view = job->record.view;
    const auto k = static_cast<std::size_t>(task.image);
    if (k >= view.images.size() || view.images[k].status != ImageStatus::queued)
      return std::nullopt;
    set_image_status(job->record, task.image, ImageStatus::running);
    auto& image = view.images[k];
    const auto now = unix_ms_now();
    image.device = devices_[static_cast<std::size_t>(worker)].name;
    image.started_ms = now;
    image.step = 0;
    image.steps = view.request.steps;
    image.batch_size = 0;  // known at its first step
    ++job->record.attempts[k];
    queue_wait_.observe(static_cast<double>(now - job->queued_since_ms[k]) / 1000.0);
    JobEvent started = make_event(JobEvent::Kind::started, task.job_id, task.image);
    started.device = image.device;
    started.steps = image.steps;
    emit_locked(*job, started, to_flush);
    spec = image_spec_of(*job, task.image);
    commit_locked(*job, {task.image}, to_flush);
  }
  flush(to_flush);
  return spec;
}

bool CoreService::task_progress(int, const TaskRef& task, int step, int steps, int batch_size) {
  std::vector<std::string> to_flush;
  {
    std::lock_guard lock(mu_);
    ActiveJob* job = find_locked(task.job_id);
    if (!job || stop_now_ || job->record.cancel_requested || store_failed_) return false;
    auto& image = job->record.view.images[static_cast<std::size_t>(task.image)];
    if (image.status != ImageStatus::running) return false;
    image.step = step;
    image.steps = steps;
    image.batch_size = batch_size;
    JobEvent progress = make_event(JobEvent::Kind::progress, task.job_id, task.image);
    progress.step = step;
    progress.steps = steps;
    emit_locked(*job, progress, to_flush);
  }
  flush(to_flush);
  return true;
}

void CoreService::task_succeeded(int worker, const TaskRef& task, RgbImage image) {
  const std::string device = devices_[static_cast<std::size_t>(worker)].name;
  PngGenerationInfo info;
  std::string hash_file;
  {
    std::lock_guard lock(mu_);
    ActiveJob* job = find_locked(task.job_id);
    if (!job) return;
    const auto& view = job->record.view;
    info =
        make_png_info(image_spec(view.request, task.image), view.request,
                      {view.model, sampler_display(model_info_.schedulers, view.request.scheduler),
                       device, options_.dtype, view.id});
    hash_file = models_[static_cast<std::size_t>(job->model)].hash_file;
  }
  auto shared = std::make_shared<RgbImage>(std::move(image));
  auto work = [this, task, device, shared, info, hash_file]() mutable {
    // On the PNG pool: the model's sha256 (computed once per file by the hasher's thread; the
    // first image of a model waits here for it, never a device thread).
    add_hashes(info, options_.hasher.get(), hash_file, options_.loras.get());
    write_png(task, device, *shared, info);
  };
  if (!png_pool_->post(work)) work();
}

void CoreService::write_png(const TaskRef& task, const std::string& device, const RgbImage& image,
                            const PngGenerationInfo& info) {
  std::string error;
  bool full = false;
  std::int64_t size = 0;
  try {
    const auto bytes = encoder_(image, info);
    store_.prepare_image_dir(task.job_id);
    write_file_atomically(store_.image_file(task.job_id, task.image), bytes);
    size = static_cast<std::int64_t>(bytes.size());
  } catch (const std::exception& e) {
    error = std::string("cannot write the PNG: ") + e.what();
    full = is_storage_full_error(e);
    spdlog::error("{}/{} on {}: {}{}", task.job_id, task.image, device, error,
                  full ? "; queued again for when space is freed" : "");
    if (full) storage_->report_full(error);  // pauses the devices before the image re-queues
  }
  image_written(task, error, full, size);
}

void CoreService::image_written(const TaskRef& task, const std::string& error, bool storage_full,
                                std::int64_t file_bytes) {
  std::vector<std::string> to_flush;
  {
    std::lock_guard lock(mu_);
    ActiveJob* job = find_locked(task.job_id);
    if (!job || job->record.view.images[static_cast<std::size_t>(task.image)].status !=
                    ImageStatus::running)
      return;  // it ended meanwhile (the store failed)
    if (storage_full && !job->record.cancel_requested && !draining_) {
      // Not the image's fault: it runs again once space is freed, and the attempt is not counted.
      const auto k = static_cast<std::size_t>(task.image);
      set_image_status(job->record, task.image, ImageStatus::queued);
      auto& attempts = job->record.attempts[k];
      attempts = std::max(0, attempts - 1);
      auto& image = job->record.view.images[k];
      image.error = error + " (queued again)";
      image.device.clear();
      image.started_ms = 0;
      image.step = 0;
      job->queued_since_ms[k] = unix_ms_now();
      commit_locked(*job, {task.image}, to_flush);
      dispatcher_.enqueue(task_ref(*job, task.image));
    } else if (!error.empty()) {
      fail_image_locked(*job, task.image, error, to_flush);
    } else {
      set_image_status(job->record, task.image, ImageStatus::done);
      auto& image = job->record.view.images[static_cast<std::size_t>(task.image)];
      image.has_file = true;
      image.file_bytes = file_bytes;
      image.finished_ms = unix_ms_now();
      // Done: "steps of steps" in the request's own count, as the store reads it back (while
      // running, progress counts model evaluations, e.g. steps + 1 for PNDM).
      image.steps = job->record.view.request.steps;
      image.step = image.steps;
      image.error.clear();
      ++images_written_;
      spdlog::info("job {} image {} done on {} ({} ms)", task.job_id, task.image, image.device,
                   image.finished_ms - image.started_ms);
      emit_locked(*job, make_event(JobEvent::Kind::image, task.job_id, task.image), to_flush);
      commit_locked(*job, {task.image}, to_flush);
    }
  }
  flush(to_flush);
}

void CoreService::task_stopped(int worker, const TaskRef& task) {
  std::vector<std::string> to_flush;
  {
    std::lock_guard lock(mu_);
    ActiveJob* job = find_locked(task.job_id);
    if (!job) return;
    auto& image = job->record.view.images[static_cast<std::size_t>(task.image)];
    if (image.status != ImageStatus::running) return;  // it ended meanwhile (the store failed)
    if (job->record.cancel_requested) {
      set_image_status(job->record, task.image, ImageStatus::cancelled);
      image.finished_ms = unix_ms_now();
    } else if (stop_now_) {  // shutdown: runs again after the restart
      set_image_status(job->record, task.image, ImageStatus::queued);
      auto& attempts = job->record.attempts[static_cast<std::size_t>(task.image)];
      attempts = std::max(0, attempts - 1);  // an attempt cut short by a shutdown does not count
      image.device.clear();
      image.started_ms = 0;
      image.step = 0;
      spdlog::info("job {} image {} interrupted by shutdown on {}; queued for the next start",
                   task.job_id, task.image, devices_[static_cast<std::size_t>(worker)].name);
    } else {
      fail_image_locked(*job, task.image, "generation stopped unexpectedly", to_flush);
      job = nullptr;
    }
    if (job) commit_locked(*job, {task.image}, to_flush);
  }
  flush(to_flush);
}

void CoreService::task_failed(int worker, const TaskRef& task, const std::string& error) {
  const auto& name = devices_[static_cast<std::size_t>(worker)].name;
  spdlog::error("job {} image {} failed on {}: {}", task.job_id, task.image, name, error);
  std::vector<std::string> to_flush;
  {
    std::lock_guard lock(mu_);  // the worker already reported the failure to the dispatcher
    ActiveJob* job = find_locked(task.job_id);
    if (job && job->record.view.images[static_cast<std::size_t>(task.image)].status !=
                   ImageStatus::running)
      job = nullptr;  // it ended meanwhile (the store failed)
    if (job) {
      const auto k = static_cast<std::size_t>(task.image);
      auto& image = job->record.view.images[k];
      if (job->record.cancel_requested) {
        set_image_status(job->record, task.image, ImageStatus::cancelled);
        image.finished_ms = unix_ms_now();
        commit_locked(*job, {task.image}, to_flush);
      } else if (job->record.attempts[k] < options_.max_attempts && !stop_now_ &&
                 dispatcher_.healthy_count() > 0) {
        set_image_status(job->record, task.image, ImageStatus::queued);
        image.error = error + " (on " + name + "; retrying)";
        image.device.clear();
        image.step = 0;
        job->queued_since_ms[k] = unix_ms_now();
        commit_locked(*job, {task.image}, to_flush);
        if (!draining_ && !dispatcher_.requeue(task, worker))
          fail_image_locked(*find_locked(task.job_id), task.image, error, to_flush);
      } else {
        fail_image_locked(*job, task.image, error + " (on " + name + ")", to_flush);
      }
    }
  }
  flush(to_flush);
}

void CoreService::task_model_failed(int worker, const TaskRef& task, const std::string& error) {
  // The model's fault, not the device's: no retry elsewhere (every device would read the same
  // file), no health verdict. The job's queued images fail with the same message; a later job of
  // the model tries to load it again (a fixed file works without a restart).
  (void)worker;
  std::vector<std::string> to_flush;
  {
    std::lock_guard lock(mu_);
    ActiveJob* job = find_locked(task.job_id);
    if (!job) return;
    const auto k = static_cast<std::size_t>(task.image);
    if (job->record.view.images[k].status == ImageStatus::running) {
      if (job->record.cancel_requested) {
        set_image_status(job->record, task.image, ImageStatus::cancelled);
        job->record.view.images[k].finished_ms = unix_ms_now();
        commit_locked(*job, {task.image}, to_flush);
      } else {
        fail_image_locked(*job, task.image, error, to_flush);
      }
    }
    for (const auto& queued : dispatcher_.cancel_job(task.job_id))
      fail_unstarted_locked(*find_locked(task.job_id), queued.image, error, to_flush);
  }
  flush(to_flush);
}

}  // namespace diffusiond
