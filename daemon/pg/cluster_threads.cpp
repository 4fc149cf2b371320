// ClusterService's threads: the claimer (LISTEN + claim), the heartbeat (leases, expired leases,
// the fleet row, retention), the writer (results, in order, retried while the database is
// away) and the event poller. See cluster_service.h for the rules.
#include <poll.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "daemon/api/batch_key.h"
#include "daemon/pg/cluster_service.h"
#include "daemon/sd_notify.h"

namespace diffusiond {

namespace {
using Clock = std::chrono::steady_clock;
constexpr auto kRetry = std::chrono::seconds(1);
constexpr auto kProgressEvery = std::chrono::milliseconds(500);

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}
// The PNG files image_path() copied out of the database: removed an hour after they were made
// (a later request copies them again; a job deleted by retention leaves nothing behind).
void sweep_image_cache(const std::filesystem::path& dir, std::chrono::hours max_age) {
  std::error_code ec;
  const auto cutoff = std::filesystem::file_time_type::clock::now() - max_age;
  for (auto it = std::filesystem::directory_iterator(dir, ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    std::error_code e;
    bool fresh = false;
    for (const auto& file : std::filesystem::directory_iterator(it->path(), e))
      if (std::filesystem::last_write_time(file.path(), e) >= cutoff) fresh = true;
    if (!fresh) std::filesystem::remove_all(it->path(), e);
  }
}
}  // namespace

void ClusterService::wake_claimer() {
  if (wake_fd_ < 0) return;
  const std::uint64_t one = 1;
  [[maybe_unused]] auto n = ::write(wake_fd_, &one, sizeof one);
}

void ClusterService::queue_write(Write write) {
  {
    std::lock_guard lock(write_mu_);
    writes_.push_back(std::move(write));
  }
  write_cv_.notify_one();
}

// ---- claimer ---------------------------------------------------------------------------------

void ClusterService::claim_loop() {
  std::unique_ptr<PgConnection> db;
  const auto models = served_model_names();
  while (!draining_) {
    bool more = false;
    try {
      if (!db || !db->ok()) {
        db = std::make_unique<PgConnection>(cluster_.url);
        pg::use_fast_commits(*db);
        db->keep_session(std::string("LISTEN ") + pg::kQueueChannel);
      }
      db->notifications();  // a wake-up is a hint: what is queued is read below
      int n = 0;
      {
        std::lock_guard lock(mu_);
        n = dispatcher_.paused() ? 0 : free_slots_locked();
      }
      if (n > 0) {
        const auto begin = Clock::now();
        auto claimed = pg::claim(*db, daemon_id_, models, n, cluster_.lease.count());
        claim_seconds_.observe(seconds_since(begin));
        note_db(nullptr);
        std::lock_guard lock(mu_);
        for (auto& c : claimed) {
          const auto model = find_model(models_, c.model);
          queue_wait_.observe(static_cast<double>(c.waited_ms) / 1000.0);
          ++claims_;
          LocalTask t;
          t.model = model ? static_cast<int>(*model) : default_model_;
          TaskRef ref{c.job_id, c.image, c.priority, c.seq, -1};
          ref.model = t.model;
          ImageSpec spec = image_spec(c.request, c.image);
          spec.model = models_[static_cast<std::size_t>(t.model)].name;
          ref.batch_key = batch_key(spec);
          t.claimed = std::move(c);
          local_[{ref.job_id, ref.image}] = std::move(t);
          if (!dispatcher_.enqueue(ref))
            end_locked({ref.job_id, ref.image}, pg::ImageOutcome::give_back, "");
        }
        more = static_cast<int>(claimed.size()) == n;  // there may be more for other devices
      }
    } catch (const PgError& e) {
      note_db(&e);
      if (!e.connection_lost()) spdlog::error("claim: {}", e.what());
      db.reset();
      std::unique_lock lock(stop_mu_);
      stop_cv_.wait_for(lock, kRetry, [&] { return draining_.load(); });
      continue;
    } catch (const std::exception& e) {
      spdlog::error("claim: {}", e.what());
    }
    if (more) continue;
    // Wait for a NOTIFY, a freed device, a drain, or the polling period.
    pollfd fds[2] = {{db ? db->socket() : -1, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    ::poll(fds, 2, static_cast<int>(cluster_.poll.count()));
    if (fds[1].revents & POLLIN) {
      std::uint64_t value = 0;
      [[maybe_unused]] auto n = ::read(wake_fd_, &value, sizeof value);
    }
  }
}

// ---- heartbeat -------------------------------------------------------------------------------

void ClusterService::heartbeat_once(PgConnection& db) {
  // 1. Our leases: renew those we hold; a task missing from the answer was taken over.
  std::vector<std::string> ids;
  std::vector<int> images;
  {
    std::lock_guard lock(mu_);
    for (const auto& [key, t] : local_) {
      ids.push_back(key.first);
      images.push_back(key.second);
    }
  }
  const auto held = pg::renew(db, daemon_id_, cluster_.lease.count(), ids, images);
  {
    std::lock_guard lock(mu_);
    std::set<Key> kept;
    for (const auto& h : held) {
      kept.insert({h.job_id, h.image});
      auto it = local_.find({h.job_id, h.image});
      if (it != local_.end() && h.cancel_requested && !it->second.cancel) {
        it->second.cancel = true;  // stops at its next step
        for (const auto& t : dispatcher_.cancel_job(h.job_id))
          end_locked({t.job_id, t.image}, pg::ImageOutcome::cancelled, "");
      }
    }
    for (std::size_t i = 0; i < ids.size(); ++i) {
      auto it = local_.find({ids[i], images[i]});
      // An image past its device (its PNG being written) may be done already: its fenced write
      // decides, not this renewal.
      if (it == local_.end() || kept.count(it->first) || it->second.lost || !it->second.on_device)
        continue;
      spdlog::warn(
          "job {} image {}: this daemon lost its lease (another daemon took it over); "
          "stopping it, its result is not written",
          ids[i], images[i]);
      it->second.lost = true;
      ++images_lost_;
      if (!it->second.started) {  // not on a device yet
        dispatcher_.cancel_job(ids[i]);
        local_.erase(it);
      }
    }
  }
  // 2. Anyone's expired leases.
  pg::requeue_expired(db, options_.max_attempts);
  // 3. This daemon's row, and the fleet's queue.
  pg::DaemonRow self;
  self.id = daemon_id_;
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  self.host = host;
  self.started_ms = started_ms_;
  nlohmann::json devices = nlohmann::json::array();
  for (const auto& d : this->devices())
    devices.push_back({{"name", d.name},
                       {"health", to_string(d.health)},
                       {"busy", d.busy},
                       {"loaded", d.loaded},
                       {"images_done", d.images_done}});
  self.devices_json = devices.dump();
  {
    std::lock_guard lock(mu_);
    self.url = public_url_;
    self.running = static_cast<int>(local_.size());
  }
  pg::heartbeat(db, self);
  const auto counts = pg::queue_counts(db);
  const auto fleet = pg::daemons(db);
  std::lock_guard lock(mu_);
  fleet_ = counts;
  fleet_daemons_ = 0;
  for (const auto& d : fleet)
    fleet_daemons_ += d.heartbeat_age_ms < 3 * cluster_.lease.count() ? 1 : 0;
}

void ClusterService::heartbeat_loop() {
  std::unique_ptr<PgConnection> db;
  const auto every = std::max(std::chrono::milliseconds(100), cluster_.lease / 3);
  auto last_prune = Clock::now() - std::chrono::hours(1);
  auto last_status = Clock::now() - std::chrono::hours(1);
  auto last_cache_sweep = Clock::now();
  const auto watchdog = systemd_watchdog_interval();
  while (!stop_threads_) {
    try {
      if (!db || !db->ok()) {
        db = std::make_unique<PgConnection>(cluster_.url);
        pg::use_fast_commits(*db);
      }
      heartbeat_once(*db);
      note_db(nullptr);
      if (cluster_.retention.any() && Clock::now() - last_prune > std::chrono::minutes(10)) {
        last_prune = Clock::now();
        const int pruned =
            pg::prune(*db, cluster_.retention.keep_days, cluster_.retention.max_images,
                      cluster_.retention.max_bytes, unix_ms_now());
        if (pruned > 0) spdlog::info("retention: deleted {} finished job(s)", pruned);
      }
    } catch (const PgError& e) {
      note_db(&e);
      if (!e.connection_lost()) spdlog::error("heartbeat: {}", e.what());
      db.reset();
    } catch (const std::exception& e) {
      spdlog::error("heartbeat: {}", e.what());
    }
    if (Clock::now() - last_cache_sweep > std::chrono::minutes(10)) {
      last_cache_sweep = Clock::now();
      sweep_image_cache(cluster_.cache_dir, std::chrono::hours(1));
    }
    if (Clock::now() - last_status > std::chrono::seconds(5)) {
      last_status = Clock::now();
      std::string state = "STATUS=" + status_line();
      if (watchdog && workers_alive()) state += "\nWATCHDOG=1";
      notify_systemd(state);
    }
    std::unique_lock lock(stop_mu_);
    stop_cv_.wait_for(lock, every, [&] { return stop_threads_.load(); });
  }
}

// ---- writer ----------------------------------------------------------------------------------

void ClusterService::write_loop() {
  std::unique_ptr<PgConnection> db;
  auto last_progress = Clock::now();
  for (;;) {
    std::optional<Write> next;
    {
      std::unique_lock lock(write_mu_);
      write_cv_.wait_for(lock, kProgressEvery, [&] { return !writes_.empty() || writer_stop_; });
      if (writes_.empty() && writer_stop_) return;
      if (!writes_.empty()) next = writes_.front();
    }
    try {
      if (!db || !db->ok()) {
        db = std::make_unique<PgConnection>(cluster_.url);
        pg::use_fast_commits(*db);
      }
      if (next) {
        const auto begin = Clock::now();
        bool held = true;
        switch (next->kind) {
          case Write::Kind::start:
            held = pg::start_image(*db, daemon_id_, next->job_id, next->image, next->attempt,
                                   next->device, next->at_ms);
            break;
          case Write::Kind::finish:
            held = pg::finish_image(*db, daemon_id_, next->job_id, next->image, next->attempt,
                                    next->png, next->at_ms, next->batch_size);
            break;
          case Write::Kind::end:
            held = pg::end_image(*db, daemon_id_, next->job_id, next->image, next->attempt,
                                 next->outcome, next->error);
            break;
        }
        write_seconds_.observe(seconds_since(begin));
        note_db(nullptr);
        if (next->kind == Write::Kind::finish) {
          std::lock_guard lock(mu_);
          local_.erase({next->job_id, next->image});
          if (held) {
            ++images_done_;
            spdlog::info("job {} image {} done on {}", next->job_id, next->image, daemon_id_);
          } else {
            ++images_lost_;
          }
        }
        if (!held)
          spdlog::warn(
              "job {} image {}: this daemon no longer holds it (its lease went to "
              "another daemon, or the job ended); result dropped",
              next->job_id, next->image);
        std::lock_guard lock(write_mu_);
        writes_.pop_front();
      }
      if (Clock::now() - last_progress >= kProgressEvery) {  // bounded-rate progress
        last_progress = Clock::now();
        std::vector<std::tuple<std::string, int, int, int, int, int>> dirty;
        {
          std::lock_guard lock(mu_);
          for (auto& [key, t] : local_)
            if (t.progress_dirty && !t.lost) {
              t.progress_dirty = false;
              dirty.emplace_back(key.first, key.second, t.claimed.attempt, t.step, t.steps,
                                 t.batch_size);
            }
        }
        for (const auto& [id, k, attempt, step, steps, batch] : dirty)
          pg::progress_image(*db, daemon_id_, id, k, attempt, step, steps, batch);
      }
    } catch (const PgError& e) {
      note_db(&e);
      db.reset();
      if (!e.connection_lost()) {
        // A statement the server refused (a deadlock, a bug): retried a few times, then dropped
        // (its lease expires and another daemon runs the image again).
        spdlog::error("store write: {}", e.what());
        static thread_local int refused = 0;
        if (++refused >= 3) {
          refused = 0;
          std::lock_guard lock(write_mu_);
          if (!writes_.empty()) writes_.pop_front();
        }
      }
      bool stopping = false;
      {
        std::lock_guard lock(write_mu_);
        stopping = writer_stop_;
      }
      if (stopping && e.connection_lost()) {
        spdlog::warn(
            "stopping with {} result(s) unwritten: the database is unreachable; their "
            "leases expire and another daemon runs them again",
            writes_.size());
        return;
      }
      std::this_thread::sleep_for(kRetry);
    } catch (const std::exception& e) {
      spdlog::error("store write: {}", e.what());
      std::lock_guard lock(write_mu_);
      if (!writes_.empty()) writes_.pop_front();
    }
  }
}

// ---- events ----------------------------------------------------------------------------------

void ClusterService::events_loop() {
  // Polls every events_poll; a NOTIFY on the events channel (an image ended somewhere in the
  // fleet) is a hint to poll now, at most every kEventsHintGap.
  constexpr auto kEventsHintGap = std::chrono::milliseconds(50);
  std::unique_ptr<PgConnection> db;
  while (!stop_threads_) {
    try {
      bool any = false;
      {
        std::lock_guard lock(watch_mu_);
        any = !watched_.empty();
      }
      if (!db || !db->ok()) {
        db = std::make_unique<PgConnection>(cluster_.url);
        db->keep_session(std::string("LISTEN ") + pg::kEventsChannel);
      }
      db->notifications();
      if (any) poll_events(*db);
    } catch (const PgError& e) {
      note_db(&e);
      db.reset();
    } catch (const std::exception& e) {
      spdlog::error("events: {}", e.what());
    }
    {
      std::unique_lock lock(stop_mu_);
      if (stop_cv_.wait_for(lock, kEventsHintGap, [&] { return stop_threads_.load(); })) break;
    }
    pollfd fd{db ? db->socket() : -1, POLLIN, 0};
    ::poll(&fd, 1, static_cast<int>((cluster_.events_poll - kEventsHintGap).count()));
  }
}

namespace {
JobEvent event_of(JobEvent::Kind kind, const std::string& id, int image = -1) {
  JobEvent e;
  e.kind = kind;
  e.job_id = id;
  e.image = image;
  return e;
}

// The events that lead from `before` (nullopt: nothing seen) to `now`.
std::vector<JobEvent> diff(const std::optional<JobView>& before, const JobView& now) {
  std::vector<JobEvent> out;
  if (!before) {  // nothing seen: only an end matters (a waiter must hear it)
    if (!is_terminal(now.status)) return out;
  }
  for (const auto& image : now.images) {
    const ImageView* old = nullptr;
    if (before && static_cast<std::size_t>(image.index) < before->images.size())
      old = &before->images[static_cast<std::size_t>(image.index)];
    if (!before) break;
    const bool restarted = old && image.started_ms != 0 && image.started_ms != old->started_ms;
    if (image.status == ImageStatus::running || (restarted && image.started_ms != 0)) {
      if (!old || old->status == ImageStatus::queued || restarted) {
        auto e = event_of(JobEvent::Kind::started, now.id, image.index);
        e.device = image.device;
        e.steps = image.steps;
        out.push_back(e);
      }
      if (image.status == ImageStatus::running && image.step > 0 &&
          (!old || restarted || image.step != old->step)) {
        auto e = event_of(JobEvent::Kind::progress, now.id, image.index);
        e.step = image.step;
        e.steps = image.steps;
        out.push_back(e);
      }
    }
    if (image.status == ImageStatus::done && (!old || old->status != ImageStatus::done))
      out.push_back(event_of(JobEvent::Kind::image, now.id, image.index));
    if (image.status == ImageStatus::failed && (!old || old->status != ImageStatus::failed)) {
      auto e = event_of(JobEvent::Kind::failed, now.id, image.index);
      e.error = image.error;
      out.push_back(e);
    }
  }
  if (is_terminal(now.status) && (!before || !is_terminal(before->status))) {
    auto kind = now.status == JobStatus::done     ? JobEvent::Kind::done
                : now.status == JobStatus::failed ? JobEvent::Kind::failed
                                                  : JobEvent::Kind::cancelled;
    auto e = event_of(kind, now.id);
    e.error = now.error;
    out.push_back(e);
  }
  return out;
}
}  // namespace

void ClusterService::poll_events(PgConnection& db) {
  std::vector<std::string> ids;
  {
    std::lock_guard lock(watch_mu_);
    for (const auto& [id, w] : watched_) ids.push_back(id);
  }
  for (auto& record : pg::load_jobs(db, ids)) {  // one query for every watched job
    const std::string id = record.view.id;
    std::vector<JobEvent> events;
    {
      std::lock_guard lock(watch_mu_);
      auto it = watched_.find(id);
      if (it == watched_.end()) continue;
      events = diff(it->second.seen, record.view);
      it->second.seen = std::move(record.view);
    }
    for (const auto& e : events) hub_.enqueue(e);
    if (!events.empty()) hub_.flush(id);
  }
}

}  // namespace diffusiond
