#include "http/browser_guard.h"

#include <algorithm>
#include <boost/asio/ip/address.hpp>
#include <cctype>

namespace diffusiond::http_api {
namespace {

std::string lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// "name", "name:port", "[v6]", "[v6]:port" -> the host part, lower-case, without brackets.
std::string host_part(std::string_view host) {
  host = trim(host);
  if (!host.empty() && host.front() == '[') {
    const auto close = host.find(']');
    return lower(host.substr(1, close == std::string_view::npos ? host.size() : close - 1));
  }
  return lower(host.substr(0, host.rfind(':')));
}

bool is_ip_literal(const std::string& host) {
  boost::system::error_code ec;
  boost::asio::ip::make_address(host, ec);
  return !ec;
}

bool listed(const std::vector<std::string>& list, const std::string& value) {
  return std::any_of(list.begin(), list.end(), [&](const std::string& entry) {
    return entry == "*" || lower(entry) == value;
  });
}

std::string_view media_type(std::string_view content_type) {
  return trim(content_type.substr(0, content_type.find(';')));
}

}  // namespace

bool host_allowed(std::string_view host_header, const HttpOptions& options) {
  if (trim(host_header).empty()) return true;  // HTTP/1.0 without Host: no browser sends that
  const std::string host = host_part(host_header);
  if (host == "localhost" || (host.size() > 10 && host.ends_with(".localhost"))) return true;
  if (is_ip_literal(host)) return true;
  if (host == lower(options.host)) return true;
  return listed(options.allowed_hosts, host);
}

bool origin_allowed(std::string_view origin, std::string_view host_header,
                    const HttpOptions& options) {
  const std::string o = lower(trim(origin));
  if (o == "http://" + lower(trim(host_header))) return true;  // the daemon's own UI
  return o != "null" && listed(options.allowed_origins, o);
}

std::optional<StringResponse> refuse_from_browser(const Request& req, const HttpOptions& options) {
  const std::string_view host = req[http::field::host];
  if (!host_allowed(host, options))
    return error_response(http::status::forbidden, "host_not_allowed",
                          "Host '" + std::string(host.substr(0, 100)) +
                              "' is not one this server answers to (DNS rebinding guard); "
                              "add it with --allowed-hosts");
  const bool changes_state = req.method() != http::verb::get && req.method() != http::verb::head &&
                             req.method() != http::verb::options;
  if (!changes_state) return std::nullopt;
  const std::string_view origin = req[http::field::origin];
  const bool from_browser = !origin.empty() || req.count("Sec-Fetch-Mode") > 0;
  if (!origin.empty() && !origin_allowed(origin, host, options))
    return error_response(http::status::forbidden, "origin_not_allowed",
                          "requests from origin '" + std::string(origin.substr(0, 100)) +
                              "' may not change anything here (cross-site request guard); "
                              "add it with --allowed-origins");
  if (from_browser && !req.body().empty() &&
      lower(media_type(req[http::field::content_type])) != "application/json")
    return error_response(http::status::unsupported_media_type, "unsupported_media_type",
                          "a browser's request body must be sent as 'Content-Type: "
                          "application/json'");
  return std::nullopt;
}

}  // namespace diffusiond::http_api
