#include "http/model_listing.h"

namespace diffusiond::http_api {

std::vector<ListedModel> listed_models(const ImageService& service) {
  const ModelInfo m = service.model_info();
  return {{m.name, m.path, m.family}};
}

std::vector<ListedLora> listed_loras(const ImageService&) {
  return {};
}

std::optional<std::string> resolve_listed_model(const ImageService& service,
                                                const std::string& asked) {
  std::string name = asked;
  if (const auto bracket = name.rfind(" ["); bracket != std::string::npos && name.back() == ']')
    name = name.substr(0, bracket);  // A1111 titles: "name [hash]"
  for (const auto& m : listed_models(service))
    if (name == m.name || name == m.path) return m.name;
  return std::nullopt;
}

}  // namespace diffusiond::http_api
