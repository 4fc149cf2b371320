// What the core shows: jobs, images, events, devices and the served model. Plain values built
// by the core (CoreService) and read by the front ends. Part of diffusiond_api.
// Value types; any thread.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "daemon/api/request.h"
#include "daemon/api/status.h"

namespace diffusiond {

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
  std::int64_t file_bytes = 0;   // size of the PNG once written (retention by bytes)
  std::int64_t started_ms = 0;   // unix ms, 0 if not yet
  std::int64_t finished_ms = 0;  // unix ms, 0 if not yet
  int batch_size = 0;  // images that shared its UNet batch (its latest run); 0 until it runs
};

struct JobView {
  std::string id;
  JobStatus status = JobStatus::queued;
  JobRequest request;
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
  std::string name;                     // "cuda:0", "cpu:1"
  std::string description;              // "NVIDIA H100 80GB HBM3", "CPU (4 threads)"
  std::int64_t memory_total_bytes = 0;  // 0 when unknown
  std::int64_t memory_used_bytes = 0;
  bool loaded = false;  // model replica loaded
  bool healthy = true;  // health == healthy: it takes new work
  DeviceHealth health = DeviceHealth::healthy;
  int consecutive_failures = 0;           // that count against it (reset by a success)
  std::int64_t images_failed = 0;         // generations that failed on it (each attempt)
  std::int64_t images_out_of_memory = 0;  // of which ran out of device memory
  std::string last_error;                 // the latest failure on it, "" if none
  std::int64_t last_error_ms = 0;         // unix ms, 0 if none
  std::int64_t next_probe_ms = 0;         // unhealthy: when it is given a task again (unix ms)
  bool busy = false;
  std::string current_job;  // empty when idle
  struct BatchImage {
    std::string job_id;
    int image = 0;
  };
  std::vector<BatchImage> current_batch;  // the images it runs now as one batch (empty: idle)
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
  std::string family = "sd";        // sd, sd-turbo, sdxl, sdxl-turbo
  bool micro_conditioning = false;  // SDXL: original_size, crops_coords_top_left, target_size
  std::vector<std::array<int, 2>> size_presets;  // (width, height) a UI offers, first = native
};

// The request defaults a model implies (for normalise()).
RequestDefaults request_defaults(const ModelInfo& model);
// "euler_a, euler, ..." (for error messages).
std::string scheduler_names(const ModelInfo& model);
// The AUTOMATIC1111 display name of a canonical scheduler (its first alias), else the name.
std::string sampler_display(const std::vector<SchedulerName>& schedulers,
                            const std::string& canonical);

}  // namespace diffusiond
