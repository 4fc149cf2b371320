// CoreService: the daemon core behind the front ends. Implements ImageService over the job
// store (durable state, written by one StoreWriter thread), the dispatcher (who runs what), one
// DeviceWorker per device (model replicas) and a CPU pool that encodes and writes PNGs.
// See job.h for the state machine, daemon/api/ for the vocabulary.
//
// Truth: every unfinished job lives in memory (active_) and is what job()/jobs() show; a change
// is decided under mu_ and its snapshot queued to the StoreWriter (no disk under mu_). A job
// leaves memory only once it is finished and its last write is committed, so a read that falls
// through to the store never sees an older state. submit() answers only after the job's insert
// is committed (a 202 means durable), waiting outside mu_. A write that fails is final: every
// unfinished job fails with the store's error, ready() turns false, submit() answers
// unavailable; reads keep working from memory and the store's read connection.
// A full disk is not final (StorageGuard): while it lasts submit() answers storage_full, the
// devices take no new images, an image whose PNG could not be written is queued again (the
// attempt does not count) and the store retries its writes; all of it resumes once space is
// freed.
//
// Events per job, in order: queued, started(k), progress(k)..., image(k) | failed(k), ..., then
// one of done | failed | cancelled; nothing after the terminal event.
//
// Lifecycle (control thread): construct -> start() (recovers unfinished jobs, starts workers,
// which load their replicas in parallel) -> wait_loaded() -> ... -> drain() -> destroy.
// Thread-safety: every ImageService method may be called from any thread at any time and never
// waits on a device or another request's disk write. Lock order: mu_ -> (dispatcher, store
// writer queue, event hub); callbacks run unlocked.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "daemon/api/service.h"
#include "daemon/device_worker.h"
#include "daemon/dispatcher.h"
#include "daemon/event_hub.h"
#include "daemon/image_generator.h"
#include "daemon/job.h"
#include "daemon/job_store.h"
#include "daemon/lora_catalog.h"
#include "daemon/metrics.h"
#include "daemon/model_hasher.h"
#include "daemon/png_info.h"
#include "daemon/storage_guard.h"
#include "daemon/store_writer.h"
#include "daemon/thread_pool.h"

namespace diffusiond {

// Encodes an image with its metadata chunks into PNG bytes (runs on the PNG pool); the real one
// is pipeline/media/png.h's encode_png_with_metadata.
using PngEncoder = std::function<std::string(const RgbImage&, const PngGenerationInfo&)>;

struct CoreOptions {
  DispatchPolicy dispatch = DispatchPolicy::round_robin;
  int max_queue = 256;      // queued images; beyond: queue_full (an idle queue always
                            // accepts one job, however large)
  int png_threads = 2;      // PNG encoder pool
  int max_attempts = 2;     // an image runs at most twice: one retry, on another device
  int unhealthy_after = 3;  // consecutive failures that mark a device unhealthy
  std::chrono::milliseconds probe_interval{std::chrono::seconds(60)};  // then it is probed
  std::chrono::seconds stall_limit{600};  // a busy worker without a step for this long is dead
  std::string dtype = "fp32";             // written into the PNG metadata
  std::uint64_t min_free_bytes = 100ull << 20;          // below: storage full (StorageGuard)
  std::chrono::milliseconds storage_check_every{1000};  // statvfs period; store write retries
  RequestLimits limits;                                 // every bound on a request (normalise())
  // Models held per device (ModelCache); 0 = auto: 1 on a CPU device (each CPU worker holds its
  // own replicas in host RAM, shared by every worker), 3 on a CUDA device (its memory bounds it
  // further: a load that runs out of memory evicts).
  int max_loaded_models = 0;
  std::shared_ptr<ModelHasher> hasher;  // model sha256s for PNGs and /models; null = none
  // The LoRA folder requests name LoRAs from (shared with the backend, which resolves the same
  // names on the device threads); null: no LoRA folder, every LoRA name is unknown.
  std::shared_ptr<const LoraCatalog> loras;
  int max_batch = 0;  // images per generation (--max-batch); 0: default_max_batch() per device
  std::chrono::milliseconds batch_wait{0};  // how long a batch waits for partners
};

// The models-per-device bound `max_loaded_models` (0 = auto) means for one device.
int loaded_models_limit(int max_loaded_models, const DeviceSpec& device);

class CoreService final : public ImageService, private TaskHost, private StoreWriter::Listener {
 public:
  CoreService(JobStore& store, ModelBackend& backend, std::vector<DeviceSpec> devices,
              CoreOptions options, PngEncoder encoder);
  ~CoreService() override;  // drain(0) if still running

