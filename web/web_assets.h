// The browser UI's files, embedded at build time (web/embed_assets.cmake). No torch, no Boost.
// Thread-safety: immutable data; any thread may call.
#pragma once
#include <cstddef>
#include <optional>
#include <string_view>

namespace diffusiond::web {

struct RawAsset {
  const char* path;  // "/index.html"
  const unsigned char* data;
  std::size_t size;
};
extern const RawAsset kRawAssets[];  // terminated by {nullptr, nullptr, 0}

struct Asset {
  std::string_view body;
  std::string_view content_type;
};

// Looks up "/" (-> /index.html) or "/app.js" etc.; nullopt if there is no such asset.
std::optional<Asset> find_asset(std::string_view path);

}  // namespace diffusiond::web
