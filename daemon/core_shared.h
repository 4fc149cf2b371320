// What the two cores (CoreService on SQLite, ClusterService on PostgreSQL) answer the same way
// from their devices and images: one owner for each (see also submit_checks.h for the submit
// rules and device_view()).
// Thread-safety: pure functions over what they are given; callers hold whatever their own
// members need (workers' and the dispatcher's methods lock themselves).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "daemon/api/service.h"

namespace diffusiond {

class DeviceWorker;
class Dispatcher;
class LoraCatalog;
class ModelHasher;
class PrometheusWriter;
struct PngGenerationInfo;

// The served models with the devices holding each now (`loaded_on`) and the sha256 once known.
std::vector<ModelInfo> models_view(std::vector<ModelInfo> models,
                                   const std::vector<std::unique_ptr<DeviceWorker>>& workers,
                                   const Dispatcher& dispatcher, const ModelHasher* hasher);

// A stored PNG in the format asked (JPEG/WebP made from it). Throws ServiceError internal
// naming the image when it cannot be encoded.
EncodedImage encode_stored_png(std::string_view png, const std::string& job_id, int k,
                               ImageFormat format, int quality);

// The text metadata of an uploaded image; ServiceError invalid_request (invalid_image, field
// "image") when it cannot be read.
std::vector<std::pair<std::string, std::string>> uploaded_image_text(std::string_view bytes);

// The devices' part of /readyz: no healthy device left, or the models still loading (of
// `total` loads, `finished` ended and `ok` succeeded); nullopt: ready.
std::optional<ServiceError> devices_not_ready(const Dispatcher& dispatcher, int total, int finished,
                                              int ok);

// On the PNG pool, never a device thread: the model's sha256 (the first image of a model waits
// for the hasher) and the image's LoRA hashes (once per file, cached) into `info`. A LoRA that
// cannot be hashed is logged and left without hashes.
void add_hashes(PngGenerationInfo& info, ModelHasher* hasher, const std::string& model_file,
                const LoraCatalog* loras);

// Every diffusiond_device_* family and diffusiond_step_seconds, per device.
void write_device_metrics(PrometheusWriter& w, const std::vector<DeviceView>& views,
                          const std::vector<std::unique_ptr<DeviceWorker>>& workers);

}  // namespace diffusiond
