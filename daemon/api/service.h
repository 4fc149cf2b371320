// The service interface every front end calls and the core (daemon/core_service.h) implements:
// plain C++ types, no JSON, no tensors, no transport. Part of diffusiond_api.
// Thread-safety: every ImageService method may be called from any thread at any time and never
// waits on a device or on a disk write of another request.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "daemon/api/errors.h"
#include "daemon/api/request.h"
#include "daemon/api/status.h"
#include "daemon/api/views.h"

namespace diffusiond {

// Keeps an event subscription alive; destroying it unsubscribes (no callback runs after the
// destructor returns).
class Subscription {
 public:
  virtual ~Subscription() = default;
};

enum class CancelResult { cancelled, already_finished, not_found };

// Who submits, as the front end established it (never part of the job's parameters).
struct SubmitContext {
  std::string client;           // the caller's identity (an API key's fingerprint); "" = none
  bool may_prioritise = false;  // the caller may ask for a priority above 0
  std::string idempotency_key;  // "" = none; scoped to `client`
  std::string fingerprint;      // of the request as sent: same key + same fingerprint = same job
  // The device makes cheap live previews of its images (ImageService::preview), at a bounded
  // rate; in memory only (a job resumed after a restart has none).
  bool previews = false;
};

// The formats an image can be fetched in. png: the file as written; jpeg/webp: made from it on
// request, with the generation parameters as EXIF UserComment (as AUTOMATIC1111 writes them).
enum class ImageFormat { png, jpeg, webp };
const char* to_string(ImageFormat format);                             // "png", "jpeg", "webp"
const char* content_type_of(ImageFormat format);                       // "image/png", ...
std::optional<ImageFormat> image_format_named(std::string_view name);  // also "jpg"

struct EncodedImage {
  std::string bytes;
  ImageFormat format = ImageFormat::png;
};

struct Submission {
  JobView job;
  bool replayed = false;  // an earlier submission with the same idempotency key
};

class ImageService {
 public:
  virtual ~ImageService() = default;

  virtual ModelInfo model_info() const = 0;  // the default model
  // Every model it serves (the default among them, is_default), in listing order (by name), with
  // where each is loaded now and its sha256 once known. Never waits on a device or a hash.
  virtual std::vector<ModelInfo> models() const { return {model_info()}; }
  // Canonical scheduler name for a canonical name or alias (case-insensitive); nullopt if unknown.
  virtual std::optional<std::string> canonical_scheduler(const std::string& name) const = 0;

  // Normalises the request (daemon/api/request.h), persists the job (committed before
  // returning) and queues its images. Throws ServiceError: invalid_request (the field at
  // fault), queue_full (with retry_after_s), unavailable (draining, no device, store failed).
  // Queues a job (answers once it is durable). Throws ServiceError: invalid_request (the field
  // at fault), forbidden (priority > 0 without context.may_prioritise), conflict (the
  // idempotency key is in flight or was used with another body), queue_full, storage_full,
  // unavailable. With an idempotency key already used by the same client and the same
  // fingerprint it queues nothing and returns that job (replayed).
  virtual Submission submit(const GenerateRequest& request, const SubmitContext& context) = 0;
  // In-process callers (the CLI, tests, tools) are trusted: any priority, no idempotency key.
  JobView submit(const GenerateRequest& request) {
    SubmitContext trusted;
    trusted.may_prioritise = true;
    return submit(request, trusted).job;
  }
  virtual std::optional<JobView> job(const std::string& id) const = 0;
  // Newest first. status filter optional; limit >= 1; before_id (a cursor: the last job of the
  // previous page) lists only jobs submitted before that one. Throws ServiceError
  // (invalid_request, field "before") when before_id names no job.
  virtual std::vector<JobView> jobs(std::optional<JobStatus> status, int limit,
                                    const std::string& before_id = {}) const = 0;
  virtual CancelResult cancel(const std::string& id) = 0;
  // Absolute path of image k of the job, if it was written.
  virtual std::optional<std::string> image_path(const std::string& id, int k) const = 0;

  // Calls on_event for every later event of the job, from any thread, in order. The first
  // event delivered is a snapshot-consistent one: subscribe, then read job() to catch up.
  virtual std::unique_ptr<Subscription> subscribe(
      const std::string& job_id, std::function<void(const JobEvent&)> on_event) = 0;

  // Image k of the job in `format` (quality 1..100 for jpeg/webp), nullopt when it has no file.
  // Reads the file and, for jpeg/webp, encodes on the calling thread (milliseconds for 512x512,
  // tens of them for a 1024x1024 WebP). Throws ServiceError internal when the file is unreadable.
  virtual std::optional<EncodedImage> encoded_image(const std::string& id, int k,
                                                    ImageFormat format, int quality) const = 0;
  // The text metadata of a PNG (its text chunks, "parameters" first when A1111-style), JPEG or
  // WebP ("parameters" from the EXIF UserComment). Throws ServiceError invalid_request
  // (reason invalid_image) when the bytes are none of those or malformed.
  virtual std::vector<std::pair<std::string, std::string>> image_text(
      std::string_view image_bytes) const = 0;
  // The latest live preview of image k (latent-sized PNG), nullopt when there is none (the job
  // did not ask for previews, the image has not started, or the job has left memory).
  virtual std::optional<EncodedImage> preview(const std::string& /*id*/, int /*k*/) const {
    return std::nullopt;
  }
  // The unfinished jobs a caller submitted (SubmitContext::client == client; "" = the callers
  // without a key), oldest first.
  virtual std::vector<JobView> client_jobs(const std::string& client) const = 0;

  virtual std::vector<DeviceView> devices() const = 0;
  // The LoRAs requests may name (the LoRA folder), sorted by name, with their hashes (a file not
  // hashed before is read once, on the calling thread). GET /loras, A1111's /sdapi/v1/loras.
  virtual std::vector<LoraView> loras() const = 0;
  // Why the service cannot take work now, nullopt when it can (every replica loaded, a healthy
  // device left, the store writable, space on the disk). The error's code is unavailable or
  // storage_full; its reason names the cause ("loading", "draining", "store_error",
  // "storage_full", "no_device").
  virtual std::optional<ServiceError> not_ready() const = 0;
  bool ready() const { return !not_ready(); }
  virtual std::string metrics_text() const = 0;  // Prometheus text exposition format
};

}  // namespace diffusiond