  // Re-queues the store's unfinished jobs and starts the workers. Call once.
  void start();
  // Waits until every replica finished loading; true if at least one loaded.
  bool wait_loaded(std::chrono::milliseconds timeout);
  bool loading_finished() const;  // every replica loaded or failed to
  // Stops taking work: submit() throws unavailable; running images get `grace` to finish, then stop
  // at their next step and are persisted as queued (they run again after a restart). Joins the
  // workers and the PNG pool. Idempotent.
  void drain(std::chrono::milliseconds grace);

  // For the supervisor thread (sd_notify): healthy workers alive and not stalled.
  bool workers_alive() const;
  std::string status_line() const;  // "queue=3 running=2 devices=2/2 ..." (STATUS=)
  std::size_t queue_depth() const { return dispatcher_.queued(); }
  // Images of unfinished jobs waiting to run, including those re-queued by drain().
  std::size_t queued_images() const;
  // Blocks until every state change decided so far is committed to the store (or the store
  // failed): a sync point for tests and tools; the service itself never needs it.
  void wait_store_written() { writer_->flush(); }
  bool storage_full() const { return storage_->full(); }  // see StorageGuard
  // True once drain() interrupts running images (its grace is over).
  bool stopping_now() const { return stop_now_; }

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
  // core_images.cpp
  std::optional<EncodedImage> encoded_image(const std::string& id, int k, ImageFormat format,
                                            int quality) const override;
  std::vector<std::pair<std::string, std::string>> image_text(
      std::string_view image_bytes) const override;
  std::vector<JobView> client_jobs(const std::string& client) const override;
  std::optional<EncodedImage> preview(const std::string& id, int k) const override;
  std::unique_ptr<Subscription> subscribe(const std::string& job_id,
                                          std::function<void(const JobEvent&)> on_event) override;
  std::vector<DeviceView> devices() const override;
  std::vector<LoraView> loras() const override;
  std::optional<ServiceError> not_ready() const override;
  std::string metrics_text() const override;  // core_metrics.cpp

 private:
  struct ActiveJob {
    JobRecord record;
    std::vector<std::int64_t> queued_since_ms;  // per image, for the queue-wait histogram
    bool terminal_event_sent = false;
    StoreWriter::Ticket last_write = 0;  // the job's newest queued store write
    bool retiring = false;               // finished: leaves memory once last_write commits
    int model = 0;                       // model id (models_ index)
    std::map<int, RgbImage> previews;    // image -> its latest live preview (previews asked)
  };
  TaskRef task_ref(const ActiveJob& job, int k) const;
  // Image k of the job as its worker runs it: model name resolved, previews as asked.
  ImageSpec image_spec_of(const ActiveJob& job, int k) const;
  // The model id a request's `model` names. Throws invalid_request (unknown_model) listing a few.
  int resolve_model(const GenerateRequest& asked) const;

  // TaskHost (worker threads)
  void replica_loaded(int worker, const std::string& error) override;
  std::optional<ImageSpec> begin_task(int worker, const TaskRef& task) override;
  bool task_progress(int worker, const TaskRef& task, int step, int steps, int batch_size) override;
  void task_succeeded(int worker, const TaskRef& task, RgbImage image) override;
  void task_stopped(int worker, const TaskRef& task) override;
  void task_failed(int worker, const TaskRef& task, const std::string& error) override;
  void task_preview(int worker, const TaskRef& task, RgbImage preview) override;
  void task_model_failed(int worker, const TaskRef& task, const std::string& error) override;

  // StoreWriter::Listener (the store writer thread)
  void writes_committed(StoreWriter::Ticket last) override;
  void writes_failed(const std::vector<std::string>& job_ids, const std::string& error) override;
  void writes_stalled(const std::string& error) override;

