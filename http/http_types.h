// Beast message types shared by the HTTP layer, and small builders for JSON/text answers.
// Pure functions; any thread.
#pragma once

#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <variant>

#include "daemon/api/errors.h"

namespace diffusiond::http_api {

namespace http = boost::beast::http;

using Request = http::request<http::string_body>;
using StringResponse = http::response<http::string_body>;
using FileResponse = http::response<http::file_body>;
// What a handler answers: a text/JSON body in memory, or a file streamed from disk.
using Response = std::variant<StringResponse, FileResponse>;

// 200-style JSON answer (pretty-printing off; UTF-8).
StringResponse json_response(http::status status, const nlohmann::json& body);
// {"error":{"code":...,"message":...[,"field":...]}} with the given status; "field" names the
// request field at fault when there is one.
StringResponse error_response(http::status status, std::string_view code, std::string_view message,
                              std::string_view field = {});
// The one mapping of the core's error codes onto HTTP statuses.
http::status http_status_of(ErrorCode code);
// A ServiceError as the API answers it: its status, reason as "code", field, Retry-After.
StringResponse error_response(const ServiceError& error);
StringResponse text_response(http::status status, std::string body, std::string_view content_type);

unsigned status_code(const Response& r);
// The request's path for a log line: without the query (it may hold ?api_key=), at most 200
// characters (a long path must not flood the log).
std::string loggable_target(const Request& req);
// Sets Server, Content-Length and keep-alive from the request; empties the body for HEAD.
void finalize(Response& r, const Request& req);

}  // namespace diffusiond::http_api
