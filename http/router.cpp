#include "http/router.h"

#include <spdlog/spdlog.h>

#include <cctype>
#include <charconv>
#include <vector>

#include "daemon/api/job_id.h"
#include "http/auth.h"
#include "http/browser_guard.h"
#include "http/handlers.h"

namespace diffusiond::http_api {
namespace {

struct Route {
  Handler get = nullptr;  // also answers HEAD
  Handler post = nullptr;
  Handler del = nullptr;
  bool needs_key = true;
};

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool percent_decode(std::string_view in, std::string& out, bool plus_is_space) {
  out.clear();
  for (std::size_t i = 0; i < in.size(); ++i) {
    if (in[i] == '%') {
      if (i + 2 >= in.size()) return false;
      const int hi = hex_value(in[i + 1]), lo = hex_value(in[i + 2]);
      if (hi < 0 || lo < 0) return false;
      out += static_cast<char>(hi * 16 + lo);
      i += 2;
    } else if (plus_is_space && in[i] == '+') {
      out += ' ';
    } else {
      out += in[i];
    }
  }
  return true;
}

std::vector<std::string_view> split_path(std::string_view path) {
  std::vector<std::string_view> parts;
  std::size_t i = 1;  // path starts with '/'
  while (i <= path.size()) {
    const std::size_t j = std::min(path.find('/', i), path.size());
    if (j > i) parts.push_back(path.substr(i, j - i));
    i = j + 1;
  }
  return parts;
}

// A path segment that can name a resource: URL-safe characters only (the routing rule; whether
// it names a job is daemon/api/job_id.h's is_valid_job_id, checked in route_request).
bool plain_segment(std::string_view id) {
  if (id.empty() || id.size() > 128) return false;
  for (char c : id) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')) {
      return false;
    }
  }
  return true;
}

bool parse_image_name(std::string_view name, int& k, ImageFormat& format) {
  const auto dot = name.rfind('.');
  if (dot == std::string_view::npos) return false;
  const auto named = image_format_named(name.substr(dot + 1));
  if (!named) return false;
  format = *named;
  name = name.substr(0, dot);
  if (name.empty() || name.size() > 6) return false;
  auto [end, ec] = std::from_chars(name.data(), name.data() + name.size(), k);
  return ec == std::errc() && end == name.data() + name.size() && k >= 0;
}

// Finds the route for a path; nullopt = 404. Fills the path parameters.
std::optional<Route> match(RouteParams& p) {
  const auto parts = split_path(p.path);
  if (p.path == "/" || (parts.size() == 1 && is_asset_path(p.path))) {
    return Route{handle_asset, nullptr, nullptr, false};
  }
  if (parts.size() == 1) {
    const std::string_view s = parts[0];
    if (s == "generate") return Route{nullptr, handle_generate, nullptr};
    if (s == "jobs") return Route{handle_list_jobs};
    if (s == "healthz") return Route{handle_healthz, nullptr, nullptr, false};
    if (s == "readyz") return Route{handle_readyz};
    if (s == "metrics") return Route{handle_metrics};
    if (s == "devices") return Route{handle_devices};
    if (s == "model") return Route{handle_model};
    if (s == "models") return Route{handle_models};
    if (s == "schedulers") return Route{handle_schedulers};
    if (s == "loras") return Route{handle_loras};
  }
  if (parts.size() == 3 && parts[0] == "sdapi" && parts[1] == "v1") {
    Route r;
    if (a1111_route(parts[2], r.get, r.post)) return r;
    return std::nullopt;
  }
  if (!parts.empty() && parts[0] == "v1") {
    if (parts.size() == 3 && parts[1] == "images" && parts[2] == "generations")
      return Route{nullptr, handle_openai_generations};
    if (parts.size() == 2 && parts[1] == "models") return Route{handle_openai_models};
    if (parts.size() >= 3 && parts[1] == "models") {
      p.model_id = p.path.substr(std::string_view("/v1/models/").size());
      return Route{handle_openai_model};
    }
    return std::nullopt;
  }
  if (is_asset_path(p.path)) return Route{handle_asset, nullptr, nullptr, false};
  if (parts.size() < 2 || parts[0] != "jobs" || !plain_segment(parts[1])) return std::nullopt;
  p.job_id = std::string(parts[1]);
  if (parts.size() == 2) return Route{handle_get_job, nullptr, handle_cancel_job};
  if (parts.size() == 3 && parts[2] == "events") return Route{handle_job_events};
  if (parts.size() == 4 && parts[2] == "images" &&
      parse_image_name(parts[3], p.image, p.image_format)) {
    return Route{handle_job_image};
  }
  return std::nullopt;
}

std::string allow_header(const Route& r) {
  std::string allow;
  auto add = [&](const char* m) { allow += (allow.empty() ? "" : ", ") + std::string(m); };
  if (r.get) add("GET"), add("HEAD");
  if (r.post) add("POST");
  if (r.del) add("DELETE");
  return allow;
}

// True when the request may use the route; fills p.client and p.may_prioritise from its key.
bool authorise(const ServerContext& c, const Request& req, RouteParams& p) {
  const auto& keys = c.options.api_keys;
  if (keys.empty()) return true;
  std::string_view token = bearer_token(req[http::field::authorization]);
  const std::string basic = basic_password(req[http::field::authorization]);
  if (!key_matches(token, keys) && key_matches(basic, keys)) token = basic;
  if (!key_matches(token, keys)) {
    const bool safe_method = req.method() == http::verb::get || req.method() == http::verb::head;
    auto it = p.query.find("api_key");
    if (!safe_method || it == p.query.end() || !key_matches(it->second, keys)) return false;
    token = it->second;
  }
  p.client = key_identity(token);
  p.may_prioritise = key_matches(token, c.options.priority_api_keys);
  return true;
}

}  // namespace

