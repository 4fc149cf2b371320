#include "http/http_types.h"

namespace diffusiond::http_api {

StringResponse json_response(http::status status, const nlohmann::json& body) {
  StringResponse res{status, 11};
  res.set(http::field::content_type, "application/json");
  res.set(http::field::cache_control, "no-store");
  // 'replace' keeps a response valid JSON even if some string were not UTF-8.
  res.body() = body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  res.body() += '\n';
  return res;
}

StringResponse error_response(http::status status, std::string_view code, std::string_view message,
                              std::string_view field) {
  nlohmann::json error = {{"code", code}, {"message", message}};
  if (!field.empty()) error["field"] = field;
  return json_response(status, {{"error", std::move(error)}});
}

http::status http_status_of(ErrorCode code) {
  switch (code) {
    case ErrorCode::invalid_request:
      return http::status::bad_request;
    case ErrorCode::not_found:
      return http::status::not_found;
    case ErrorCode::conflict:
      return http::status::conflict;
    case ErrorCode::queue_full:
      return http::status::too_many_requests;
    case ErrorCode::forbidden:
      return http::status::forbidden;
    case ErrorCode::unavailable:
      return http::status::service_unavailable;
    case ErrorCode::storage_full:  // RFC 4918 §11.5: the server cannot store what is needed
      return http::status::insufficient_storage;
    case ErrorCode::internal:
      return http::status::internal_server_error;
  }
  return http::status::internal_server_error;
}

StringResponse error_response(const ServiceError& e) {
  auto res = error_response(http_status_of(e.code()), e.reason(), e.what(), e.field());
  if (e.retry_after_s() > 0) res.set(http::field::retry_after, std::to_string(e.retry_after_s()));
  return res;
}

StringResponse text_response(http::status status, std::string body, std::string_view content_type) {
  StringResponse res{status, 11};
  res.set(http::field::content_type, content_type);
  res.body() = std::move(body);
  return res;
}

std::string loggable_target(const Request& req) {
  std::string_view target = req.target();
  target = target.substr(0, target.find('?'));
  constexpr std::size_t kMax = 200;
  if (target.size() <= kMax) return std::string(target);
  return std::string(target.substr(0, kMax)) + "... (" + std::to_string(target.size()) + " bytes)";
}

unsigned status_code(const Response& r) {
  return std::visit([](const auto& m) { return m.result_int(); }, r);
}

void finalize(Response& r, const Request& req) {
  const bool head = req.method() == http::verb::head;
  if (head && std::holds_alternative<FileResponse>(r)) {
    // A HEAD answer needs only the headers; drop the open file.
    auto& file = std::get<FileResponse>(r);
    StringResponse headers{file.result(), file.version(), std::string{}};
    for (const auto& field : file.base()) headers.set(field.name_string(), field.value());
    headers.content_length(file.body().size());
    r = std::move(headers);
  }
  std::visit(
      [&](auto& m) {
        m.version(req.version());
        m.set(http::field::server, "diffusiond/" DIFFUSIOND_VERSION);
        m.keep_alive(m.keep_alive() && req.keep_alive());
        if (head) {
          if constexpr (std::is_same_v<std::decay_t<decltype(m)>, StringResponse>) {
            if (!m.has_content_length()) m.content_length(m.body().size());
            m.body().clear();
          }
        } else {
          m.prepare_payload();
        }
      },
      r);
}

}  // namespace diffusiond::http_api
