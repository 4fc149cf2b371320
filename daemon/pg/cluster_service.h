// ClusterService: the core of a daemon in a fleet (`--store postgresql://...`): implements
// ImageService over the shared PostgreSQL queue (daemon/pg/pg_store.h) instead of memory. The
// database is the truth for every job: submit() inserts (committed before the 202), job(),
// jobs(), images and cancel read and write it, so every daemon answers for every job.
//
// Work: the claimer thread claims queued images for this daemon's idle devices (as many as
// healthy devices are free, in priority and submission order, FOR UPDATE SKIP LOCKED) and hands
// them to the local Dispatcher (its policy means what it means on one daemon) and the
// DeviceWorkers. It wakes on a NOTIFY on the queue channel (a hint: submit and every re-queue
// send one) or after `poll` (the fallback: nothing depends on a notification arriving).
// Leases: the heartbeat thread renews the lease of every image this daemon runs every lease/3,
// puts images whose lease expired (any daemon's) back in the queue, refreshes this daemon's row
// in the daemons table (`diffusiond status`) and reads cancel requests. An image whose lease
// this daemon lost (another daemon took it over) stops at its next step; its result would be
// refused anyway (writes are fenced by owner and attempt).
// Writes of results (start, progress at most every 500 ms, PNG, failure) go through the writer
// thread, in order, retried while the database is unreachable: device threads never wait on the
// network, and no lock they share is held across a statement.
// Events: the event thread polls the jobs that have subscribers every `events_poll` (one query
// for all of them) and turns what changed into events (started, progress, image, failed, the
// terminal one) — the same from every daemon, whichever ran the images.
// Unreachable database: not_ready() says so (reason store_unreachable), submit() answers
// unavailable, each thread reconnects on its next round; images keep running and their results
// are written once it is back (if their lease was not taken over meanwhile).
// Lifecycle (control thread): construct -> start() -> wait_loaded() -> ... -> drain() -> destroy.
// Thread-safety: every ImageService method from any thread. Lock order: mu_ -> (dispatcher,
// event hub); no statement under mu_.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "daemon/core_service.h"
#include "daemon/pg/pg_store.h"

namespace diffusiond {

struct ClusterOptions {
  std::string url;                         // the libpq connection string
  std::string daemon_id;                   // "" = host-pid-random
  std::filesystem::path cache_dir;         // PNG files served by image_path (a cache)
  std::chrono::milliseconds lease{30000};  // --lease-seconds
  std::chrono::milliseconds poll{1000};    // claim polling fallback
  std::chrono::milliseconds events_poll{250};
  RetentionPolicy retention;
};

class ClusterService final : public ImageService, private TaskHost {
 public:
  // Connects and creates or migrates the schema. Throws PgError when the database cannot be
  // reached or std::runtime_error for a newer schema.
  ClusterService(ModelBackend& backend, std::vector<DeviceSpec> devices, CoreOptions core,
                 ClusterOptions cluster, PngEncoder encoder);
  ~ClusterService() override;  // drain(0)

  void start();
  bool wait_loaded(std::chrono::milliseconds timeout);
  bool loading_finished() const;
  // Claims nothing more; gives back the images not started; running ones get `grace`, then stop
  // and are given back (queued again, the attempt not counted). Idempotent.
  void drain(std::chrono::milliseconds grace);
  void set_public_url(const std::string& url);  // shown by `diffusiond status`
  const std::string& daemon_id() const { return daemon_id_; }
  bool workers_alive() const;
  std::string status_line() const;

  // ImageService
  ModelInfo model_info() const override;
  std::vector<ModelInfo> models() const override;
  std::optional<std::string> canonical_scheduler(const std::string& name) const override;
  using ImageService::submit;
  Submission submit(const GenerateRequest& request, const SubmitContext& context) override;
  std::optional<JobView> job(const std::string& id) const override;
  std::vector<JobView> jobs(std::optional<JobStatus> status, int limit,
                            const std::string& before_id = {}) const override;
  CancelResult cancel(const std::string& id) override;
  std::optional<std::string> image_path(const std::string& id, int k) const override;
  std::optional<EncodedImage> encoded_image(const std::string& id, int k, ImageFormat format,
                                            int quality) const override;
  std::vector<std::pair<std::string, std::string>> image_text(
      std::string_view image_bytes) const override;
  std::vector<JobView> client_jobs(const std::string& client) const override;
  std::unique_ptr<Subscription> subscribe(const std::string& job_id,
                                          std::function<void(const JobEvent&)> on_event) override;
  std::vector<DeviceView> devices() const override;
  std::vector<LoraView> loras() const override;
  std::optional<ServiceError> not_ready() const override;
  std::string metrics_text() const override;  // cluster_metrics.cpp

