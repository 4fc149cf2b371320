#include "daemon/model_hasher.h"

#include <openssl/evp.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "daemon/atomic_file.h"

namespace diffusiond {

std::string sha256_file(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw std::runtime_error(file.string() + ": cannot open to hash");
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1)
    throw std::runtime_error("SHA-256 failed (OpenSSL)");
  std::vector<char> buffer(1 << 20);
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    const auto got = in.gcount();
    if (got > 0 && EVP_DigestUpdate(ctx.get(), buffer.data(), static_cast<std::size_t>(got)) != 1)
      throw std::runtime_error("SHA-256 failed (OpenSSL)");
  }
  if (in.bad()) throw std::runtime_error(file.string() + ": read error while hashing");
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  if (EVP_DigestFinal_ex(ctx.get(), digest, &size) != 1)
    throw std::runtime_error("SHA-256 failed (OpenSSL)");
  static constexpr char hex[] = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < size; ++i) {
    out += hex[digest[i] >> 4];
    out += hex[digest[i] & 15];
  }
  return out;
}

ModelHasher::ModelHasher(std::filesystem::path cache_file) : cache_file_(std::move(cache_file)) {
  load_cache();
  thread_ = std::thread([this] { run(); });
}

ModelHasher::~ModelHasher() {
  stop();
}

void ModelHasher::stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::optional<ModelHasher::Stamp> ModelHasher::stamp_of(const std::string& file) {
  std::error_code ec;
  const auto size = std::filesystem::file_size(file, ec);
  if (ec) return std::nullopt;
  const auto mtime = std::filesystem::last_write_time(file, ec);
  if (ec) return std::nullopt;
  return Stamp{
      size,
      static_cast<std::int64_t>(
          std::chrono::duration_cast<std::chrono::nanoseconds>(mtime.time_since_epoch()).count())};
}

std::optional<std::string> ModelHasher::known_locked(const std::string& file,
                                                     const Stamp& stamp) const {
  auto it = known_.find(file);
  if (it == known_.end() || !(it->second.stamp == stamp)) return std::nullopt;
  return it->second.sha256;
}

void ModelHasher::hash_in_background(const std::vector<std::string>& files) {
  {
    std::lock_guard lock(mu_);
    for (const auto& f : files)
      if (!f.empty() && std::find(queue_.begin(), queue_.end(), f) == queue_.end())
        queue_.push_back(f);
  }
  cv_.notify_all();
}

std::optional<std::string> ModelHasher::peek(const std::string& file) const {
  const auto stamp = stamp_of(file);  // a stat, outside the lock
  if (!stamp) return std::nullopt;
  std::lock_guard lock(mu_);
  auto hash = known_locked(file, *stamp);
  if (!hash || hash->empty()) return std::nullopt;
  return hash;
}

std::string ModelHasher::wait(const std::string& file) {
  if (file.empty()) return {};
  const auto stamp = stamp_of(file);
  if (!stamp) return {};
  std::unique_lock lock(mu_);
  if (auto hash = known_locked(file, *stamp)) return *hash;
  queue_.erase(std::remove(queue_.begin(), queue_.end(), file), queue_.end());
  queue_.push_front(file);
  cv_.notify_all();
  cv_.wait(lock, [&] { return stopping_ || known_locked(file, *stamp).has_value(); });
  if (auto hash = known_locked(file, *stamp)) return *hash;
  return {};
}

void ModelHasher::run() {
  for (;;) {
    std::string file;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (stopping_) return;
      file = queue_.front();
      queue_.pop_front();
    }
    const auto stamp = stamp_of(file);
    if (!stamp) {
      spdlog::warn("model hash: {} is not readable", file);
      continue;
    }
    {
      std::lock_guard lock(mu_);
      if (known_locked(file, *stamp)) continue;
    }
    std::string hash;
    try {
      spdlog::info("model hash: computing the sha256 of {} ({} MB)", file, stamp->size >> 20);
      hash = sha256_file(file);
    } catch (const std::exception& e) {
      spdlog::warn("model hash: {}", e.what());
    }
    {
      std::lock_guard lock(mu_);
      known_[file] = {*stamp, hash};
    }
    cv_.notify_all();
    if (!hash.empty()) save_cache();
  }
}

void ModelHasher::load_cache() {
  if (cache_file_.empty()) return;
  std::ifstream in(cache_file_);
  if (!in) return;
  try {
    const auto j = nlohmann::json::parse(in);
    for (const auto& [path, entry] : j.at("files").items())
      known_[path] = {
          {entry.at("size").get<std::uintmax_t>(), entry.at("mtime_ns").get<std::int64_t>()},
          entry.at("sha256").get<std::string>()};
  } catch (const std::exception& e) {
    spdlog::warn("model hash cache {} is unreadable ({}); hashing again", cache_file_.string(),
                 e.what());
    known_.clear();
  }
}

void ModelHasher::save_cache() {
  if (cache_file_.empty()) return;
  nlohmann::json files = nlohmann::json::object();
  {
    std::lock_guard lock(mu_);
    for (const auto& [path, k] : known_)
      if (!k.sha256.empty())
        files[path] = {
            {"size", k.stamp.size}, {"mtime_ns", k.stamp.mtime_ns}, {"sha256", k.sha256}};
  }
  try {
    write_file_atomically(cache_file_, nlohmann::json{{"version", 1}, {"files", files}}.dump(1));
  } catch (const std::exception& e) {
    spdlog::warn("model hash cache: {}", e.what());
  }
}

}  // namespace diffusiond
