#include "http/a1111_state.h"

namespace diffusiond::http_api {

nlohmann::json A1111State::options(const std::string& client) const {
  std::lock_guard lock(mu_);
  auto it = clients_.find(client);
  return it == clients_.end() ? nlohmann::json::object() : it->second.options;
}

bool A1111State::update_options(const std::string& client, const nlohmann::json& changes) {
  std::lock_guard lock(mu_);
  if (clients_.size() >= max_clients && clients_.find(client) == clients_.end()) return false;
  nlohmann::json merged = clients_[client].options;
  for (const auto& [key, value] : changes.items()) merged[key] = value;
  if (merged.size() > max_keys) return false;
  clients_[client].options = std::move(merged);
  return true;
}

std::optional<std::string> A1111State::checkpoint(const std::string& client) const {
  std::lock_guard lock(mu_);
  auto it = clients_.find(client);
  if (it == clients_.end()) return std::nullopt;
  auto v = it->second.options.find("sd_model_checkpoint");
  if (v == it->second.options.end() || !v->is_string()) return std::nullopt;
  return v->get<std::string>();
}

void A1111State::set_flags(const std::string& client, bool interrupted, bool skipped) {
  std::lock_guard lock(mu_);
  if (clients_.size() >= max_clients && clients_.find(client) == clients_.end()) return;
  clients_[client].interrupted = interrupted;
  clients_[client].skipped = skipped;
}

std::pair<bool, bool> A1111State::flags(const std::string& client) const {
  std::lock_guard lock(mu_);
  auto it = clients_.find(client);
  if (it == clients_.end()) return {false, false};
  return {it->second.interrupted, it->second.skipped};
}

}  // namespace diffusiond::http_api
