// What the A1111 dialect remembers between requests, per caller (the API key's identity; "" =
// every caller when no key is configured): the options a client POSTed to /sdapi/v1/options
// (sd_model_checkpoint is its default model for txt2img; other keys are kept and echoed), and
// whether its last work was interrupted or skipped (for /sdapi/v1/progress). In memory only: a
// restart forgets it, as A1111 forgets unsaved options.
// Owner: HttpServerImpl (one per server). Thread-safety: every method may be called from any
// thread (one mutex; nothing slow under it).
#pragma once

#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

namespace diffusiond::http_api {

class A1111State {
 public:
  // The caller's options (merged over nothing: the handler adds the defaults).
  nlohmann::json options(const std::string& client) const;
  // Merges `changes` (an object) into the caller's options. At most max_keys keys per caller and
  // max_clients callers are kept; beyond that the change is refused (false).
  bool update_options(const std::string& client, const nlohmann::json& changes);
  std::optional<std::string> checkpoint(const std::string& client) const;

  void set_flags(const std::string& client, bool interrupted, bool skipped);
  std::pair<bool, bool> flags(const std::string& client) const;  // interrupted, skipped

  static constexpr std::size_t max_keys = 512;
  static constexpr std::size_t max_clients = 4096;

 private:
  struct Client {
    nlohmann::json options = nlohmann::json::object();
    bool interrupted = false;
    bool skipped = false;
  };
  mutable std::mutex mu_;
  std::map<std::string, Client> clients_;
};

}  // namespace diffusiond::http_api
