#include "daemon/api/views.h"

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
