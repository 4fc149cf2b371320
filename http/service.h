// The contract between the HTTP layer and the daemon core: plain C++ types, no JSON, no tensors.
// The daemon core (daemon/) implements ImageService; the HTTP layer (http/) only calls it.
// Thread-safety: every ImageService method may be called from any HTTP I/O thread at any time
// and must never block on a device (it only touches the job store and in-memory state).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace diffusiond {

// A validated, normalised text-to-image request (defaults already filled in by the HTTP edge
// from ModelInfo). Images are numbered prompt-major: image k = prompts[k / n], seed + k.
struct GenerateRequest {
  std::vector<std::string> prompts;  // at least one
  std::string negative_prompt;
  int n = 1;  // images per prompt
  int steps = 0;
  double guidance_scale = 7.5;
  std::uint64_t seed = 0;
  int width = 0;
  int height = 0;
  std::string scheduler;  // canonical scheduler name (see ImageService::canonical_scheduler)
  int priority = 0;       // higher runs first; FIFO within a priority
};

enum class JobStatus { queued, running, done, failed, cancelled };
// Image tasks share the same five states.
using ImageStatus = JobStatus;

const char* to_string(JobStatus s);                     // "queued", "running", ...
std::optional<JobStatus> parse_job_status(const std::string& s);  // inverse; nullopt if unknown

struct ImageView {
  int index = 0;
  std::string prompt;
  std::uint64_t seed = 0;
  ImageStatus status = ImageStatus::queued;
  std::string device;  // empty until started
  int step = 0;        // steps completed
  int steps = 0;
  std::string error;  // non-empty when failed
  bool has_file = false;
  std::int64_t started_ms = 0;   // unix ms, 0 if not yet
  std::int64_t finished_ms = 0;  // unix ms, 0 if not yet
};

struct JobView {
  std::string id;
  JobStatus status = JobStatus::queued;
  GenerateRequest request;
  std::vector<ImageView> images;
  std::int64_t created_ms = 0;
  std::int64_t started_ms = 0;
  std::int64_t finished_ms = 0;
  std::string error;  // first image error, if failed
  std::string model;  // model name
};

struct JobEvent {
  enum class Kind { queued, started, progress, image, done, failed, cancelled };
  Kind kind = Kind::queued;
  std::string job_id;
  int image = -1;  // image index for started/progress/image/failed(of one image)
  int step = 0;    // progress: steps completed
  int steps = 0;
  std::string device;  // started
  std::string error;   // failed
};
const char* to_string(JobEvent::Kind k);  // "queued", "started", "progress", ...

struct DeviceView {
  std::string name;         // "cuda:0", "cpu:1"
  std::string description;  // "NVIDIA H100 80GB HBM3", "CPU (4 threads)"
  std::int64_t memory_total_bytes = 0;  // 0 when unknown
  std::int64_t memory_used_bytes = 0;
  bool loaded = false;   // model replica loaded
  bool healthy = true;   // false after repeated failures
  bool busy = false;
  std::string current_job;  // empty when idle
  std::int64_t images_done = 0;
  std::int64_t steps_done = 0;
  double steps_per_second = 0;  // recent average
  double busy_ratio = 0;        // since start, 0..1
};

struct SchedulerName {
  std::string name;                  // canonical: "euler_a"
  std::vector<std::string> aliases;  // "Euler a", ...
};

struct ModelInfo {
  std::string name;  // folder or repo id
  std::string path;
  bool is_test_model = false;  // the bundled random-weight model: images are noise
  std::string notice;          // plain words for the UI when is_test_model
  int default_width = 512;
  int default_height = 512;
  int default_steps = 50;
  double default_guidance_scale = 7.5;
  std::string default_scheduler;
  std::vector<SchedulerName> schedulers;
};

// Thrown by ImageService::submit and friends; the HTTP layer maps it to a JSON error.
class ServiceError : public std::runtime_error {
 public:
  ServiceError(int http_status, std::string code, const std::string& message,
               int retry_after_s = 0)
      : std::runtime_error(message),
        http_status_(http_status),
        code_(std::move(code)),
        retry_after_s_(retry_after_s) {}
  int http_status() const { return http_status_; }
  const std::string& code() const { return code_; }
  int retry_after_s() const { return retry_after_s_; }

 private:
  int http_status_;
  std::string code_;
  int retry_after_s_;
};

// Keeps an event subscription alive; destroying it unsubscribes (no callback runs after the
// destructor returns).
class Subscription {
 public:
  virtual ~Subscription() = default;
};

enum class CancelResult { cancelled, already_finished, not_found };

class ImageService {
 public:
  virtual ~ImageService() = default;

  virtual ModelInfo model_info() const = 0;
  // Canonical scheduler name for a canonical name or alias (case-insensitive); nullopt if unknown.
  virtual std::optional<std::string> canonical_scheduler(const std::string& name) const = 0;

  // Persists the job (durable before returning) and queues its images. Throws ServiceError
  // (429 queue_full with retry_after_s, 503 draining, ...).
  virtual JobView submit(const GenerateRequest& request) = 0;
  virtual std::optional<JobView> job(const std::string& id) const = 0;
  // Newest first. status filter optional; limit >= 1.
  virtual std::vector<JobView> jobs(std::optional<JobStatus> status, int limit) const = 0;
  virtual CancelResult cancel(const std::string& id) = 0;
  // Absolute path of image k of the job, if it was written.
  virtual std::optional<std::string> image_path(const std::string& id, int k) const = 0;

  // Calls on_event for every later event of the job, from any thread, in order. The first
  // event delivered is a snapshot-consistent one: subscribe, then read job() to catch up.
  virtual std::unique_ptr<Subscription> subscribe(const std::string& job_id,
                                                  std::function<void(const JobEvent&)> on_event) = 0;

  virtual std::vector<DeviceView> devices() const = 0;
  virtual bool ready() const = 0;             // every replica loaded
  virtual std::string metrics_text() const = 0;  // Prometheus text exposition format
};

}  // namespace diffusiond
