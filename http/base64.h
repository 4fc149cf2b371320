// Base64 (RFC 4648, standard alphabet, padded) for the A1111 and OpenAI dialects, which carry
// images as base64 strings. OpenSSL's EVP coder. Pure functions; any thread.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace diffusiond::http_api {

std::string base64_encode(std::string_view bytes);
// Decodes padded or unpadded base64 (whitespace ignored); nullopt when it is not base64.
std::optional<std::string> base64_decode(std::string_view text);

}  // namespace diffusiond::http_api
