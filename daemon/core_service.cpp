#include "daemon/core_service.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <thread>

#include "daemon/api/batch_key.h"
#include "daemon/core_events.h"

namespace diffusiond {

namespace {
bool all_images_terminal(const JobView& view) {
  return std::all_of(view.images.begin(), view.images.end(),
                     [](const ImageView& i) { return is_terminal(i.status); });
}

std::uint64_t random_seed() {  // a random 32-bit seed, as A1111 and diffusers users expect
  thread_local std::mt19937 engine{std::random_device{}()};
  return static_cast<std::uint32_t>(engine());
}
}  // namespace

int loaded_models_limit(int max_loaded_models, const DeviceSpec& device) {
  if (max_loaded_models > 0) return max_loaded_models;
  return device.kind == DeviceSpec::Kind::cuda ? 3 : 1;
}

TaskRef CoreService::task_ref(const ActiveJob& job, int k) const {
  TaskRef task{job.record.view.id, k, job.record.view.request.priority, job.record.seq, -1};
  task.model = job.model;
  // A job whose model is no longer served never runs (see start), so it needs no key.
  if (job.model >= 0) task.batch_key = batch_key(image_spec_of(job, k));
  return task;
}

ImageSpec CoreService::image_spec_of(const ActiveJob& job, int k) const {
  ImageSpec spec = image_spec(job.record.view.request, k);
  spec.previews = job.record.previews;
  spec.model = models_.at(static_cast<std::size_t>(job.model)).name;  // resolved
  return spec;
}

int CoreService::resolve_model(const GenerateRequest& asked) const {
  if (const auto found = find_model(models_, asked.model.value_or("")))
    return static_cast<int>(*found);
  throw ServiceError(ErrorCode::invalid_request,
                     "unknown model '" + asked.model.value_or("").substr(0, 100) +
                         "'; this daemon serves: " + model_names(models_) + " (GET /models)",
                     "unknown_model", "model");
}

CoreService::CoreService(JobStore& store, ModelBackend& backend, std::vector<DeviceSpec> devices,
                         CoreOptions options, PngEncoder encoder)
    : store_(store),
      backend_(backend),
      devices_(std::move(devices)),
      options_(std::move(options)),
      encoder_(std::move(encoder)),
      models_(backend.models()),
      default_model_(backend.default_model()),
      model_info_(models_.at(static_cast<std::size_t>(default_model_))),
      dispatcher_(static_cast<int>(devices_.size()), options_.dispatch,
                  DeviceHealthOptions{options_.unhealthy_after, options_.probe_interval}),
      png_pool_(std::make_unique<ThreadPool>(options_.png_threads, "png encoder")) {
  writer_ = std::make_unique<StoreWriter>(store_, static_cast<StoreWriter::Listener&>(*this),
                                          options_.storage_check_every);
  storage_ = std::make_unique<StorageGuard>(
      StorageGuardOptions{store_.data_dir(), options_.min_free_bytes, options_.storage_check_every},
      [this](bool full, const std::string& why) {
        dispatcher_.set_paused(full);
        if (full)
          spdlog::error("storage full: {}; no new jobs or images until space is freed", why);
        else
          spdlog::info("storage available again: images run and jobs are accepted");
      });
  for (std::size_t i = 0; i < devices_.size(); ++i) {
    const WorkerBatching batching{
        options_.max_batch > 0 ? options_.max_batch : default_max_batch(devices_[i]),
        options_.batch_wait};
    workers_.push_back(std::make_unique<DeviceWorker>(
        static_cast<int>(i), devices_[i], backend_, dispatcher_, static_cast<TaskHost&>(*this),
        loaded_models_limit(options_.max_loaded_models, devices_[i]), batching));
  }
}

CoreService::~CoreService() {
  drain(std::chrono::milliseconds(0));
}

// ---- lifecycle -------------------------------------------------------------------------------

void CoreService::start() {
  if (started_.exchange(true)) return;
  auto unfinished = store_.recover();
  const std::int64_t max_seq = store_.max_seq();
  std::vector<std::string> to_flush;
  int requeued = 0;
  {
    std::lock_guard lock(mu_);
    next_seq_ = max_seq + 1;
    const auto now = unix_ms_now();
    for (auto& record : unfinished) {
      const std::string id = record.view.id;
      ActiveJob job{std::move(record), {}, false};
      job.queued_since_ms.assign(job.record.view.images.size(), now);
      const auto model = find_model(models_, job.record.view.model);
      job.model = model ? static_cast<int>(*model) : -1;
      auto& inserted = active_.emplace(id, std::move(job)).first->second;
      if (!inserted.record.idempotency_key.empty())
        idempotency_[{inserted.record.client, inserted.record.idempotency_key}] = id;
      const JobStatus next =
          next_job_status(inserted.record.view.status, inserted.record.view.images);
      if (next != inserted.record.view.status) {  // every image ended before the job row did
        check_job_transition(inserted.record.view.status, next, id);
        inserted.record.view.status = next;
      }
      std::vector<int> exhausted;
      for (const auto& image : inserted.record.view.images) {
        if (image.status != ImageStatus::queued) continue;
        // An image that was running whenever the daemon died (a crash, the OOM killer) has
        // used its attempts: it fails instead of killing every restart (no crash loop).
        if (inserted.record.attempts[static_cast<std::size_t>(image.index)] >=
                options_.max_attempts ||
            inserted.model < 0) {
          exhausted.push_back(image.index);
          continue;
        }
        dispatcher_.enqueue(task_ref(inserted, image.index));
        ++requeued;
      }
      for (int k : exhausted) {
        if (inserted.model < 0) {  // its model left the models dir
          fail_unstarted_locked(inserted, k,
                                "unknown_model: model '" + inserted.record.view.model +
                                    "' is not served any more (serving: " + model_names(models_) +
                                    ")",
                                to_flush);
          continue;
        }
        const int attempts = inserted.record.attempts[static_cast<std::size_t>(k)];
        spdlog::error("job {} image {}: started {} time(s) without finishing; failed", id, k,
                      attempts);
        fail_unstarted_locked(inserted, k,
                              "attempts_exhausted: the daemon stopped while this image ran, " +
                                  std::to_string(attempts) + " time(s); it is not run again",
                              to_flush);
      }
      commit_locked(inserted, {}, to_flush);  // may finish (and retire) the job
    }
  }
  flush(to_flush);
  if (!unfinished.empty())
    spdlog::info("recovered {} unfinished job(s) from the store, {} image(s) queued again",
                 unfinished.size(), requeued);
  storage_->start();
  for (auto& worker : workers_) worker->start();
}

bool CoreService::wait_loaded(std::chrono::milliseconds timeout) {
  std::unique_lock lock(load_mu_);
  load_cv_.wait_for(lock, timeout,
                    [&] { return loads_finished_ == static_cast<int>(workers_.size()); });
  return loads_finished_ == static_cast<int>(workers_.size()) && loads_ok_ > 0;
}

bool CoreService::loading_finished() const {
  std::lock_guard lock(load_mu_);
  return loads_finished_ == static_cast<int>(workers_.size());
}

void CoreService::drain(std::chrono::milliseconds grace) {
  if (drained_.exchange(true)) return;
  draining_ = true;
  dispatcher_.stop();  // idle workers return; busy ones finish their image if they can
  const auto deadline = std::chrono::steady_clock::now() + grace;
  auto any_busy = [&] {
    return std::any_of(workers_.begin(), workers_.end(),
                       [](const auto& w) { return w->stats().busy; });
  };
  while (any_busy() && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  stop_now_ = true;  // the rest stop at their next step and are persisted as queued
  for (auto& worker : workers_) worker->join();
  png_pool_->shutdown();  // pending PNG writes complete
  writer_->stop();        // then every queued store write
  storage_->stop();
}

// ---- ImageService ----------------------------------------------------------------------------

std::vector<LoraView> CoreService::loras() const {
  return options_.loras ? options_.loras->list() : std::vector<LoraView>{};
}

void CoreService::check_loras(const std::vector<LoraRef>& loras) const {
  for (std::size_t i = 0; i < loras.size(); ++i) {
    const std::string& name = loras[i].name;
    if (options_.loras && options_.loras->find(name)) continue;
    std::string known;
    if (options_.loras) {
      const auto names = options_.loras->names();
      for (std::size_t k = 0; k < names.size() && k < 10; ++k) known += (k ? ", " : "") + names[k];
      if (names.size() > 10) known += ", ... (" + std::to_string(names.size()) + " in all)";
    }
    throw ServiceError(ErrorCode::invalid_request,
                       "unknown LoRA '" + name.substr(0, 100) + "': no " + name.substr(0, 100) +
                           ".safetensors in the LoRA folder (--lora-dir)" +
                           (known.empty() ? "; it holds no LoRA" : "; known: " + known),
                       "unknown_lora", "loras");
  }
}

ModelInfo CoreService::model_info() const {
  return models().at(static_cast<std::size_t>(default_model_));
}

std::vector<ModelInfo> CoreService::models() const {
  std::vector<ModelInfo> out = models_;
  for (const auto& worker : workers_)
    for (int id : dispatcher_.models(worker->index()))
      if (id >= 0 && id < static_cast<int>(out.size()))
        out[static_cast<std::size_t>(id)].loaded_on.push_back(worker->spec().name);
  if (options_.hasher)
    for (auto& m : out)
      if (auto hash = options_.hasher->peek(m.hash_file)) m.sha256 = *hash;
  return out;
}

std::optional<std::string> CoreService::canonical_scheduler(const std::string& name) const {
  return backend_.canonical_scheduler(name);
}

Submission CoreService::submit(const GenerateRequest& asked, const SubmitContext& context) {
  auto normalise_for = [&](const ModelInfo& model) {
    return normalise(
        asked, request_defaults(model),
        [this](const std::string& name) { return backend_.canonical_scheduler(name); },
        options_.limits, random_seed(), scheduler_names(model));
  };
  int model_id = 0;
  try {
    model_id = resolve_model(asked);
  } catch (const ServiceError&) {
    normalise_for(model_info_);  // a malformed `model` is reported as such first
    throw;
  }
  const ModelInfo& model = models_[static_cast<std::size_t>(model_id)];
  const JobRequest request = normalise_for(model);  // defaults from the model asked for
  if (options_.hasher) options_.hasher->hash_in_background({model.hash_file});  // first use
  check_loras(request.loras);  // a stat per LoRA, outside every lock
  if (request.priority > 0 && !context.may_prioritise)
    throw ServiceError(ErrorCode::forbidden,
                       "priority " + std::to_string(request.priority) +
                           " needs an API key allowed to prioritise (--priority-api-key); "
                           "priorities of 0 and below are open to every caller",
                       "priority_not_allowed", "priority");
  const bool idempotent = !context.idempotency_key.empty();
  std::optional<JobRecord> stored;  // read before mu_: a committed job is found in the store
  if (idempotent) {
    try {
      stored = store_.find_by_idempotency_key(context.client, context.idempotency_key);
    } catch (const std::exception& e) {
      throw store_failure(e);
    }
  }
  const int count = image_count(request);
  JobRecord record;
  StoreWriter::Ticket ticket = 0;
  {
    std::lock_guard lock(mu_);
    if (idempotent)
      if (auto earlier = replay_locked(context, stored)) return *earlier;
    if (auto refused = refusal_locked()) throw *refused;
    const std::size_t depth = dispatcher_.queued() + static_cast<std::size_t>(pending_images_);
    if (depth > 0 &&
        depth + static_cast<std::size_t>(count) > static_cast<std::size_t>(options_.max_queue))
      throw ServiceError(ErrorCode::queue_full,
                         "the queue holds " + std::to_string(depth) + " images (max " +
                             std::to_string(options_.max_queue) + "); retry later",
                         "queue_full", {}, retry_after_seconds_locked());
    record = make_job(request, make_job_id(), unix_ms_now(), model.name);
    record.seq = next_seq_++;
    record.client = context.client;
    record.idempotency_key = context.idempotency_key;
    record.fingerprint = context.fingerprint;
    record.previews = context.previews;
    if (idempotent)  // reserved: a concurrent retry is told it is in flight
      idempotency_[{context.client, context.idempotency_key}] = record.view.id;
    pending_images_ += count;
    ticket = writer_->enqueue({record, {}, true});
  }
  bool full = false;
  const std::string error = writer_->wait(ticket, &full);  // committed and synced: durable
  std::vector<std::string> to_flush;
  JobView view;
  {
    std::lock_guard lock(mu_);
    pending_images_ -= count;
    if (!error.empty() && idempotent) idempotency_.erase({context.client, context.idempotency_key});
    if (full)
      throw ServiceError(ErrorCode::storage_full, "the data dir is full: " + error, "storage_full",
                         {}, 30);
    if (!error.empty())
      throw ServiceError(ErrorCode::unavailable, "cannot store the job: " + error, "store_error");
    const std::string id = record.view.id;
    const auto created = record.view.created_ms;
    ActiveJob job{std::move(record),
                  std::vector<std::int64_t>(static_cast<std::size_t>(count), created),
                  false,
                  ticket,
                  false,
                  model_id};
    auto& inserted = active_.emplace(id, std::move(job)).first->second;
    emit_locked(inserted, make_event(JobEvent::Kind::queued, id), to_flush);
    for (int k = 0; k < count; ++k) dispatcher_.enqueue(task_ref(inserted, k));
    view = inserted.record.view;
  }
  flush(to_flush);
  spdlog::info("job {} queued: {} image(s) of {}, {} steps, {}x{}, priority {}", view.id, count,
               model.name, request.steps, request.width, request.height, request.priority);
  return {view, false};
}

std::optional<Submission> CoreService::replay_locked(const SubmitContext& context,
                                                     const std::optional<JobRecord>& stored) {
  const JobRecord* earlier = stored ? &*stored : nullptr;
  if (auto it = idempotency_.find({context.client, context.idempotency_key});
      it != idempotency_.end()) {
    ActiveJob* job = find_locked(it->second);
    if (!job)  // its insert is not committed yet
      throw ServiceError(ErrorCode::conflict,
                         "a request with this Idempotency-Key is still being accepted; retry",
                         "idempotency_key_in_flight", "Idempotency-Key", 1);
    earlier = &job->record;  // memory is newer than the store
  }
  if (!earlier) return std::nullopt;
  if (earlier->fingerprint != context.fingerprint)
    throw ServiceError(ErrorCode::conflict,
                       "this Idempotency-Key was used for a different request (job " +
                           earlier->view.id + "); use a new key for a new request",
                       "idempotency_key_reused", "Idempotency-Key");
  return Submission{earlier->view, true};
}

std::optional<JobView> CoreService::job(const std::string& id) const {
  {
    std::lock_guard lock(mu_);
    auto it = active_.find(id);
    if (it != active_.end()) return it->second.record.view;
  }
  try {
    auto record = store_.load(id);
    if (!record) return std::nullopt;
    return std::move(record->view);
  } catch (const std::exception& e) {
    throw store_failure(e);
  }
}

CancelResult CoreService::cancel(const std::string& id) {
  std::vector<std::string> to_flush;
  {
    std::lock_guard lock(mu_);
    ActiveJob* job = find_locked(id);
    if (!job || is_terminal(job->record.view.status)) {
      if (job) return CancelResult::already_finished;
      try {
        return store_.load(id) ? CancelResult::already_finished : CancelResult::not_found;
      } catch (const std::exception& e) {
        throw store_failure(e);
      }
    }
    dispatcher_.cancel_job(id);
    const auto was_queued = cancel_job(job->record);
    const auto now = unix_ms_now();
    for (int k : was_queued) job->record.view.images[static_cast<std::size_t>(k)].finished_ms = now;
    commit_locked(*job, was_queued, to_flush);
  }
  flush(to_flush);
  spdlog::info("job {} cancelled", id);
  return CancelResult::cancelled;
}

std::optional<std::string> CoreService::image_path(const std::string& id, int k) const {
  auto view = job(id);
  if (!view || k < 0 || k >= static_cast<int>(view->images.size())) return std::nullopt;
  if (!view->images[static_cast<std::size_t>(k)].has_file) return std::nullopt;
  const auto path = store_.image_file(id, k);
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) return std::nullopt;
  return path.string();
}

std::unique_ptr<Subscription> CoreService::subscribe(
    const std::string& job_id, std::function<void(const JobEvent&)> on_event) {
  return hub_.subscribe(job_id, std::move(on_event));
}

std::vector<DeviceView> CoreService::devices() const {
  std::vector<DeviceView> out;
  for (const auto& worker : workers_) {
    const auto s = worker->stats();
    DeviceView d;
    d.name = s.name;
    d.description = s.loaded ? s.description
                             : (s.load_finished ? "model failed to load: " + s.load_error
                                                : std::string("loading the model"));
    d.memory_total_bytes = s.memory.total_bytes;
    d.memory_used_bytes = s.memory.used_bytes;
    d.loaded = s.loaded;
    const auto health = dispatcher_.health(worker->index());
    d.healthy = health.health == DeviceHealth::healthy;
    d.health = health.health;
    d.consecutive_failures = health.consecutive_failures;
    if (health.health == DeviceHealth::unhealthy)
      d.next_probe_ms = unix_ms_now() + health.probe_in.count();
    d.images_failed = s.images_failed;
    d.images_out_of_memory = s.images_out_of_memory;
    d.last_error = s.last_error;
    d.last_error_ms = s.last_error_ms;
    d.busy = s.busy;
    d.current_job = s.current_job;
    for (const auto& task : s.current_batch) d.current_batch.push_back({task.job_id, task.image});
    d.images_done = s.images_done;
    d.steps_done = s.steps_done;
    d.steps_per_second = s.steps_per_second;
    d.busy_ratio = s.uptime_seconds > 0 ? std::min(1.0, s.busy_seconds / s.uptime_seconds) : 0;
    for (int id : s.models)
      if (id >= 0 && id < static_cast<int>(models_.size()))
        d.models.push_back(models_[static_cast<std::size_t>(id)].name);
    d.model_loads = s.model_loads;
    d.model_evictions = s.model_evictions;
    d.model_load_failures = s.model_load_failures;
    out.push_back(std::move(d));
  }
  return out;
}

std::optional<ServiceError> CoreService::refusal_locked() const {
  if (draining_)
    return ServiceError(ErrorCode::unavailable, "the daemon is shutting down", "draining", {}, 5);
  if (store_failed_)
    return ServiceError(ErrorCode::unavailable, "the job store cannot be written: " + store_error_,
                        "store_error");
  if (storage_->full())
    return ServiceError(
        ErrorCode::storage_full,
        "the data dir is full (" + storage_->reason() + "); retry once space is freed",
        "storage_full", {}, 30);
  if (!dispatcher_.any_enabled())  // while devices are only unhealthy, jobs wait for a probe
    return ServiceError(ErrorCode::unavailable, "no device can run images", "no_device");
  return std::nullopt;
}

std::optional<ServiceError> CoreService::not_ready() const {
  {
    std::lock_guard lock(mu_);
    if (auto refused = refusal_locked()) return refused;
  }
  if (dispatcher_.healthy_count() == 0)
    return ServiceError(ErrorCode::unavailable,
                        "no healthy device is left; jobs wait until a probe succeeds", "no_device",
                        {}, 30);
  std::lock_guard lock(load_mu_);
  const int total = static_cast<int>(workers_.size());
  if (loads_finished_ == total && loads_ok_ > 0) return std::nullopt;
  return ServiceError(ErrorCode::unavailable,
                      "the model is loaded on " + std::to_string(loads_ok_) + " of " +
                          std::to_string(total) + " device(s)",
                      "loading", {}, 5);
}

// ---- helpers ---------------------------------------------------------------------------------

CoreService::ActiveJob* CoreService::find_locked(const std::string& id) {
  auto it = active_.find(id);
  return it == active_.end() ? nullptr : &it->second;
}

void CoreService::emit_locked(ActiveJob& job, JobEvent event, std::vector<std::string>& flush) {
  if (job.terminal_event_sent) return;  // nothing follows done / failed / cancelled
  hub_.enqueue(event);
  flush.push_back(event.job_id);
}

void CoreService::commit_locked(ActiveJob& job, const std::vector<int>& images,
                                std::vector<std::string>& flush) {
  auto& view = job.record.view;
  const auto now = unix_ms_now();
  if (view.status != JobStatus::queued && view.started_ms == 0) view.started_ms = now;
  if (is_terminal(view.status) && view.finished_ms == 0) view.finished_ms = now;
  if (view.status == JobStatus::failed && view.error.empty()) {
    for (const auto& image : view.images)
      if (image.status == ImageStatus::failed) {
        view.error = "image " + std::to_string(image.index) + ": " + image.error;
        break;
      }
  }
  job.last_write = writer_->enqueue({job.record, images, false});  // written off the lock
  if (is_terminal(view.status) && !job.terminal_event_sent) {
    JobEvent::Kind kind = view.status == JobStatus::done     ? JobEvent::Kind::done
                          : view.status == JobStatus::failed ? JobEvent::Kind::failed
                                                             : JobEvent::Kind::cancelled;
    JobEvent event = make_event(kind, view.id);
    event.error = view.error;
    emit_locked(job, event, flush);
    job.terminal_event_sent = true;
    if (kind == JobEvent::Kind::done)
      spdlog::info("job {} done in {} ms", view.id, view.finished_ms - view.created_ms);
    if (kind == JobEvent::Kind::failed) spdlog::warn("job {} failed: {}", view.id, view.error);
  }
  // Finished: the job leaves memory once this last write is committed (writes_committed).
  if (is_terminal(view.status) && all_images_terminal(view)) job.retiring = true;
}

void CoreService::fail_unstarted_locked(ActiveJob& job, int k, const std::string& error,
                                        std::vector<std::string>& flush) {
  // Taken and failed before its first step: queued -> running -> failed (both checked).
  set_image_status(job.record, k, ImageStatus::running);
  job.record.view.images[static_cast<std::size_t>(k)].started_ms = unix_ms_now();
  fail_image_locked(job, k, error, flush);
}

void CoreService::fail_image_locked(ActiveJob& job, int k, const std::string& error,
                                    std::vector<std::string>& flush) {
  auto& image = job.record.view.images[static_cast<std::size_t>(k)];
  set_image_status(job.record, k, ImageStatus::failed);
  image.error = error;
  image.finished_ms = unix_ms_now();
  ++images_failed_;
  JobEvent failed = make_event(JobEvent::Kind::failed, job.record.view.id, k);
  failed.error = error;
  emit_locked(job, failed, flush);
  commit_locked(job, {k}, flush);
}

void CoreService::strand_orphans(const std::vector<TaskRef>& orphans) {
  if (orphans.empty()) return;
  spdlog::critical(
      "no device can run images (every model replica failed to load): {} queued image(s) stay "
      "queued in the store and run after a restart (the systemd watchdog restarts the daemon)",
      orphans.size());
}

void CoreService::flush(const std::vector<std::string>& job_ids) {
  std::vector<std::string> unique = job_ids;
  std::sort(unique.begin(), unique.end());
  unique.erase(std::unique(unique.begin(), unique.end()), unique.end());
  for (const auto& id : unique) hub_.flush(id);
}

int CoreService::retry_after_seconds_locked() const {
  double per_image = 0;
  int known = 0;
  for (const auto& worker : workers_) {
    const auto s = worker->stats();
    if (s.seconds_per_image > 0) {
      per_image += s.seconds_per_image;
      ++known;
    }
  }
  per_image = known ? per_image / known : 10.0;
  const double wait = per_image * static_cast<double>(dispatcher_.queued()) /
                      std::max(1, dispatcher_.healthy_count());
  return static_cast<int>(std::clamp(std::ceil(wait), 1.0, 3600.0));
}

}  // namespace diffusiond
