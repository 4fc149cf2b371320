#include "daemon/core_shared.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "daemon/device_worker.h"
#include "daemon/dispatcher.h"
#include "daemon/lora_catalog.h"
#include "daemon/metrics.h"
#include "daemon/model_hasher.h"
#include "daemon/png_info.h"
#include "pipeline/media/image_formats.h"

namespace diffusiond {
namespace {

ImageFileFormat file_format(ImageFormat f) {
  switch (f) {
    case ImageFormat::jpeg:
      return ImageFileFormat::jpeg;
    case ImageFormat::webp:
      return ImageFileFormat::webp;
    case ImageFormat::png:
      break;
  }
  return ImageFileFormat::png;
}

}  // namespace

std::vector<ModelInfo> models_view(std::vector<ModelInfo> models,
                                   const std::vector<std::unique_ptr<DeviceWorker>>& workers,
                                   const Dispatcher& dispatcher, const ModelHasher* hasher) {
  for (const auto& worker : workers)
    for (int id : dispatcher.models(worker->index()))
      if (id >= 0 && id < static_cast<int>(models.size()))
        models[static_cast<std::size_t>(id)].loaded_on.push_back(worker->spec().name);
  if (hasher)
    for (auto& m : models)
      if (auto hash = hasher->peek(m.hash_file)) m.sha256 = *hash;
  return models;
}

EncodedImage encode_stored_png(std::string_view png, const std::string& job_id, int k,
                               ImageFormat format, int quality) {
  try {
    return EncodedImage{transcode_png(png, file_format(format), quality), format};
  } catch (const std::exception& e) {
    throw ServiceError(ErrorCode::internal, "cannot encode image " + std::to_string(k) +
                                                " of job '" + job_id + "' as " + to_string(format) +
                                                ": " + e.what());
  }
}

std::vector<std::pair<std::string, std::string>> uploaded_image_text(std::string_view bytes) {
  try {
    return image_text_metadata(bytes);
  } catch (const std::exception& e) {
    throw ServiceError(ErrorCode::invalid_request, std::string("unreadable image: ") + e.what(),
                       "invalid_image", "image");
  }
}

std::optional<ServiceError> devices_not_ready(const Dispatcher& dispatcher, int total, int finished,
                                              int ok) {
  if (!dispatcher.any_enabled())
    return ServiceError(ErrorCode::unavailable, "no device can run images", "no_device");
  if (dispatcher.healthy_count() == 0)
    return ServiceError(ErrorCode::unavailable,
                        "no healthy device is left; jobs wait until a probe succeeds", "no_device",
                        {}, 30);
  if (finished == total && ok > 0) return std::nullopt;
  return ServiceError(ErrorCode::unavailable,
                      "the model is loaded on " + std::to_string(ok) + " of " +
                          std::to_string(total) + " device(s)",
                      "loading", {}, 5);
}

void add_hashes(PngGenerationInfo& info, ModelHasher* hasher, const std::string& model_file,
                const LoraCatalog* loras) {
  if (hasher) {
    info.model_sha256 = hasher->wait(model_file);
    info.model_hash =
        info.model_sha256.substr(0, std::min<std::size_t>(10, info.model_sha256.size()));
  }
  add_lora_hashes(info, [loras](const std::string& name) -> std::optional<LoraHashes> {
    const auto path = loras ? loras->find(name) : std::nullopt;
    if (!path) return std::nullopt;
    try {
      return loras->hash(*path);
    } catch (const std::exception& e) {
      spdlog::warn("LoRA {}: cannot hash {}: {}", name, path->string(), e.what());
      return std::nullopt;
    }
  });
}

void write_device_metrics(PrometheusWriter& w, const std::vector<DeviceView>& views,
                          const std::vector<std::unique_ptr<DeviceWorker>>& workers) {
  struct Family {
    const char* name;
    const char* type;
    const char* help;
    double (*value)(const DeviceView&);
  };
  static const Family families[] = {
      {"diffusiond_device_images_total", "counter", "Images generated per device",
       [](const DeviceView& d) { return static_cast<double>(d.images_done); }},
      {"diffusiond_device_steps_total", "counter", "Denoising steps run per device",
       [](const DeviceView& d) { return static_cast<double>(d.steps_done); }},
      {"diffusiond_device_busy_ratio", "gauge", "Share of time generating since start",
       [](const DeviceView& d) { return d.busy_ratio; }},
      {"diffusiond_device_busy", "gauge", "1 while the device runs an image",
       [](const DeviceView& d) { return d.busy ? 1.0 : 0.0; }},
      {"diffusiond_device_batch_size", "gauge", "Images in the device's current batch",
       [](const DeviceView& d) { return static_cast<double>(d.current_batch.size()); }},
      {"diffusiond_device_healthy", "gauge",
       "1 while the device takes new work; 0 when unhealthy, probing or disabled",
       [](const DeviceView& d) { return d.healthy ? 1.0 : 0.0; }},
      {"diffusiond_device_consecutive_failures", "gauge",
       "Failures in a row that count against the device (unhealthy at the threshold)",
       [](const DeviceView& d) { return static_cast<double>(d.consecutive_failures); }},
      {"diffusiond_device_failures_total", "counter",
       "Generations that failed on the device (each attempt)",
       [](const DeviceView& d) { return static_cast<double>(d.images_failed); }},
      {"diffusiond_device_out_of_memory_total", "counter",
       "Generations that ran out of device memory",
       [](const DeviceView& d) { return static_cast<double>(d.images_out_of_memory); }},
      {"diffusiond_device_memory_used_bytes", "gauge", "Device memory in use (0: unknown)",
       [](const DeviceView& d) { return static_cast<double>(d.memory_used_bytes); }},
      {"diffusiond_device_models_loaded", "gauge", "Models the device holds now",
       [](const DeviceView& d) { return static_cast<double>(d.models.size()); }},
      {"diffusiond_device_model_loads_total", "counter",
       "Models loaded onto the device (the start-up load included)",
       [](const DeviceView& d) { return static_cast<double>(d.model_loads); }},
      {"diffusiond_device_model_evictions_total", "counter",
       "Models dropped from the device to make room (least recently used)",
       [](const DeviceView& d) { return static_cast<double>(d.model_evictions); }},
      {"diffusiond_device_model_load_failures_total", "counter",
       "Model loads that failed on the device",
       [](const DeviceView& d) { return static_cast<double>(d.model_load_failures); }},
  };
  for (const auto& f : families) {
    w.header(f.name, f.type, f.help);
    for (const auto& d : views) w.sample(f.name, {{"device", d.name}}, f.value(d));
  }
  w.header("diffusiond_step_seconds", "histogram", "Time per denoising step");
  for (const auto& worker : workers)
    w.histogram("diffusiond_step_seconds", {{"device", worker->spec().name}},
                worker->step_seconds());
}

}  // namespace diffusiond
