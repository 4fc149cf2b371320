// Maps a request to its handler: path matching, 404/405 (with Allow), API-key check, and the
// translation of handler exceptions (ServiceError and others) into JSON errors.
// Called by Session (http/session.h) on its strand.
#pragma once

#include <map>
#include <string>
#include <string_view>

#include "http/exchange.h"

namespace diffusiond::http_api {

struct RouteParams {
  std::string path;                          // decoded path, without the query
  std::map<std::string, std::string> query;  // decoded query parameters (last one wins)
  std::string job_id;                        // /jobs/{id}...
  int image = -1;                            // /jobs/{id}/images/{k}.png (.jpg, .webp)
  ImageFormat image_format = ImageFormat::png;
  std::string model_id;  // /v1/models/{id} (may contain '/')
  // Who is asking (set by route_request from the API key): "" when no key is configured.
  std::string client;
  bool may_prioritise = false;  // the key is one of HttpOptions::priority_api_keys
};

// Splits "/a/b?x=1&y=%20" into a decoded path and query map; false if the target is malformed.
bool parse_target(std::string_view target, std::string& path,
                  std::map<std::string, std::string>& query);

void route_request(ServerContext& context, Exchange& exchange);

// GET or HEAD /healthz or /readyz (any query): answered even when the connection slots are full
// and never rate-limited (http/README.md "Connections and per-client limits").
bool is_health_probe(const Request& req);

// Answers an exception thrown by a handler (ServiceError -> its status, with Retry-After).
Response response_for_exception(std::exception_ptr error);

}  // namespace diffusiond::http_api
