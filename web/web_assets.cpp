#include "web/web_assets.h"

namespace diffusiond::web {
namespace {
std::string_view content_type_for(std::string_view path) {
  auto ends = [&](std::string_view ext) {
    return path.size() >= ext.size() && path.substr(path.size() - ext.size()) == ext;
  };
  if (ends(".html")) return "text/html; charset=utf-8";
  if (ends(".js")) return "text/javascript; charset=utf-8";
  if (ends(".css")) return "text/css; charset=utf-8";
  if (ends(".svg")) return "image/svg+xml";
  if (ends(".png")) return "image/png";
  if (ends(".ico")) return "image/x-icon";
  if (ends(".json")) return "application/json";
  return "application/octet-stream";
}
}  // namespace

std::optional<Asset> find_asset(std::string_view path) {
  if (path == "/" || path.empty()) path = "/index.html";
  for (const RawAsset* a = kRawAssets; a->path != nullptr; ++a) {
    if (path == a->path) {
      return Asset{std::string_view(reinterpret_cast<const char*>(a->data), a->size),
                   content_type_for(path)};
    }
  }
  return std::nullopt;
}
}  // namespace diffusiond::web
