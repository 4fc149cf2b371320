#include "pipeline/config_util.h"

#include <fstream>

namespace diffusiond {

nlohmann::json read_json_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConfigError(path.string() + ": cannot open");
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw ConfigError(path.string() + ": invalid JSON: " + e.what());
  }
}

}  // namespace diffusiond
