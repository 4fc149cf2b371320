// What the core shows: jobs, images, events, devices and the served model. Plain values built
// by the core (CoreService) and read by the front ends. Part of diffusiond_api.
// Value types; any thread.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
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
  double steps_per_second = 0;       // recent average
  double busy_ratio = 0;             // since start, 0..1
  std::vector<std::string> models;   // model names loaded on it, most recently used first
  std::int64_t model_loads = 0;      // models it loaded (the start-up one included)
  std::int64_t model_evictions = 0;  // models it dropped to make room (LRU)
  std::int64_t model_load_failures = 0;
};

// A LoRA of the daemon's LoRA folder (GET /loras, A1111's /sdapi/v1/loras).
struct LoraView {
  std::string name;  // the file stem, what requests name
  std::string path;  // absolute or as configured (--lora-dir)
  std::int64_t size_bytes = 0;
  std::string sha256;      // of the file
  std::string short_hash;  // A1111's shorthash (12 hex digits), what `Lora hashes` records
};

struct SchedulerName {
  std::string name;                  // canonical: "euler_a"
  std::vector<std::string> aliases;  // "Euler a", ...
};

// One model the daemon can serve: the default (--model) or an entry of --models-dir. A model's
// name is its --model string (folder or HF repo id), or, in the models dir, the folder name or
// file stem with its sub-folder prefix ("sub/name", as A1111 shows it).
struct ModelInfo {
  std::string name;  // folder or repo id; models dir: "name" or "sub/name"
  std::string path;
  std::string format = "diffusers";  // "diffusers" (a folder) or "single_file" (.safetensors/.ckpt)
  std::string file_name;  // models dir: the entry's relative path ("sub/x.safetensors"), else ""
  std::int64_t size_bytes = 0;  // on disk: the file, or every file of the folder
  std::string hash_file;        // what the model hash is of: the file, or the folder's UNet weights
  std::string sha256;           // of hash_file; "" until computed (in the background)
  bool is_default = false;      // what a request without `model` gets
  std::vector<std::string> loaded_on;  // devices holding it now (ImageService::models())
  bool is_test_model = false;          // the bundled random-weight model: images are noise
  std::string notice;                  // plain words for the UI when is_test_model
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

// AUTOMATIC1111's short hash: the first 10 hex digits of the sha256 ("" while unknown).
std::string short_hash(const ModelInfo& model);
// AUTOMATIC1111's checkpoint title: "sub/name.safetensors [0123456789]" (file name, or the name
// of a folder, then the short hash once known).
std::string model_title(const ModelInfo& model);
// THE resolver of a user-given model string (request field `model`, A1111's
// sd_model_checkpoint, OpenAI's `model`): "" -> the default; else, in order, an exact name,
// title, file name (with or without its sub-folder) or path; a title's " [hash]" suffix is
// ignored; then a case-insensitive match if unique; a short hash or full sha256 if known.
// Returns the index into `models`, nullopt when nothing matches.
std::optional<std::size_t> find_model(const std::vector<ModelInfo>& models,
                                      const std::string& asked);
// "a, b, c (and 4 more)": a few names for an unknown-model message.
std::string model_names(const std::vector<ModelInfo>& models, std::size_t max = 8);

// The request defaults a model implies (for normalise()).
RequestDefaults request_defaults(const ModelInfo& model);
// "euler_a, euler, ..." (for error messages).
std::string scheduler_names(const ModelInfo& model);
// The AUTOMATIC1111 display name of a canonical scheduler (its first alias), else the name.
std::string sampler_display(const std::vector<SchedulerName>& schedulers,
                            const std::string& canonical);

}  // namespace diffusiond
