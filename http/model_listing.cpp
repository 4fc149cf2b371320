#include "http/model_listing.h"

#include <filesystem>

namespace diffusiond::http_api {

std::vector<ListedModel> listed_models(const ImageService& service) {
  std::vector<ListedModel> out;
  for (const ModelInfo& m : service.models())
    out.push_back({m.name, m.path, m.family, model_title(m), short_hash(m), m.sha256});
  return out;
}

std::vector<ListedLora> listed_loras(const ImageService& service) {
  std::vector<ListedLora> out;
  // The file name only: clients never learn the daemon's folders.
  for (const LoraView& l : service.loras())
    out.push_back({l.name, std::filesystem::path(l.path).filename().string()});
  return out;
}

std::optional<std::string> resolve_listed_model(const ImageService& service,
                                                const std::string& asked) {
  const auto models = service.models();
  const auto found = find_model(models, asked);
  if (!found) return std::nullopt;
  return models[*found].name;
}

}  // namespace diffusiond::http_api
