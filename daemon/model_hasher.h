// The sha256 of model files, computed once per file: on one background thread, cached in memory
// and in a JSON file in the data dir (keyed by path, size and mtime, so a changed file is hashed
// again). A1111's short hash is its first 10 hex digits (views.h short_hash).
// Hashing a multi-GB checkpoint takes seconds to minutes: it never runs on a device thread, an
// HTTP thread or under a lock shared with them (hash_in_background only queues). wait() is for
// the PNG pool (the first image of a model not hashed yet waits there for its hash; requested
// files jump the queue).
// Owner: cmd_serve (shared with CoreService). Thread-safety: every method from any thread.
#pragma once

#include <condition_variable>
#include <deque>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace diffusiond {

// Hex sha256 of a file's bytes, streamed. Throws std::runtime_error naming the file.
std::string sha256_file(const std::filesystem::path& file);

class ModelHasher {
 public:
  // cache_file "": memory only.
  explicit ModelHasher(std::filesystem::path cache_file = {});
  ~ModelHasher();  // stop()
  ModelHasher(const ModelHasher&) = delete;
  ModelHasher& operator=(const ModelHasher&) = delete;

  // Queues files to hash in the background, in this order (cached ones are not read again).
  void hash_in_background(const std::vector<std::string>& files);
  // The hash if known now (never waits); nullopt while unknown or when it failed.
  std::optional<std::string> peek(const std::string& file) const;
  // The hash, hashing it first if needed (at the head of the queue); "" when the file cannot be
  // read or the hasher stopped.
  std::string wait(const std::string& file);
  void stop();  // wakes every wait() with ""; joins the thread

 private:
  struct Stamp {
    std::uintmax_t size = 0;
    std::int64_t mtime_ns = 0;
    bool operator==(const Stamp&) const = default;
  };
  struct Known {
    Stamp stamp;
    std::string sha256;  // "" = failed
  };
  static std::optional<Stamp> stamp_of(const std::string& file);
  void run();
  void load_cache();
  void save_cache();  // the hasher thread, outside mu_
  // The hash if known for the file as it is on disk now (needs mu_).
  std::optional<std::string> known_locked(const std::string& file, const Stamp& stamp) const;

  const std::filesystem::path cache_file_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::string> queue_;
  std::map<std::string, Known> known_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace diffusiond
