#include "daemon/api/views.h"

#include <algorithm>
#include <cctype>
#include <functional>
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

std::string short_hash(const ModelInfo& m) {
  return m.sha256.size() >= 10 ? m.sha256.substr(0, 10) : std::string();
}

std::string model_title(const ModelInfo& m) {
  const std::string base = m.file_name.empty() ? m.name : m.file_name;
  const std::string hash = short_hash(m);
  return hash.empty() ? base : base + " [" + hash + "]";
}

namespace {
std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}
std::string basename_of(const std::string& s) {
  const auto slash = s.find_last_of('/');
  return slash == std::string::npos ? s : s.substr(slash + 1);
}
// "name.safetensors [abcdef0123]" -> "name.safetensors"
std::string without_hash_suffix(const std::string& s) {
  if (s.size() < 3 || s.back() != ']') return s;
  const auto open = s.rfind(" [");
  return open == std::string::npos ? s : s.substr(0, open);
}
bool is_hex(const std::string& s) {
  return !s.empty() &&
         std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isxdigit(c) != 0; });
}
}  // namespace

std::optional<std::size_t> find_model(const std::vector<ModelInfo>& models,
                                      const std::string& asked) {
  if (asked.empty()) {
    for (std::size_t i = 0; i < models.size(); ++i)
      if (models[i].is_default) return i;
    return models.empty() ? std::nullopt : std::optional<std::size_t>(0);
  }
  // Each pass is one rule; the first rule that matches exactly one model wins.
  auto unique = [&](auto&& matches) -> std::optional<std::size_t> {
    std::optional<std::size_t> found;
    for (std::size_t i = 0; i < models.size(); ++i) {
      if (!matches(models[i])) continue;
      if (found) return std::nullopt;  // ambiguous under this rule
      found = i;
    }
    return found;
  };
  const std::string bare = without_hash_suffix(asked);
  const std::vector<std::function<bool(const ModelInfo&)>> rules = {
      [&](const ModelInfo& m) { return m.name == asked; },
      [&](const ModelInfo& m) { return model_title(m) == asked; },
      [&](const ModelInfo& m) { return m.name == bare || m.path == bare; },
      [&](const ModelInfo& m) { return !m.file_name.empty() && m.file_name == bare; },
      [&](const ModelInfo& m) { return !m.file_name.empty() && basename_of(m.file_name) == bare; },
      [&](const ModelInfo& m) { return basename_of(m.name) == bare; },
      [&](const ModelInfo& m) {
        const std::string l = lower(bare);
        return lower(m.name) == l || (!m.file_name.empty() && lower(m.file_name) == l) ||
               lower(basename_of(m.name)) == l;
      },
      [&](const ModelInfo& m) {
        const std::string l = lower(bare);
        return is_hex(l) && (l.size() == 10 || l.size() == 64) && !m.sha256.empty() &&
               m.sha256.compare(0, l.size(), l) == 0;
      },
  };
  for (const auto& rule : rules)
    if (auto i = unique(rule)) return i;
  return std::nullopt;
}

std::string model_names(const std::vector<ModelInfo>& models, std::size_t max) {
  std::string out;
  for (std::size_t i = 0; i < models.size() && i < max; ++i)
    out += (out.empty() ? "" : ", ") + models[i].name;
  if (models.size() > max) out += " (and " + std::to_string(models.size() - max) + " more)";
  return out;
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
