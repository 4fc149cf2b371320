// The one place the API dialects (A1111's sd-models/loras/options, OpenAI's /v1/models) learn
// which models and LoRAs exist and resolve the names clients send back.
// NOTE for the merge of the `models` and `lora` work: today these serve the one model of
// ImageService::model_info() and an empty LoRA list; point listed_models / resolve_listed_model
// at the service's model listing and listed_loras at ImageService::loras() — nothing else in the
// dialects needs to change.
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
