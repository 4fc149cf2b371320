#include "daemon/api/views.h"

#include "daemon/api/service.h"

namespace diffusiond {

const char* to_string(JobEvent::Kind k) {
  switch (k) {
    case JobEvent::Kind::queued:
      return "queued";
    case JobEvent::Kind::started:
      return "started";
    case JobEvent::Kind::progress:
      return "progress";
    case JobEvent::Kind::image:
      return "image";
    case JobEvent::Kind::done:
      return "done";
    case JobEvent::Kind::failed:
      return "failed";
    case JobEvent::Kind::cancelled:
      return "cancelled";
  }
  return "unknown";
}

RequestDefaults request_defaults(const ModelInfo& m) {
  return {m.default_width,          m.default_height,    m.default_steps,
          m.default_guidance_scale, m.default_scheduler, m.micro_conditioning};
}

std::string scheduler_names(const ModelInfo& m) {
  std::string known;
  for (const auto& s : m.schedulers) known += (known.empty() ? "" : ", ") + s.name;
  return known;
}

std::string sampler_display(const std::vector<SchedulerName>& schedulers,
                            const std::string& canonical) {
  for (const auto& s : schedulers)
    if (s.name == canonical) return s.aliases.empty() ? s.name : s.aliases.front();
  return canonical;
}

}  // namespace diffusiond

namespace diffusiond {

const char* to_string(ImageFormat format) {
  switch (format) {
    case ImageFormat::png:
      return "png";
    case ImageFormat::jpeg:
      return "jpeg";
    case ImageFormat::webp:
      return "webp";
  }
  return "png";
}

const char* content_type_of(ImageFormat format) {
  switch (format) {
    case ImageFormat::png:
      return "image/png";
    case ImageFormat::jpeg:
      return "image/jpeg";
    case ImageFormat::webp:
      return "image/webp";
  }
  return "image/png";
}

std::optional<ImageFormat> image_format_named(std::string_view name) {
  if (name == "png") return ImageFormat::png;
  if (name == "jpeg" || name == "jpg") return ImageFormat::jpeg;
  if (name == "webp") return ImageFormat::webp;
  return std::nullopt;
}

}  // namespace diffusiond
