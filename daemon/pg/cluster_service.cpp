// ClusterService's front-end side: submit, reads, cancel, images, subscriptions. See
// cluster_service.h for the rules.
#include "daemon/pg/cluster_service.h"

#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <random>

#include "daemon/atomic_file.h"
#include "daemon/core_shared.h"
#include "daemon/pg/pg_pool.h"
#include "daemon/submit_checks.h"
#include "pipeline/media/image_formats.h"

namespace diffusiond {

namespace {

std::uint64_t random_seed() {  // as CoreService: a random 32-bit seed
  thread_local std::mt19937 engine{std::random_device{}()};
  return static_cast<std::uint32_t>(engine());
}

std::string make_daemon_id() {
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  std::mt19937 engine{std::random_device{}()};
  char suffix[9];
  std::snprintf(suffix, sizeof suffix, "%08x", static_cast<unsigned>(engine()));
  return std::string(host) + "-" + std::to_string(::getpid()) + "-" + suffix;
}

}  // namespace

ClusterService::ClusterService(ModelBackend& backend, std::vector<DeviceSpec> devices,
                               CoreOptions core, ClusterOptions cluster, PngEncoder encoder)
    : backend_(backend),
      devices_(std::move(devices)),
      options_(std::move(core)),
      cluster_(std::move(cluster)),
      encoder_(std::move(encoder)),
      models_(backend.models()),
      default_model_(backend.default_model()),
      model_info_(models_.at(static_cast<std::size_t>(default_model_))),
      daemon_id_(cluster_.daemon_id.empty() ? make_daemon_id() : cluster_.daemon_id),
      started_ms_(unix_ms_now()),
      pool_(std::make_unique<Pool>(cluster_.url)),
      dispatcher_(static_cast<int>(devices_.size()), options_.dispatch,
                  DeviceHealthOptions{options_.unhealthy_after, options_.probe_interval}),
      png_pool_(std::make_unique<ThreadPool>(options_.png_threads, "png encoder")) {
  pool_->with([](PgConnection& db) { pg::open_schema(db); });
  wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  std::error_code ec;
  std::filesystem::remove_all(cluster_.cache_dir, ec);  // a cache: rebuilt on demand
  for (std::size_t i = 0; i < devices_.size(); ++i)
    workers_.push_back(std::make_unique<DeviceWorker>(
        static_cast<int>(i), devices_[i], backend_, dispatcher_, static_cast<TaskHost&>(*this),
        loaded_models_limit(options_.max_loaded_models, devices_[i]),
        WorkerBatching{max_batch(i), options_.batch_wait}));
}

ClusterService::~ClusterService() {
  drain(std::chrono::milliseconds(0));
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

void ClusterService::start() {
  if (started_.exchange(true)) return;
  for (auto& worker : workers_) worker->start();
  writer_ = std::thread([this] { write_loop(); });
  heartbeat_ = std::thread([this] { heartbeat_loop(); });
  claimer_ = std::thread([this] { claim_loop(); });
  events_ = std::thread([this] { events_loop(); });
  spdlog::info("fleet member {}: claiming from the PostgreSQL queue (lease {} ms)", daemon_id_,
               cluster_.lease.count());
}

bool ClusterService::wait_loaded(std::chrono::milliseconds timeout) {
  std::unique_lock lock(load_mu_);
  load_cv_.wait_for(lock, timeout,
                    [&] { return loads_finished_ == static_cast<int>(workers_.size()); });
  return loads_finished_ == static_cast<int>(workers_.size()) && loads_ok_ > 0;
}

bool ClusterService::loading_finished() const {
  std::lock_guard lock(load_mu_);
  return loads_finished_ == static_cast<int>(workers_.size());
}

void ClusterService::set_public_url(const std::string& url) {
  std::lock_guard lock(mu_);
  public_url_ = url;
}

void ClusterService::drain(std::chrono::milliseconds grace) {
  if (drained_.exchange(true)) return;
  draining_ = true;
  wake_claimer();
  if (claimer_.joinable()) claimer_.join();  // claims nothing more
  dispatcher_.stop();
  {
    std::lock_guard lock(mu_);  // images handed to the dispatcher but not started: back
    std::set<std::string> jobs;
    for (const auto& [key, task] : local_)
      if (!task.started) jobs.insert(key.first);
    for (const auto& id : jobs)
      for (const auto& t : dispatcher_.cancel_job(id))
        end_locked({t.job_id, t.image}, pg::ImageOutcome::give_back, "");
  }
  const auto deadline = std::chrono::steady_clock::now() + grace;
  auto any_busy = [&] {
    return std::any_of(workers_.begin(), workers_.end(),
                       [](const auto& w) { return w->stats().busy; });
  };
  while (any_busy() && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  stop_now_ = true;
  for (auto& worker : workers_) worker->join();
  png_pool_->shutdown();
  {
    std::lock_guard lock(mu_);
    std::vector<Key> left;
    for (const auto& [key, task] : local_)
      if (task.on_device) left.push_back(key);
    for (const auto& key : left) end_locked(key, pg::ImageOutcome::give_back, "");
  }
  {
    std::lock_guard lock(write_mu_);
    writer_stop_ = true;
  }
  write_cv_.notify_all();
  if (writer_.joinable()) writer_.join();
  stop_threads_ = true;
  stop_cv_.notify_all();
  if (heartbeat_.joinable()) heartbeat_.join();
  if (events_.joinable()) events_.join();
  try {
    pool_->with([this](PgConnection& db) { pg::remove_daemon(db, daemon_id_); });
  } catch (const std::exception& e) {
    spdlog::warn("cannot remove this daemon from the fleet table: {}", e.what());
  }
}

// ---- ImageService ----------------------------------------------------------------------------

ModelInfo ClusterService::model_info() const {
  return models().at(static_cast<std::size_t>(default_model_));
}

std::vector<ModelInfo> ClusterService::models() const {
  return models_view(models_, workers_, dispatcher_, options_.hasher.get());
}

std::optional<std::string> ClusterService::canonical_scheduler(const std::string& name) const {
  return backend_.canonical_scheduler(name);
}

std::vector<LoraView> ClusterService::loras() const {
  return options_.loras ? options_.loras->list() : std::vector<LoraView>{};
}

void ClusterService::note_db(const PgError* error) const {
  std::lock_guard lock(db_mu_);
  if (!error) {
    if (!db_error_.empty()) spdlog::info("PostgreSQL is reachable again");
    db_error_.clear();
  } else if (error->connection_lost()) {
    if (db_error_.empty()) spdlog::error("{}; retrying every second", error->what());
    db_error_ = error->what();
  }
}

ServiceError ClusterService::unreachable(const std::exception& e) const {
  if (const auto* pg = dynamic_cast<const PgError*>(&e)) {
    note_db(pg);
    if (pg->connection_lost())
      return ServiceError(ErrorCode::unavailable, std::string("the job store: ") + e.what(),
                          "store_unreachable", {}, 5);
  }
  return ServiceError(ErrorCode::internal, std::string("the job store: ") + e.what(),
                      "store_error");
}

Submission ClusterService::submit(const GenerateRequest& asked, const SubmitContext& context) {
  auto normalise_for = [&](const ModelInfo& model) {
    return normalise(
        asked, request_defaults(model),
        [this](const std::string& name) { return backend_.canonical_scheduler(name); },
        options_.limits, random_seed(), scheduler_names(model));
  };
  int model_id = 0;
  try {
    model_id = resolve_model(models_, asked);
  } catch (const ServiceError&) {
    normalise_for(model_info_);  // a malformed `model` is reported as such first
    throw;
  }
  const ModelInfo& model = models_[static_cast<std::size_t>(model_id)];
  const JobRequest request = normalise_for(model);  // defaults from the model asked for
  if (options_.hasher) options_.hasher->hash_in_background({model.hash_file});
  check_loras(options_.loras.get(), request.loras);
  check_priority(request, context);
  if (draining_)
    throw ServiceError(ErrorCode::unavailable, "the daemon is shutting down", "draining", {}, 5);
  if (!dispatcher_.any_enabled())
    throw ServiceError(ErrorCode::unavailable, "no device can run images", "no_device");
  const int count = image_count(request);
  {
    std::lock_guard lock(mu_);
    const auto depth = static_cast<std::size_t>(fleet_.queued);
    if (depth > 0 &&
        depth + static_cast<std::size_t>(count) > static_cast<std::size_t>(options_.max_queue))
      throw ServiceError(ErrorCode::queue_full,
                         "the fleet's queue holds " + std::to_string(depth) + " images (max " +
                             std::to_string(options_.max_queue) + "); retry later",
                         "queue_full", {}, 10);
  }
  auto replay = [&](const JobRecord& earlier) {
    if (earlier.fingerprint != context.fingerprint)
      throw ServiceError(ErrorCode::conflict,
                         "this Idempotency-Key was used for a different request (job " +
                             earlier.view.id + "); use a new key for a new request",
                         "idempotency_key_reused", "Idempotency-Key");
    return Submission{earlier.view, true};
  };
  JobRecord record = make_job(request, make_job_id(), unix_ms_now(), model.name);
  record.client = context.client;
  record.idempotency_key = context.idempotency_key;
  record.fingerprint = context.fingerprint;
  try {
    auto result = pool_->with([&](PgConnection& db) -> std::optional<Submission> {
      if (!context.idempotency_key.empty())
        if (auto earlier = pg::find_by_idempotency_key(db, context.client, context.idempotency_key))
          return replay(*earlier);
      try {
        pg::insert_job(db, record, daemon_id_);
      } catch (const PgError& e) {
        if (e.sqlstate() != "23505" || context.idempotency_key.empty()) throw;
        if (auto earlier = pg::find_by_idempotency_key(db, context.client, context.idempotency_key))
          return replay(*earlier);  // a concurrent submit with the same key won
        throw;
      }
      return std::nullopt;
    });
    note_db(nullptr);
    if (result) return *result;
  } catch (const ServiceError&) {
    throw;
  } catch (const std::exception& e) {
    throw unreachable(e);
  }
  spdlog::info("job {} queued in the fleet: {} image(s) of {}, {} steps, {}x{}, priority {}",
               record.view.id, count, model.name, request.steps, request.width, request.height,
               request.priority);
  return {record.view, false};
}

std::optional<JobView> ClusterService::job(const std::string& id) const {
  try {
    auto record = pool_->with([&](PgConnection& db) { return pg::load_job(db, id); });
    if (!record) return std::nullopt;
    return std::move(record->view);
  } catch (const std::exception& e) {
    throw unreachable(e);
  }
}

std::vector<JobView> ClusterService::jobs(std::optional<JobStatus> status, int limit,
                                          const std::string& before_id) const {
  limit = std::max(1, limit);
  try {
    auto records = pool_->with([&](PgConnection& db) {
      std::int64_t before = 0;
      if (!before_id.empty()) {
        std::optional<JobRecord> cursor;
        if (is_valid_job_id(before_id)) cursor = pg::load_job(db, before_id);
        if (!cursor)
          throw ServiceError(ErrorCode::invalid_request,
                             "query parameter 'before' names no job: give the 'next' of a listing",
                             "invalid_field", "before");
        before = cursor->seq;
      }
      return pg::list_jobs(db, status, limit, before);
    });
    std::vector<JobView> views;
    for (auto& r : records) views.push_back(std::move(r.view));
    return views;
  } catch (const ServiceError&) {
    throw;
  } catch (const std::exception& e) {
    throw unreachable(e);
  }
}

CancelResult ClusterService::cancel(const std::string& id) {
  std::optional<bool> result;
  try {
    result = pool_->with([&](PgConnection& db) { return pg::cancel_job(db, id); });
  } catch (const std::exception& e) {
    throw unreachable(e);
  }
  if (!result) return CancelResult::not_found;
  if (!*result) return CancelResult::already_finished;
  {
    std::lock_guard lock(mu_);  // our own running images stop now; others' at their heartbeat
    for (auto& [key, task] : local_)
      if (key.first == id) task.cancel = true;
    for (const auto& t : dispatcher_.cancel_job(id))
      end_locked({t.job_id, t.image}, pg::ImageOutcome::cancelled, "");
  }
  spdlog::info("job {} cancelled", id);
  return CancelResult::cancelled;
}

std::optional<std::string> ClusterService::image_path(const std::string& id, int k) const {
  if (!is_valid_job_id(id) || k < 0) return std::nullopt;
  const auto path = cluster_.cache_dir / id / (std::to_string(k) + ".png");
  std::error_code ec;
  if (std::filesystem::is_regular_file(path, ec)) return path.string();
  std::optional<std::string> png;
  try {
    png = pool_->with([&](PgConnection& db) { return pg::image_png(db, id, k); });
  } catch (const std::exception& e) {
    throw unreachable(e);
  }
  if (!png) return std::nullopt;
  try {  // a local copy the HTTP layer serves as a file (PNGs never change)
    std::filesystem::create_directories(path.parent_path());
    write_file_atomically(path, *png);
  } catch (const std::exception& e) {
    throw ServiceError(ErrorCode::internal, "cannot cache image " + std::to_string(k) +
                                                " of job '" + id + "': " + e.what());
  }
  return path.string();
}

std::optional<EncodedImage> ClusterService::encoded_image(const std::string& id, int k,
                                                          ImageFormat format, int quality) const {
  std::optional<std::string> png;
  try {
    png = pool_->with([&](PgConnection& db) { return pg::image_png(db, id, k); });
  } catch (const std::exception& e) {
    throw unreachable(e);
  }
  if (!png || png->empty()) return std::nullopt;
  return encode_stored_png(*png, id, k, format, quality);
}

std::vector<std::pair<std::string, std::string>> ClusterService::image_text(
    std::string_view image_bytes) const {
  return uploaded_image_text(image_bytes);
}

std::vector<JobView> ClusterService::client_jobs(const std::string& client) const {
  try {
    auto records = pool_->with([&](PgConnection& db) { return pg::client_jobs(db, client); });
    std::vector<JobView> views;
    for (auto& r : records) views.push_back(std::move(r.view));
    return views;
  } catch (const std::exception& e) {
    throw unreachable(e);
  }
}

namespace {
class WatchHandle final : public Subscription {
 public:
  WatchHandle(std::unique_ptr<Subscription> inner, std::function<void()> on_end)
      : inner_(std::move(inner)), on_end_(std::move(on_end)) {}
  ~WatchHandle() override {
    inner_.reset();
    on_end_();
  }

 private:
  std::unique_ptr<Subscription> inner_;
  std::function<void()> on_end_;
};
}  // namespace

std::unique_ptr<Subscription> ClusterService::subscribe(
    const std::string& job_id, std::function<void(const JobEvent&)> on_event) {
  auto inner = hub_.subscribe(job_id, std::move(on_event));
  bool first = false;
  {
    std::lock_guard lock(watch_mu_);
    first = watched_[job_id].subscribers++ == 0;
  }
  if (first) {  // the state later events are told from (the caller reads job() after this)
    try {
      auto record = pool_->with([&](PgConnection& db) { return pg::load_job(db, job_id); });
      std::lock_guard lock(watch_mu_);
      auto& w = watched_[job_id];
      if (record && !w.seen) w.seen = record->view;
    } catch (const std::exception& e) {
      spdlog::debug("subscribe {}: {}", job_id, e.what());  // the poller sets it later
    }
  }
  return std::make_unique<WatchHandle>(std::move(inner), [this, job_id] {
    std::lock_guard lock(watch_mu_);
    auto it = watched_.find(job_id);
    if (it != watched_.end() && --it->second.subscribers <= 0) watched_.erase(it);
  });
}

}  // namespace diffusiond
