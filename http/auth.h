// Bearer API keys, checked by route_request (http/router.h). Pure functions; any thread.
//
// When keys are configured, a request is authorised by "Authorization: Bearer <key>", or (for
// GET/HEAD only, because browsers cannot add headers to <img src> or EventSource) by an
// "api_key=<key>" query parameter. Keys are compared in constant time.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace diffusiond::http_api {

// Compares a and b in time that depends only on their lengths' maximum, not on where they differ.
bool constant_time_equal(std::string_view a, std::string_view b);

// The token of an "Authorization: Bearer <token>" header value (scheme case-insensitive);
// empty if the header is not a bearer one.
std::string_view bearer_token(std::string_view authorization_header);

// True if `token` matches any key (every key is compared, whatever matched).
// The password of an "Authorization: Basic base64(user:password)" header value (A1111's
// --api-auth clients send the API key that way; the user name is ignored); empty if the header
// is not a well-formed basic one.
std::string basic_password(std::string_view header_value);

bool key_matches(std::string_view token, const std::vector<std::string>& keys);

// A stable, non-secret name for a key: "key-" + the first 16 hex digits of its SHA-256. It
// identifies the caller in the store (job ownership, idempotency keys) without keeping the key.
std::string key_identity(std::string_view key);

// SHA-256 of the bytes, 64 lowercase hex digits (OpenSSL's libcrypto).
std::string sha256_hex(std::string_view bytes);

}  // namespace diffusiond::http_api
