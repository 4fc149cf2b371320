// The one place the API dialects (A1111's sd-models/loras/options, OpenAI's /v1/models) learn
// which models and LoRAs exist and resolve the names clients send back.
// Models come from ImageService::models() and are resolved by the core's one resolver
// (find_model, daemon/api/views.h); LoRAs from ImageService::loras().
// Pure functions over the service; any thread.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "daemon/api/service.h"

namespace diffusiond::http_api {

struct ListedModel {
  std::string name;  // what GenerateRequest::model takes
  std::string path;
  std::string family;
  std::string title;   // A1111's "name.safetensors [hash]"
  std::string hash;    // A1111's short hash, "" until computed
  std::string sha256;  // "" until computed
};
struct ListedLora {
  std::string name;  // a LoraRef name
  std::string path;
};

std::vector<ListedModel> listed_models(const ImageService& service);
std::vector<ListedLora> listed_loras(const ImageService& service);
// The model a client's name means: a listed name, or an A1111 title "name [hash]" or file name;
// nullopt when none.
std::optional<std::string> resolve_listed_model(const ImageService& service,
                                                const std::string& asked);

}  // namespace diffusiond::http_api
