// What keeps web pages from driving the daemon: the Host header (DNS rebinding), the Origin of
// state-changing requests (CSRF) and the media type of a browser's body. Policy (http/README.md
// "Browsers"): accepted Host values are loopback names (localhost, *.localhost), IP literals
// (a rebinding page always uses a name), the listen address and HttpOptions::allowed_hosts;
// a POST or DELETE that carries an Origin must come from the daemon's own origin (the UI) or
// one of HttpOptions::allowed_origins; a browser's body must be application/json.
// Pure functions; any thread.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "http/http_types.h"
#include "http/server.h"

namespace diffusiond::http_api {

bool host_allowed(std::string_view host_header, const HttpOptions& options);
bool origin_allowed(std::string_view origin, std::string_view host_header,
                    const HttpOptions& options);

// The answer that refuses the request, or nullopt when it may go on.
std::optional<StringResponse> refuse_from_browser(const Request& request,
                                                  const HttpOptions& options);

}  // namespace diffusiond::http_api
