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

// Where a replica hands the cheap previews of the images it is making (latent-sized RGB, at most
// one per kPreviewInterval per image, the first after step 1), for the images whose
// ImageSpec::previews is set; `image` is its position in the generate_batch call (0 for
// generate_one). Called on its device thread.
using PreviewSink = std::function<void(int image, RgbImage preview)>;
inline constexpr std::chrono::milliseconds kPreviewInterval{250};
// Called after every step of every image of a batch (image: its position in the batch);
// returning false makes that image leave the batch (the others go on).
using BatchProgress = std::function<bool(int image, int step, int steps)>;

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
  // Previews for the following generate_one / generate_batch calls (an empty sink: none, the
  // default). Replicas that cannot make previews ignore it (so does the default generate_batch).
  virtual void set_previews(PreviewSink /*sink*/) {}
  // The images as one batch (the worker batches only images of one daemon/api/batch_key.h
  // key). Per image: its pixels, or nullopt when `progress` returned false for it. A failure
  // throws as generate_one does, for the whole batch. This default runs them one after another
  // (a replica that cannot batch); the torch replica runs them as one UNet batch.
  virtual std::vector<std::optional<RgbImage>> generate_batch(const std::vector<ImageSpec>& images,
                                                              const BatchProgress& progress) {
    std::vector<std::optional<RgbImage>> out;
    for (std::size_t k = 0; k < images.size(); ++k) {
      try {
        out.emplace_back(generate_one(images[k], [&](int step, int steps) {
          return progress(static_cast<int>(k), step, steps);
        }));
      } catch (const GenerationStopped&) {
        out.emplace_back(std::nullopt);
      }
    }
    return out;
  }
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
