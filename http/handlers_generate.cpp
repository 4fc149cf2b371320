// POST /generate: validate, submit, then answer 202 + job, or (?wait=1) the finished job, or
// (Accept: image/png, one image) the PNG itself.
#include "http/auth.h"
#include "http/handlers.h"
#include "http/job_waiter.h"
#include "http/json_views.h"
#include "http/request_validation.h"

namespace diffusiond::http_api {
namespace {

bool wants_png(const Request& req) {
  const std::string_view accept = req[http::field::accept];
  return accept.find("image/png") != std::string_view::npos;
}

bool truthy(const std::map<std::string, std::string>& query, const char* key) {
  auto it = query.find(key);
  return it != query.end() &&
         (it->second.empty() || it->second == "1" || it->second == "true" || it->second == "yes");
}

// The Idempotency-Key header (draft-ietf-httpapi-idempotency-key-header): 1..255 printable
// ASCII characters, optionally as a quoted structured-field string. "" when absent; nullopt
// when malformed.
std::optional<std::string> idempotency_key(const Request& req) {
  auto it = req.find("Idempotency-Key");
  if (it == req.end()) return std::string();
  std::string_view v = it->value();
  if (v.size() >= 2 && v.front() == '"' && v.back() == '"') v = v.substr(1, v.size() - 2);
  if (v.empty() || v.size() > 255) return std::nullopt;
  for (char ch : v)
    if (ch < 0x20 || ch > 0x7e || ch == '"' || ch == '\\') return std::nullopt;
  return std::string(v);
}

Response finished_json(const JobView& view) {
  return json_response(http::status::ok, job_json(view));
}

Response finished_png(ServerContext& c, const JobView& view) {
  if (view.status == JobStatus::done) return image_file_response(c, "", view.id, 0);
  if (view.status == JobStatus::cancelled) {
    return error_response(http::status::conflict, "job_cancelled",
                          "job '" + view.id + "' was cancelled before its image was made");
  }
  return error_response(http::status::internal_server_error, "generation_failed",
                        "job '" + view.id + "' failed: " + view.error);
}

}  // namespace

void handle_generate(ServerContext& c, Exchange& ex, const RouteParams& p) {
  const Request& req = ex.request();
  auto parsed = parse_generate_request(req.body());
  if (auto* err = std::get_if<ValidationError>(&parsed)) {
    ex.respond(error_response(static_cast<http::status>(err->http_status), err->code, err->message,
                              err->field));
    return;
  }
  const GenerateRequest& request = std::get<GenerateRequest>(parsed);
  const bool png = wants_png(req);
  // n < 1 is the core's to refuse (400), not a reason for 406.
  const std::int64_t images = static_cast<std::int64_t>(request.prompts.size()) * request.n;
  if (png && images != 1 && request.n >= 1) {
    ex.respond(error_response(
        http::status::not_acceptable, "not_acceptable",
        "'Accept: image/png' needs a request for exactly one image, this one makes " +
            std::to_string(images) + "; ask for application/json instead"));
    return;
  }
  const auto key = idempotency_key(req);
  if (!key) {
    ex.respond(error_response(http::status::bad_request, "invalid_idempotency_key",
                              "header 'Idempotency-Key' must be 1 to 255 printable ASCII "
                              "characters (optionally in double quotes)",
                              "Idempotency-Key"));
    return;
  }
  SubmitContext context;
  context.client = p.client;
  context.may_prioritise = p.may_prioritise;
  context.idempotency_key = *key;
  if (!key->empty()) context.fingerprint = sha256_hex(req.body());  // "the same body"
  const Submission submitted = c.service.submit(request, context);
  const JobView& job = submitted.job;
  if (png) {
    answer_when_finished(c, ex, job.id,
                         [&c](const JobView& view) { return finished_png(c, view); });
    return;
  }
  if (truthy(p.query, "wait")) {
    answer_when_finished(c, ex, job.id, finished_json);
    return;
  }
  auto res = json_response(http::status::accepted, job_json(job));
  res.set(http::field::location, job_url(job.id));
  if (submitted.replayed) res.set("Idempotent-Replayed", "true");
  ex.respond(std::move(res));
}

}  // namespace diffusiond::http_api
