#include "http/request_framing.h"

#include <algorithm>

#include <boost/asio/error.hpp>

namespace diffusiond::http_api {

namespace asio = boost::asio;
namespace beast = boost::beast;

void apply_limits(RequestParser& parser, const HttpOptions& options) {
  parser.header_limit(static_cast<std::uint32_t>(options.max_header_bytes));
  parser.body_limit(std::max(options.max_body_bytes, options.max_image_body_bytes));
}

std::size_t body_limit_for(const RequestParser::value_type& header, const HttpOptions& options) {
  std::string_view target = header.target();
  target = target.substr(0, target.find('?'));
  if (header.method() == http::verb::post && target == "/sdapi/v1/png-info")
    return options.max_image_body_bytes;
  return options.max_body_bytes;
}

std::optional<Refusal> header_read_failed(const beast::error_code& ec, const HttpOptions& options) {
  if (ec == http::error::end_of_stream || ec == beast::error::timeout ||
      ec == asio::error::operation_aborted || ec == asio::error::connection_reset ||
      ec == asio::error::eof) {
    return std::nullopt;
  }
  if (ec == http::error::body_limit) {  // Content-Length over the largest limit
    return Refusal{
        http::status::payload_too_large, "body_too_large",
        "request body exceeds " +
            std::to_string(std::max(options.max_body_bytes, options.max_image_body_bytes)) +
            " bytes"};
  }
  if (ec == http::error::header_limit) {
    return Refusal{http::status::request_header_fields_too_large, "headers_too_large",
                   "request headers exceed " + std::to_string(options.max_header_bytes) + " bytes"};
  }
  return Refusal{http::status::bad_request, "bad_request",
                 "malformed HTTP request: " + ec.message()};
}

std::optional<Refusal> check_request_header(RequestParser& parser, const HttpOptions& options) {
  if (!plain_framing(parser.get())) {
    // RFC 9112 6.1: a body this server cannot frame is refused and the connection closed;
    // reading it as bodiless would serve its bytes as a second request (smuggling).
    return Refusal{http::status::bad_request, "bad_transfer_encoding",
                   "Transfer-Encoding must be exactly 'chunked' (and without Content-Length)"};
  }
  const std::size_t limit = body_limit_for(parser.get(), options);
  if (auto length = parser.content_length(); length && *length > limit) {
    return Refusal{
        http::status::payload_too_large, "body_too_large",
        "request body is " + std::to_string(*length) + " bytes; at most " + std::to_string(limit)};
  }
  parser.body_limit(limit);  // a chunked body is held to the route's limit as it arrives
  return std::nullopt;
}

bool plain_framing(const RequestParser::value_type& header) {
  const auto encodings = header.equal_range(http::field::transfer_encoding);
  if (encodings.first == encodings.second) return true;
  if (std::next(encodings.first) != encodings.second) return false;  // several TE lines
  if (header.count(http::field::content_length) > 0) return false;
  std::string_view value = encodings.first->value();
  while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
  while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) value.remove_suffix(1);
  return beast::iequals(value, "chunked");
}

std::optional<Refusal> body_read_failed(const beast::error_code& ec, std::size_t limit) {
  if (ec == http::error::body_limit) {
    return Refusal{http::status::payload_too_large, "body_too_large",
                   "request body exceeds " + std::to_string(limit) + " bytes"};
  }
  if (ec.category() == http::make_error_code(http::error::bad_chunk).category() &&
      ec != http::error::end_of_stream && ec != http::error::partial_message) {
    return Refusal{http::status::bad_request, "bad_request",
                   "malformed request body: " + ec.message()};
  }
  return std::nullopt;
}

}  // namespace diffusiond::http_api
