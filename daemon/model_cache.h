// The models one device holds: loaded replicas (ImageGenerator) by model id, least recently used
// first out. Loading goes through a loader function (ModelBackend::load_replica); the cache
// never sees tensors.
// Bounds: at most `max_loaded` replicas; and the device's memory: a load that runs out of memory
// (DeviceOutOfMemory) evicts the least recently used replica and tries again, until the cache is
// empty (then the model does not fit this device: the error propagates).
// "In use" is safe by construction: the owning worker thread asks for one replica per task and
// only evicts between tasks, so a replica that a running task uses is never evicted.
// A replica is self-contained (a LoRA set applied to it later belongs to it and leaves with it).
// Owner: one DeviceWorker; only its thread calls it (replicas are made, used and freed there).
#pragma once

#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <string>
#include <vector>

#include "daemon/image_generator.h"

namespace diffusiond {

class ModelCache {
 public:
  using Loader = std::function<std::unique_ptr<ImageGenerator>(int model)>;
  // Called after a load or an eviction (the ids held, most recently used first): the worker
  // tells the dispatcher and its stats.
  using Changed = std::function<void(const std::vector<int>& held)>;

  ModelCache(int max_loaded, Loader loader, Changed changed = {});
  ~ModelCache();  // frees the replicas (on the owner's thread)
  ModelCache(const ModelCache&) = delete;
  ModelCache& operator=(const ModelCache&) = delete;

  // The replica of `model`, loaded (after evicting) if needed; it becomes the most recently
  // used. Throws the loader's error (the cache is unchanged but for evictions).
  ImageGenerator& acquire(int model);
  bool holds(int model) const;
  std::vector<int> held() const;  // most recently used first
  ImageGenerator* most_recent();  // null when empty
  void clear();

  std::int64_t loads() const { return loads_; }
  std::int64_t evictions() const { return evictions_; }
  std::int64_t load_failures() const { return load_failures_; }

 private:
  void evict_lru();
  void changed();

  struct Entry {
    int model = 0;
    std::unique_ptr<ImageGenerator> replica;
  };
  const int max_loaded_;
  Loader loader_;
  Changed changed_;
  std::list<Entry> entries_;  // most recently used first
  std::int64_t loads_ = 0;
  std::int64_t evictions_ = 0;
  std::int64_t load_failures_ = 0;
};

}  // namespace diffusiond
