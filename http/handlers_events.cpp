// GET /jobs/{id}/events: Server-Sent Events. Catch-up from the job snapshot first, then live
// events; the stream ends after done, failed or cancelled.
#include <memory>

#include "http/handlers.h"
#include "http/json_views.h"
#include "http/sse.h"

namespace diffusiond::http_api {
namespace {

// State of one stream; touched only on its connection's strand.
struct StreamContext {
  std::optional<EventStreamState> state;
  std::uint64_t next_id = 0;
};

void send_all(Exchange& ex, StreamContext& s, const std::vector<SseEvent>& events) {
  for (const SseEvent& e : events) ex.send_event_data(format_sse(e, ++s.next_id));
  if (s.state->finished()) ex.end_event_stream();
}

}  // namespace

void handle_job_events(ServerContext& c, Exchange& ex, const RouteParams& p) {
  if (!c.service.job(p.job_id)) {
    return ex.respond(
        error_response(http::status::not_found, "job_not_found", "no job '" + p.job_id + "'"));
  }
  auto stream = std::make_shared<StreamContext>();
  Exchange::Poster post = ex.poster();
  ServerContext* context = &c;
  const std::string id = p.job_id;
  // Subscribe first, then read the snapshot: nothing falls between the two.
  ex.keep(c.service.subscribe(id, [post, stream, context, id](const JobEvent& e) {
    post([stream, context, id, e](Exchange& ex2) {
      if (!stream->state) return;
      auto current = [context, &id] { return context->service.job(id); };
      send_all(ex2, *stream, stream->state->on_live(e, current));
    });
  }));
  std::optional<JobView> snapshot = c.service.job(id);
  if (!snapshot) {
    return ex.respond(
        error_response(http::status::not_found, "job_not_found", "no job '" + id + "'"));
  }
  // A browser's EventSource reconnects when a stream ends; tell it to stop once the job is over.
  if (ex.request().count("Last-Event-ID") && is_terminal(snapshot->status)) {
    StringResponse res{http::status::no_content, 11};
    return ex.respond(std::move(res));
  }
  stream->state.emplace(*snapshot);
  ex.start_event_stream();
  send_all(ex, *stream, stream->state->catch_up());
}

}  // namespace diffusiond::http_api
