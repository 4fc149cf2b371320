// The LoRA folder (--lora-dir): which LoRAs a request may name, and their hashes.
// A LoRA's name is the stem of a regular file `<dir>/<name>.safetensors`, never a path (the
// request vocabulary refuses separators, "." and ".."; find() checks again). Hashes: the file's
// SHA-256 and A1111's short hash (extensions-builtin/Lora/network.py NetworkOnDisk: the
// `sshs_model_hash` of the file's metadata, else hashes.addnet_hash_safetensors, the SHA-256 of
// the bytes after the safetensors header; its first 12 hex digits), computed once per file and
// cached by path + size + mtime. Torch-free.
// Owner: CoreService (one per daemon). Thread-safety: every method may be called from any
// thread; hashing reads the file outside the cache's mutex, which no device thread ever takes.
// Never call hash() on a device thread (a big file takes seconds).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "daemon/api/views.h"

namespace diffusiond {

struct LoraHashes {
  std::string sha256;      // of the whole file, 64 lowercase hex digits
  std::string short_hash;  // A1111's shorthash, 12 hex digits
};

// Reads the whole file once. Throws std::runtime_error naming the file.
LoraHashes hash_lora_file(const std::filesystem::path& file);

class LoraCatalog {
 public:
  explicit LoraCatalog(std::filesystem::path dir) : dir_(std::move(dir)) {}
  const std::filesystem::path& dir() const { return dir_; }

  // <dir>/<name>.safetensors when it is a regular file (a stat), else nullopt.
  std::optional<std::filesystem::path> find(const std::string& name) const;
  // Names of the folder's LoRAs, sorted (a directory listing; no hashing).
  std::vector<std::string> names() const;
  // Every LoRA with its size and hashes (hashes the files not yet in the cache).
  std::vector<LoraView> list() const;
  // The hashes of a file, from the cache when its size and mtime did not change.
  LoraHashes hash(const std::filesystem::path& file) const;

 private:
  struct Entry {
    std::int64_t size = 0;
    std::int64_t mtime_ns = 0;
    LoraHashes hashes;
  };
  std::filesystem::path dir_;
  mutable std::mutex mu_;  // cache_ only; never held while reading a file
  mutable std::map<std::string, Entry> cache_;
};

}  // namespace diffusiond