 private:
  struct LocalTask {
    pg::ClaimedTask claimed;
    int model = 0;
    bool on_device = true;  // claimed and not yet ended by its worker
    bool started = false;
    bool lost = false;    // the lease went to another daemon: stop, write nothing
    bool cancel = false;  // the job was cancelled: stop
    int step = 0, steps = 0;
    int batch_size = 0;  // images that shared its UNet batch
    bool progress_dirty = false;
  };
  struct Write {
    enum class Kind { start, finish, end } kind = Kind::start;
    std::string job_id;
    int image = 0;
    int attempt = 0;
    std::string device;                                   // start
    std::string png;                                      // finish
    int batch_size = 0;                                   // finish
    pg::ImageOutcome outcome = pg::ImageOutcome::failed;  // end
    std::string error;                                    // end
    std::int64_t at_ms = 0;
  };
  class Pool;  // reader connections for the front ends' threads
  using Key = std::pair<std::string, int>;

  // TaskHost (worker threads)
  void replica_loaded(int worker, const std::string& error) override;
  std::optional<ImageSpec> begin_task(int worker, const TaskRef& task) override;
  bool task_progress(int worker, const TaskRef& task, int step, int steps, int batch_size) override;
  void task_succeeded(int worker, const TaskRef& task, RgbImage image) override;
  void task_stopped(int worker, const TaskRef& task) override;
  void task_failed(int worker, const TaskRef& task, const std::string& error) override;
  void task_model_failed(int worker, const TaskRef& task, const std::string& error) override;

  // Threads (cluster_threads.cpp).
  void claim_loop();
  void heartbeat_loop();
  void write_loop();
  void events_loop();
  void heartbeat_once(PgConnection& db);
  void poll_events(PgConnection& db);
  void wake_claimer();
  // Ends a task on this daemon: queues its write (unless lost) and frees its device slot.
  void end_locked(const Key& key, pg::ImageOutcome outcome, const std::string& error);
  void queue_write(Write write);             // needs mu_? no: takes write_mu_
  void note_db(const PgError* error) const;  // records reachability for not_ready()
  ServiceError unreachable(const std::exception& e) const;
  int free_slots_locked() const;  // images the usable devices can take now (batches included)
  int max_batch(std::size_t device) const;
  std::vector<std::string> served_model_names() const;

  ModelBackend& backend_;
  const std::vector<DeviceSpec> devices_;
  const CoreOptions options_;
  const ClusterOptions cluster_;
  const PngEncoder encoder_;
  const std::vector<ModelInfo> models_;
  const int default_model_;
  const ModelInfo model_info_;
  const std::string daemon_id_;
  const std::int64_t started_ms_;

  std::unique_ptr<Pool> pool_;
  Dispatcher dispatcher_;
  EventHub hub_;
  std::vector<std::unique_ptr<DeviceWorker>> workers_;
  std::unique_ptr<ThreadPool> png_pool_;
  Histogram claim_seconds_{Histogram::step_seconds_buckets()};  // one claim statement
  Histogram queue_wait_{Histogram::wait_seconds_buckets()};     // queued -> claimed
  Histogram write_seconds_{Histogram::step_seconds_buckets()};  // one result write

  mutable std::mutex mu_;
  std::map<Key, LocalTask> local_;
  std::string public_url_;
  std::int64_t images_done_ = 0, images_failed_ = 0, images_lost_ = 0, claims_ = 0;
  pg::QueueCounts fleet_{};
  int fleet_daemons_ = 0;

  mutable std::mutex write_mu_;
  std::condition_variable write_cv_;
  std::deque<Write> writes_;
  bool writer_stop_ = false;
  bool writer_idle_ = true;

  mutable std::mutex db_mu_;  // reachability
  mutable std::string db_error_;

  mutable std::mutex watch_mu_;  // subscribed jobs and the state their events were made from
  struct Watched {
    int subscribers = 0;
    std::optional<JobView> seen;
  };
  mutable std::map<std::string, Watched> watched_;

  mutable std::mutex load_mu_;
  std::condition_variable load_cv_;
  int loads_finished_ = 0;
  int loads_ok_ = 0;

  std::mutex stop_mu_;
  std::condition_variable stop_cv_;
  int wake_fd_ = -1;  // eventfd: wakes the claimer (a device slot freed, drain)
  std::thread claimer_, heartbeat_, writer_, events_;
  std::atomic<bool> started_{false};
  std::atomic<bool> draining_{false};
  std::atomic<bool> stop_threads_{false};
  std::atomic<bool> stop_now_{false};
  std::atomic<bool> drained_{false};
};

}  // namespace diffusiond
