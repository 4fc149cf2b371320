#include "daemon/model_cache.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <stdexcept>

namespace diffusiond {

ModelCache::ModelCache(int max_loaded, Loader loader, Changed changed)
    : max_loaded_(std::max(1, max_loaded)),
      loader_(std::move(loader)),
      changed_(std::move(changed)) {}

ModelCache::~ModelCache() {
  try {
    entries_.clear();
  } catch (...) {
  }
}

bool ModelCache::holds(int model) const {
  return std::any_of(entries_.begin(), entries_.end(),
                     [&](const Entry& e) { return e.model == model; });
}

std::vector<int> ModelCache::held() const {
  std::vector<int> out;
  for (const auto& e : entries_) out.push_back(e.model);
  return out;
}

ImageGenerator* ModelCache::most_recent() {
  return entries_.empty() ? nullptr : entries_.front().replica.get();
}

void ModelCache::clear() {
  entries_.clear();
  changed();
}

void ModelCache::evict_lru() {
  if (entries_.empty()) return;
  spdlog::info("model cache: evicting model #{} (least recently used)", entries_.back().model);
  entries_.pop_back();  // frees the replica now, before the next load allocates
  ++evictions_;
  changed();
}

void ModelCache::changed() {
  if (changed_) changed_(held());
}

ImageGenerator& ModelCache::acquire(int model) {
  for (auto it = entries_.begin(); it != entries_.end(); ++it) {
    if (it->model != model) continue;
    if (it != entries_.begin()) {
      entries_.splice(entries_.begin(), entries_, it);
      changed();
    }
    return *entries_.front().replica;
  }
  while (static_cast<int>(entries_.size()) >= max_loaded_) evict_lru();
  for (;;) {
    try {
      auto replica = loader_(model);
      if (!replica) throw std::runtime_error("the loader returned no replica");
      entries_.push_front({model, std::move(replica)});
      ++loads_;
      changed();
      return *entries_.front().replica;
    } catch (const DeviceOutOfMemory&) {
      if (entries_.empty()) {
        ++load_failures_;
        throw;  // it does not fit even alone
      }
      evict_lru();  // room by memory: drop the least recently used one and try again
    } catch (...) {
      ++load_failures_;
      throw;
    }
  }
}

}  // namespace diffusiond
