#include "daemon/lora_catalog.h"

#include <openssl/evp.h>
#include <sys/stat.h>

#include <algorithm>
#include <fstream>
#include <memory>
#include <stdexcept>

#include <nlohmann/json.hpp>

namespace diffusiond {
namespace {

constexpr const char* kSuffix = ".safetensors";

struct Digest {
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx{EVP_MD_CTX_new(), EVP_MD_CTX_free};
  Digest() {
    if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1)
      throw std::runtime_error("SHA-256: cannot initialise OpenSSL's digest");
  }
  void update(const char* data, std::size_t n) { EVP_DigestUpdate(ctx.get(), data, n); }
  std::string hex() {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_DigestFinal_ex(ctx.get(), md, &len);
    static const char* digits = "0123456789abcdef";
    std::string out;
    for (unsigned int i = 0; i < len; ++i) {
      out += digits[md[i] >> 4];
      out += digits[md[i] & 15];
    }
    return out;
  }
};

bool stat_file(const std::filesystem::path& p, struct stat& st) {
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

}  // namespace

LoraHashes hash_lora_file(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw std::runtime_error(file.string() + ": cannot open the LoRA file");
  Digest whole, data;
  std::vector<char> buffer(1 << 20);
  // The safetensors header: 8 bytes little-endian length, then that much JSON.
  std::uint64_t header_len = 0;
  std::string header;
  char len_bytes[8];
  if (in.read(len_bytes, 8)) {
    whole.update(len_bytes, 8);
    for (int i = 7; i >= 0; --i)
      header_len = (header_len << 8) | static_cast<unsigned char>(len_bytes[i]);
  }
  std::uint64_t left = header_len;
  while (in && left > 0) {
    in.read(buffer.data(),
            static_cast<std::streamsize>(std::min<std::uint64_t>(left, buffer.size())));
    const auto n = static_cast<std::size_t>(in.gcount());
    whole.update(buffer.data(), n);
    if (header.size() < (64u << 20)) header.append(buffer.data(), n);
    left -= n;
    if (n == 0) break;
  }
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    const auto n = static_cast<std::size_t>(in.gcount());
    whole.update(buffer.data(), n);
    data.update(buffer.data(), n);
  }
  if (in.bad()) throw std::runtime_error(file.string() + ": read error while hashing");
  LoraHashes h;
  h.sha256 = whole.hex();
  std::string addnet = data.hex();
  // kohya sd-scripts stores the same hash as metadata; A1111 prefers it when present.
  const auto json = nlohmann::json::parse(header, nullptr, /*allow_exceptions=*/false);
  if (json.is_object()) {
    auto meta = json.find("__metadata__");
    if (meta != json.end() && meta->is_object()) {
      auto sshs = meta->find("sshs_model_hash");
      if (sshs != meta->end() && sshs->is_string() && !sshs->get<std::string>().empty())
        addnet = sshs->get<std::string>();
    }
  }
  h.short_hash = addnet.substr(0, 12);
  return h;
}

std::optional<std::filesystem::path> LoraCatalog::find(const std::string& name) const {
  if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos ||
      name.find('\\') != std::string::npos || name.find('\0') != std::string::npos)
    return std::nullopt;
  const std::filesystem::path p = dir_ / (name + kSuffix);
  struct stat st {};
  if (!stat_file(p, st)) return std::nullopt;
  return p;
}

std::vector<std::string> LoraCatalog::names() const {
  std::vector<std::string> out;
  std::error_code ec;
  for (std::filesystem::directory_iterator it(dir_, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string file = it->path().filename().string();
    if (file.size() <= std::string(kSuffix).size() ||
        file.compare(file.size() - std::string(kSuffix).size(), std::string::npos, kSuffix) != 0)
      continue;
    const std::string name = file.substr(0, file.size() - std::string(kSuffix).size());
    if (find(name)) out.push_back(name);
  }
  std::sort(out.begin(), out.end());
  return out;
}

LoraHashes LoraCatalog::hash(const std::filesystem::path& file) const {
  struct stat st {};
  if (!stat_file(file, st)) throw std::runtime_error(file.string() + ": no such LoRA file");
  const std::int64_t mtime = std::int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  const std::string key = file.string();
  {
    std::lock_guard lock(mu_);
    auto it = cache_.find(key);
    if (it != cache_.end() && it->second.size == st.st_size && it->second.mtime_ns == mtime)
      return it->second.hashes;
  }
  LoraHashes h = hash_lora_file(file);  // outside the mutex
  std::lock_guard lock(mu_);
  cache_[key] = {static_cast<std::int64_t>(st.st_size), mtime, h};
  return h;
}

std::vector<LoraView> LoraCatalog::list() const {
  std::vector<LoraView> out;
  for (const std::string& name : names()) {
    const auto path = find(name);
    if (!path) continue;  // removed meanwhile
    LoraView v;
    v.name = name;
    v.path = path->string();
    std::error_code ec;
    v.size_bytes = static_cast<std::int64_t>(std::filesystem::file_size(*path, ec));
    try {
      const LoraHashes h = hash(*path);
      v.sha256 = h.sha256;
      v.short_hash = h.short_hash;
    } catch (const std::exception&) {
      continue;  // unreadable: not offered
    }
    out.push_back(std::move(v));
  }
  return out;
}

}  // namespace diffusiond