bool parse_target(std::string_view target, std::string& path,
                  std::map<std::string, std::string>& query) {
  if (target.empty() || target.front() != '/') return false;
  const std::size_t q = target.find('?');
  if (!percent_decode(target.substr(0, q), path, false)) return false;
  if (path.find('\0') != std::string::npos) return false;
  if (q == std::string_view::npos) return true;
  std::string_view rest = target.substr(q + 1);
  while (!rest.empty()) {
    const std::size_t amp = rest.find('&');
    const std::string_view pair = rest.substr(0, amp);
    const std::size_t eq = pair.find('=');
    std::string key, value;
    if (!percent_decode(pair.substr(0, eq), key, true)) return false;
    if (eq != std::string_view::npos && !percent_decode(pair.substr(eq + 1), value, true)) {
      return false;
    }
    if (!key.empty()) query[key] = value;
    if (amp == std::string_view::npos) break;
    rest.remove_prefix(amp + 1);
  }
  return true;
}

Response response_for_exception(std::exception_ptr error) {
  try {
    std::rethrow_exception(error);
  } catch (const ServiceError& e) {
    return error_response(e);
  } catch (const std::exception& e) {
    spdlog::error("http: handler failed: {}", e.what());
    return error_response(http::status::internal_server_error, "internal_error", e.what());
  } catch (...) {
    spdlog::error("http: handler failed with an unknown exception");
    return error_response(http::status::internal_server_error, "internal_error",
                          "unknown internal error");
  }
}

bool is_health_probe(const Request& req) {
  if (req.method() != http::verb::get && req.method() != http::verb::head) return false;
  const std::string_view target = req.target();
  const std::string_view path = target.substr(0, target.find('?'));
  return path == "/healthz" || path == "/readyz";
}

namespace {

// /v1 answers errors in OpenAI's shape; every other path in the native one.
class DialectExchange final : public Exchange {
 public:
  DialectExchange(Exchange& inner, bool openai) : inner_(inner), openai_(openai) {}
  const Request& request() const override { return inner_.request(); }
  void respond(Response response) override {
    inner_.respond(openai_ ? openai_error_shape(std::move(response)) : std::move(response));
  }
  void keep(std::unique_ptr<Subscription> s) override { inner_.keep(std::move(s)); }
  Poster poster() override { return inner_.poster(); }
  void start_event_stream() override { inner_.start_event_stream(); }
  void send_event_data(std::string text) override { inner_.send_event_data(std::move(text)); }
  void end_event_stream() override { inner_.end_event_stream(); }

 private:
  Exchange& inner_;
  const bool openai_;
};

}  // namespace

void route_request(ServerContext& c, Exchange& session_exchange) {
  const std::string_view target = session_exchange.request().target();
  DialectExchange ex(session_exchange, target == "/v1" || target.rfind("/v1/", 0) == 0 ||
                                           target.rfind("/v1?", 0) == 0);
  const Request& req = ex.request();
  if (auto refusal = refuse_from_browser(req, c.options)) {
    ex.respond(std::move(*refusal));
    return;
  }
  RouteParams p;
  if (!parse_target(req.target(), p.path, p.query)) {
    ex.respond(error_response(http::status::bad_request, "bad_target",
                              "the request target is not a valid path"));
    return;
  }
  const std::optional<Route> route = match(p);
  if (!route) {
    ex.respond(error_response(http::status::not_found, "not_found",
                              "no such resource: " + p.path.substr(0, 200)));
    return;
  }
  if (!authorise(c, req, p) && route->needs_key) {
    auto res = error_response(http::status::unauthorized, "unauthorized",
                              "a valid API key is required: send 'Authorization: Bearer <key>'");
    res.set(http::field::www_authenticate, p.path.rfind("/sdapi/", 0) == 0
                                               ? "Basic realm=\"diffusiond\""
                                               : "Bearer realm=\"diffusiond\"");
    ex.respond(std::move(res));
    return;
  }
  Handler h = nullptr;
  switch (req.method()) {
    case http::verb::get:
    case http::verb::head:
      h = route->get;
      break;
    case http::verb::post:
      h = route->post;
      break;
    case http::verb::delete_:
      h = route->del;
      break;
    default:
      break;
  }
  if (h == nullptr) {
    auto res = error_response(http::status::method_not_allowed, "method_not_allowed",
                              "method " + std::string(req.method_string()) + " is not allowed on " +
                                  p.path.substr(0, 200) + "; allowed: " + allow_header(*route));
    res.set(http::field::allow, allow_header(*route));
    ex.respond(std::move(res));
    return;
  }
  if (!p.job_id.empty() && !is_valid_job_id(p.job_id)) {  // no such job can exist
    ex.respond(
        error_response(http::status::not_found, "job_not_found", "no job '" + p.job_id + "'"));
    return;
  }
  try {
    h(c, ex, p);
  } catch (...) {
    ex.respond(response_for_exception(std::current_exception()));
  }
}

}  // namespace diffusiond::http_api
