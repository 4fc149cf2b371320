#include "http/auth.h"

#include "http/base64.h"

#include <algorithm>
#include <cctype>
#include <stdexcept>

#include <openssl/evp.h>

namespace diffusiond::http_api {

bool constant_time_equal(std::string_view a, std::string_view b) {
  const std::size_t n = std::max(a.size(), b.size());
  volatile unsigned char diff = static_cast<unsigned char>(a.size() != b.size());
  for (std::size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff = diff | static_cast<unsigned char>(x ^ y);
  }
  return diff == 0;
}

std::string_view bearer_token(std::string_view h) {
  constexpr std::string_view scheme = "bearer";
  while (!h.empty() && (h.front() == ' ' || h.front() == '\t')) h.remove_prefix(1);
  if (h.size() <= scheme.size()) return {};
  for (std::size_t i = 0; i < scheme.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(h[i])) != scheme[i]) return {};
  }
  if (h[scheme.size()] != ' ' && h[scheme.size()] != '\t') return {};
  h.remove_prefix(scheme.size());
  while (!h.empty() && (h.front() == ' ' || h.front() == '\t')) h.remove_prefix(1);
  while (!h.empty() && (h.back() == ' ' || h.back() == '\t')) h.remove_suffix(1);
  return h;
}

std::string basic_password(std::string_view h) {
  constexpr std::string_view scheme = "basic";
  while (!h.empty() && (h.front() == ' ' || h.front() == '\t')) h.remove_prefix(1);
  if (h.size() <= scheme.size()) return {};
  for (std::size_t i = 0; i < scheme.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(h[i])) != scheme[i]) return {};
  if (h[scheme.size()] != ' ' && h[scheme.size()] != '\t') return {};
  h.remove_prefix(scheme.size());
  const auto decoded = base64_decode(h);
  if (!decoded) return {};
  const auto colon = decoded->find(':');
  return colon == std::string::npos ? std::string() : decoded->substr(colon + 1);
}

bool key_matches(std::string_view token, const std::vector<std::string>& keys) {
  if (token.empty()) return false;
  bool any = false;
  for (const std::string& key : keys) any = constant_time_equal(token, key) || any;
  return any;
}

std::string sha256_hex(std::string_view bytes) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  if (EVP_Digest(bytes.data(), bytes.size(), digest, &size, EVP_sha256(), nullptr) != 1)
    throw std::runtime_error("SHA-256 failed (OpenSSL)");
  static constexpr char hex[] = "0123456789abcdef";
  std::string out;
  out.reserve(size * 2);
  for (unsigned int i = 0; i < size; ++i) {
    out += hex[digest[i] >> 4];
    out += hex[digest[i] & 15];
  }
  return out;
}

std::string key_identity(std::string_view key) {
  return "key-" + sha256_hex(key).substr(0, 16);
}

}  // namespace diffusiond::http_api
