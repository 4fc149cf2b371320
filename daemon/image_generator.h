// The torch-free boundary between the daemon core and the pipeline: a model (ModelBackend)
// makes one replica per device (ImageGenerator), which turns one image (daemon/api/request.h
// ImageSpec) into RGB pixels.
// The real implementation is torch_backend.h (over pipeline/txt2img.h); tests use a fake.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "daemon/api/request.h"
#include "daemon/api/views.h"
#include "daemon/device_spec.h"
#include "pipeline/media/image.h"

namespace diffusiond {

// Called after every denoising step (step in 1..steps); returning false stops the generation,
// which then throws GenerationStopped.
using StepProgress = std::function<bool(int step, int steps)>;

// Where a replica hands the cheap previews of the image it is making (latent-sized RGB, at most
// one per kPreviewInterval, the first after step 1); called on its device thread.
using PreviewSink = std::function<void(RgbImage preview)>;
inline constexpr std::chrono::milliseconds kPreviewInterval{250};

class GenerationStopped : public std::runtime_error {
 public:
  GenerationStopped() : std::runtime_error("generation stopped") {}
};

// A generation ran out of device memory (CUDA's caching allocator, the CPU allocator). The
// torch backend turns LibTorch's out-of-memory errors into this one; the device worker reports
// it as `device_out_of_memory` (see device_worker.h for how it counts against the device).
class DeviceOutOfMemory : public std::runtime_error {
 public:
  static constexpr const char* reason = "device_out_of_memory";
  using std::runtime_error::runtime_error;
};

// The task's own input cannot run on this model (a LoRA file that does not fit it, or that
// holds no LoRA layer): the image fails with the message, and the failure does not count
// against the device's health.
class TaskInputError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct DeviceMemory {
  std::int64_t total_bytes = 0;  // 0 = unknown
  std::int64_t used_bytes = 0;
};

// One model replica on one device. Owner: that device's DeviceWorker; only its thread calls it
// (it is created, used and destroyed on that thread).
class ImageGenerator {
 public:
  virtual ~ImageGenerator() = default;
  // Throws GenerationStopped when `progress` returned false, DeviceOutOfMemory when the device
  // ran out of memory, anything else on another failure.
  virtual RgbImage generate_one(const ImageSpec& image, const StepProgress& progress) = 0;
  // Previews for the following generate_one calls (an empty sink: none, the default). Replicas
  // that cannot make previews ignore it.
  virtual void set_previews(PreviewSink /*sink*/) {}
  virtual std::string description() const = 0;  // "NVIDIA H100 80GB HBM3", "CPU (4 threads)"
  virtual DeviceMemory memory() const { return {}; }
};

// The models a daemon serves and how to load them. A model is named by its index in models()
// (its id: the dispatcher and the device caches know models by id only).
// Thread-safety: every method may be called from any thread; load_replica() is called
// concurrently, on each device's worker thread (never on an HTTP thread, never under a lock of
// the core).
class ModelBackend {
 public:
  virtual ~ModelBackend() = default;
  // Every model, in id order; the default one has is_default (else id 0 is the default).
  virtual std::vector<ModelInfo> models() const = 0;
  virtual std::optional<std::string> canonical_scheduler(const std::string& name) const = 0;
  // Loads model `model` (an index into models()) onto the device. Throws with the loader's
  // message when it cannot (DeviceOutOfMemory when the device has no room for it).
  virtual std::unique_ptr<ImageGenerator> load_replica(const DeviceSpec& device, int model) = 0;
  std::unique_ptr<ImageGenerator> load_replica(const DeviceSpec& device) {  // the default model
    return load_replica(device, default_model());
  }
  ModelInfo model_info() const {  // the default model's
    const auto all = models();
    return all.at(static_cast<std::size_t>(default_model()));
  }
  int default_model() const {  // the default model's id
    const auto i = find_model(models(), "");
    return i ? static_cast<int>(*i) : 0;
  }
};

}  // namespace diffusiond