  // Runs on the PNG pool.
  void write_png(const TaskRef& task, const std::string& device, const RgbImage& image,
                 const PngGenerationInfo& info);
  // storage_full: the PNG could not be written for lack of space; the image is queued again.
  void image_written(const TaskRef& task, const std::string& error, bool storage_full,
                     std::int64_t file_bytes);

  // The dispatcher's task for image k (its batch key from daemon/api/batch_key.h).
  // Helpers; *_locked need mu_. They queue events and note the job ids to flush after unlock.
  // Throws ServiceError unknown_lora (field "loras") for the first name not in the folder.
  void check_loras(const std::vector<LoraRef>& loras) const;
  ActiveJob* find_locked(const std::string& id);
  void emit_locked(ActiveJob& job, JobEvent event, std::vector<std::string>& flush);
  // After a change: stamps job times and error, queues the write of the job row and the listed
  // images, emits the terminal event once, and retires the job once every image is terminal.
  void commit_locked(ActiveJob& job, const std::vector<int>& images,
                     std::vector<std::string>& flush);
  void fail_image_locked(ActiveJob& job, int k, const std::string& error,
                         std::vector<std::string>& flush);
  // Tasks no device can ever take (every one disabled) stay queued in the store (they run after
  // a restart).
  void strand_orphans(const std::vector<TaskRef>& orphans);
  void flush(const std::vector<std::string>& job_ids);
  // The store failed: every image of the job that has not ended fails with `error`.
  void fail_for_store_locked(ActiveJob& job, const std::string& error,
                             std::vector<std::string>& flush);
  // A queued image that must not run fails (queued -> running -> failed); not dispatched.
  void fail_unstarted_locked(ActiveJob& job, int k, const std::string& error,
                             std::vector<std::string>& flush);
  int retry_after_seconds_locked() const;
  // The earlier job of an idempotency key (memory first, else `stored`), or nullopt when the
  // key is new. Throws conflict: in flight, or used with another fingerprint. Needs mu_.
  std::optional<Submission> replay_locked(const SubmitContext& context,
                                          const std::optional<JobRecord>& stored);
  // Why submit() refuses now (draining, store failed, storage full, no device); needs mu_.
  std::optional<ServiceError> refusal_locked() const;
  static ServiceError store_failure(const std::exception& e);  // a store read that failed

  JobStore& store_;
  ModelBackend& backend_;
  const std::vector<DeviceSpec> devices_;
  const CoreOptions options_;
  const PngEncoder encoder_;
  const std::vector<ModelInfo> models_;  // by id (ModelBackend::models())
  const int default_model_;
  const ModelInfo model_info_;  // the default one

  Dispatcher dispatcher_;
  std::unique_ptr<StoreWriter> writer_;    // made in the constructor, stopped by drain()
  std::unique_ptr<StorageGuard> storage_;  // started by start(), stopped by drain()
  EventHub hub_;
  Histogram queue_wait_{Histogram::wait_seconds_buckets()};
  std::vector<std::unique_ptr<DeviceWorker>> workers_;
  std::unique_ptr<ThreadPool> png_pool_;

  mutable std::mutex mu_;
  std::unordered_map<std::string, ActiveJob> active_;
  // (client, idempotency key) -> job id, for jobs in active_ and submits waiting for their insert.
  std::map<std::pair<std::string, std::string>, std::string> idempotency_;
  std::int64_t next_seq_ = 1;  // submission order of the next job
  int pending_images_ = 0;     // images of submits waiting for their insert to commit
  std::string store_error_;    // set once a store write failed
  std::int64_t images_written_ = 0;
  std::int64_t images_failed_ = 0;

  mutable std::mutex load_mu_;
  std::condition_variable load_cv_;
  int loads_finished_ = 0;
  int loads_ok_ = 0;

  std::atomic<bool> started_{false};
  std::atomic<bool> draining_{false};
  std::atomic<bool> stop_now_{false};  // running images stop at their next step
  std::atomic<bool> drained_{false};
  std::atomic<bool> store_failed_{false};
};

}  // namespace diffusiond
