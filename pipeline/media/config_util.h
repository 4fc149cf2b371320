// Small helpers for reading diffusers/transformers config.json files into typed structs.
// Errors name the file and the key. Unknown keys are ignored by construction.
// Thread-safety: free functions, no state.
#pragma once

#include <filesystem>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

namespace diffusiond {

class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Parses a JSON file; throws ConfigError("FILE: cannot open" / "FILE: invalid JSON: ...").
// Python's json module writes the non-finite floats as bare -Infinity, Infinity and NaN (e.g.
// DPMSolver's lambda_min_clipped): those become the strings "-Infinity", "Infinity", "NaN".
nlohmann::json read_json_file(const std::filesystem::path& path);

// The rewrite read_json_file applies: bare -Infinity / Infinity / NaN outside strings quoted.
std::string quote_python_non_finite(const std::string& json_text);

// Required key: throws ConfigError("FILE: missing required key 'KEY'") or a type error naming it.
template <typename T>
T require_key(const nlohmann::json& j, const std::string& key, const std::string& file) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    throw ConfigError(file + ": missing required key '" + key + "'");
  }
  try {
    return it->get<T>();
  } catch (const nlohmann::json::exception& e) {
    throw ConfigError(file + ": key '" + key + "' has the wrong type (" + it->type_name() + ")");
  }
}

// Optional key: the default when absent or null; throws ConfigError on a wrong type.
template <typename T>
T key_or(const nlohmann::json& j, const std::string& key, const T& fallback,
         const std::string& file) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  try {
    return it->get<T>();
  } catch (const nlohmann::json::exception& e) {
    throw ConfigError(file + ": key '" + key + "' has the wrong type (" + it->type_name() + ")");
  }
}

}  // namespace diffusiond
