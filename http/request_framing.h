// How a connection reads one request, without the socket: the parser's limits, what a failed
// header or body read means, and the framing checks on a complete header. Session
// (http/session.cpp) makes these decisions through here, and so does the HTTP fuzz target
// (fuzz/fuzz_http_request.cpp), which feeds the same Beast parser from memory.
// Pure functions; any thread.
#pragma once

#include <boost/beast/http.hpp>
#include <optional>
#include <string>

#include "http/http_types.h"
#include "http/server.h"

namespace diffusiond::http_api {

using RequestParser = http::request_parser<http::string_body>;

// A request refused while reading it: answered with this error, then the connection closes.
struct Refusal {
  http::status status;
  std::string code;
  std::string message;
};

// A fresh parser with the server's header limit and the largest body limit of any route (the
// route's own limit is set once its header is read: check_request_header).
void apply_limits(RequestParser& parser, const HttpOptions& options);

// The body limit of a request: max_image_body_bytes for POST /sdapi/v1/png-info (a whole image
// in base64), else max_body_bytes.
std::size_t body_limit_for(const RequestParser::value_type& header, const HttpOptions& options);

// A header read that failed with `ec`: nullopt when the connection just closes (the client
// left, timed out or the read was cancelled), else the refusal (413, 431 or 400).
std::optional<Refusal> header_read_failed(const boost::beast::error_code& ec,
                                          const HttpOptions& options);

// A complete header: the refusal when its body cannot be read (an unsupported
// Transfer-Encoding, a Content-Length over the route's limit), else nullopt; sets the parser's
// body limit to the route's (body_limit_for) for the body read.
std::optional<Refusal> check_request_header(RequestParser& parser, const HttpOptions& options);

// True when the body's framing is one this server reads: Content-Length, none, or
// Transfer-Encoding exactly "chunked" (RFC 9112 6.1).
bool plain_framing(const RequestParser::value_type& header);

// A body read that failed with `ec`: nullopt when the connection just closes, else the refusal
// (413 over `limit`, the request's body_limit_for; 400 bad chunk framing).
std::optional<Refusal> body_read_failed(const boost::beast::error_code& ec, std::size_t limit);

}  // namespace diffusiond::http_api
