// The OpenAI Images API under /v1 (http/README.md "OpenAI Images API"): generations (JSON when
// the job ends, or Server-Sent Events with stream: true), models, and errors in OpenAI's shape
// {"error":{"message","type","param","code"}} with the native statuses.
#include <chrono>
#include <map>
#include <set>

#include "http/base64.h"
#include "http/handlers.h"
#include "http/job_waiter.h"
#include "http/model_listing.h"
#include "http/openai_request.h"

namespace diffusiond::http_api {
namespace {

using nlohmann::json;

std::int64_t now_s() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

const char* error_type(unsigned status) {
  if (status == 401) return "authentication_error";
  if (status == 403) return "permission_error";
  if (status == 404) return "not_found_error";
  if (status == 429) return "rate_limit_error";
  if (status >= 500) return "server_error";
  return "invalid_request_error";
}

json openai_error_json(unsigned status, const std::string& code, const std::string& message,
                       const std::string& param) {
  return {{"error",
           {{"message", message},
            {"type", error_type(status)},
            {"param", param.empty() ? json(nullptr) : json(param)},
            {"code", code}}}};
}

StringResponse openai_error(http::status status, const std::string& code,
                            const std::string& message, const std::string& param = {}) {
  return json_response(status,
                       openai_error_json(static_cast<unsigned>(status), code, message, param));
}

std::string size_of(const JobRequest& r) {
  return std::to_string(r.width) + "x" + std::to_string(r.height);
}

const char* extension(ImageFormat f) {
  return f == ImageFormat::jpeg ? "jpg" : to_string(f);
}

// "http://" + Host, or --public-url.
std::string base_url(const ServerContext& c, const Request& req) {
  if (!c.options.public_url.empty()) return c.options.public_url;
  std::string host(req[http::field::host]);
  if (host.empty()) host = c.options.host + ":" + std::to_string(c.options.port);
  return "http://" + host;
}

json image_entry(ServerContext& c, const OpenAiImageRequest& asked, const std::string& base,
                 const JobView& job, int k) {
  if (asked.url) {
    std::string url =
        base + "/jobs/" + job.id + "/images/" + std::to_string(k) + "." + extension(asked.format);
    if (asked.format != ImageFormat::png) url += "?quality=" + std::to_string(asked.compression);
    return {{"url", url}};
  }
  auto encoded = c.service.encoded_image(job.id, k, asked.format, asked.compression);
  if (!encoded)
    throw ServiceError(
        ErrorCode::not_found,
        "image " + std::to_string(k) + " of job '" + job.id + "' has no file (removed?)",
        "image_not_found");
  return {{"b64_json", base64_encode(encoded->bytes)}};
}

// Why a finished job has no full answer, in OpenAI's shape; nullopt when it is done.
std::optional<StringResponse> job_error(const JobView& job) {
  if (job.status == JobStatus::done) return std::nullopt;
  if (job.status == JobStatus::cancelled)
    return openai_error(http::status::conflict, "job_cancelled",
                        "job '" + job.id + "' was cancelled before its images were made");
  return openai_error(http::status::internal_server_error, "generation_failed",
                      "job '" + job.id + "' failed: " + job.error);
}

Response answer(ServerContext& c, const OpenAiImageRequest& asked, const std::string& base,
                const JobView& job) {
  if (auto error = job_error(job)) return std::move(*error);
  try {
    json data = json::array();
    for (const auto& image : job.images)
      data.push_back(image_entry(c, asked, base, job, image.index));
    return json_response(http::status::ok, {{"created", job.created_ms / 1000},
                                            {"data", data},
                                            {"size", size_of(job.request)},
                                            {"output_format", to_string(asked.format)},
                                            {"quality", asked.quality},
                                            {"background", asked.background}});
  } catch (...) {
    return openai_error_shape(response_for_exception(std::current_exception()));
  }
}

// One SSE message in OpenAI's framing: "event: TYPE" and the JSON data line.
std::string sse(const json& data) {
  return "event: " + data.value("type", std::string("error")) + "\ndata: " + data.dump() + "\n\n";
}

struct StreamState {
  std::set<int> sent;
  std::map<int, int> partials_sent;  // image -> partial images sent
  std::string size;                  // "WxH"
  bool ended = false;
};

// partial_images N: image k's partial image j (0..N-1) goes out once it has run (j+1)/(N+1) of
// its steps, carrying the latest live preview (at most one per 250 ms is made, so a fast image
// may repeat one, and one that finishes first gets fewer).
void partial_step(ServerContext& c, Exchange& ex, const OpenAiImageRequest& asked,
                  StreamState& state, const JobEvent& e) {
  if (state.ended || e.steps <= 0 || state.sent.count(e.image)) return;
  int& sent = state.partials_sent[e.image];
  const int due = e.step * (asked.partial_images + 1) / e.steps;  // thresholds passed
  while (sent < std::min(due, asked.partial_images)) {
    const auto preview = c.service.preview(e.job_id, e.image);
    if (!preview) return;
    ex.send_event_data(sse({{"type", "image_generation.partial_image"},
                            {"b64_json", base64_encode(preview->bytes)},
                            {"background", asked.background},
                            {"created_at", now_s()},
                            {"output_format", "png"},
                            {"partial_image_index", sent},
                            {"quality", asked.quality},
                            {"size", state.size}}));
    ++sent;
  }
}

// Sends a completed event for every image newly done; ends the stream when the job is over.
void stream_step(ServerContext& c, Exchange& ex, const OpenAiImageRequest& asked,
                 StreamState& state, const std::string& job_id) {
  if (state.ended) return;
  const std::optional<JobView> job = c.service.job(job_id);
  if (!job) {
    ex.send_event_data(
        "data: " + openai_error_json(404, "job_not_found", "job disappeared", "").dump() + "\n\n");
    state.ended = true;
    ex.end_event_stream();
    return;
  }
  for (const auto& image : job->images) {
    if (image.status != ImageStatus::done || state.sent.count(image.index)) continue;
    auto encoded = c.service.encoded_image(job->id, image.index, asked.format, asked.compression);
    if (!encoded) continue;
    state.sent.insert(image.index);
    ex.send_event_data(sse({{"type", "image_generation.completed"},
                            {"b64_json", base64_encode(encoded->bytes)},
                            {"background", asked.background},
                            {"created_at", now_s()},
                            {"output_format", to_string(asked.format)},
                            {"quality", asked.quality},
                            {"size", size_of(job->request)},
                            {"usage",
                             {{"input_tokens", 0},
                              {"input_tokens_details", {{"image_tokens", 0}, {"text_tokens", 0}}},
                              {"output_tokens", 0},
                              {"total_tokens", 0}}}}));
  }
  if (!is_terminal(job->status)) return;
  if (auto error = job_error(*job))
    ex.send_event_data("data: " + error->body() + "\n\n");  // the SDK throws an APIError
  state.ended = true;
  ex.end_event_stream();
}

}  // namespace

Response openai_error_shape(Response r) {
  auto* s = std::get_if<StringResponse>(&r);
  if (!s || s->result_int() < 400) return r;
  const json body = json::parse(s->body(), nullptr, false);
  if (body.is_discarded() || !body.contains("error") || !body["error"].is_object() ||
      body["error"].contains("type"))
    return r;
  const json& e = body["error"];
  s->body() = openai_error_json(s->result_int(), e.value("code", std::string("error")),
                                e.value("message", std::string()), e.value("field", std::string()))
                  .dump();
  s->prepare_payload();
  return r;
}

void handle_openai_generations(ServerContext& c, Exchange& ex, const RouteParams& p) {
  const json body = json::parse(ex.request().body(), nullptr, false);
  if (body.is_discarded())
    throw ServiceError(ErrorCode::invalid_request,
                       "We could not parse the JSON body of your request.", "invalid_json");
  auto asked = std::make_shared<OpenAiImageRequest>(
      parse_openai_image_request(body, c.service.model_info()));
  if (asked->request.model)
    if (auto name = resolve_listed_model(c.service, *asked->request.model))
      asked->request.model = *name;
  SubmitContext context;
  context.client = p.client;
  context.may_prioritise = p.may_prioritise;
  context.previews = asked->stream && asked->partial_images > 0;
  const Submission submitted = c.service.submit(asked->request, context);
  const std::string id = submitted.job.id;
  const std::string base = base_url(c, ex.request());
  if (!asked->stream) {
    answer_when_finished(
        c, ex, id, [&c, asked, base](const JobView& job) { return answer(c, *asked, base, job); });
    return;
  }
  auto state = std::make_shared<StreamState>();
  state->size = size_of(submitted.job.request);
  Exchange::Poster post = ex.poster();
  ServerContext* context_ptr = &c;
  ex.keep(c.service.subscribe(id, [post, state, asked, context_ptr, id](const JobEvent& e) {
    if (e.kind == JobEvent::Kind::progress && asked->partial_images > 0) {
      post([state, asked, context_ptr, e](Exchange& ex2) {
        partial_step(*context_ptr, ex2, *asked, *state, e);
      });
      return;
    }
    if (e.kind == JobEvent::Kind::progress || e.kind == JobEvent::Kind::started ||
        e.kind == JobEvent::Kind::queued)
      return;
    post([state, asked, context_ptr, id](Exchange& ex2) {
      stream_step(*context_ptr, ex2, *asked, *state, id);
    });
  }));
  ex.start_event_stream();
  stream_step(c, ex, *asked, *state, id);
}

void handle_openai_models(ServerContext& c, Exchange& ex, const RouteParams&) {
  json data = json::array();
  for (const auto& m : listed_models(c.service))
    data.push_back(
        {{"id", m.name}, {"object", "model"}, {"created", 0}, {"owned_by", "diffusiond"}});
  ex.respond(json_response(http::status::ok, {{"object", "list"}, {"data", data}}));
}

void handle_openai_model(ServerContext& c, Exchange& ex, const RouteParams& p) {
  for (const auto& m : listed_models(c.service)) {
    if (m.name == p.model_id) {
      ex.respond(json_response(
          http::status::ok,
          {{"id", m.name}, {"object", "model"}, {"created", 0}, {"owned_by", "diffusiond"}}));
      return;
    }
  }
  ex.respond(openai_error(http::status::not_found, "model_not_found",
                          "The model '" + p.model_id.substr(0, 200) + "' does not exist.",
                          "model"));
}

}  // namespace diffusiond::http_api
