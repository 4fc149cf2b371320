#include "http/job_waiter.h"

#include <memory>

#include "http/json_views.h"

namespace diffusiond::http_api {

void answer_when_finished(ServerContext& context, Exchange& exchange, const std::string& job_id,
                          FinishedAnswer answer) {
  auto check = std::make_shared<std::function<void(Exchange&)>>(
      [&context, job_id, answer = std::move(answer)](Exchange& ex) {
        std::optional<JobView> view = context.service.job(job_id);
        if (!view) {
          ex.respond(error_response(http::status::not_found, "job_not_found",
                                    "job '" + job_id + "' disappeared while waiting"));
        } else if (is_terminal(view->status)) {
          ex.respond(answer(*view));
        }
      });
  Exchange::Poster post = exchange.poster();
  exchange.keep(context.service.subscribe(job_id, [post, check](const JobEvent& e) {
    // Only events that can end a job are worth reading the job again.
    if (e.kind == JobEvent::Kind::queued || e.kind == JobEvent::Kind::started ||
        e.kind == JobEvent::Kind::progress) {
      return;
    }
    post([check](Exchange& ex) { (*check)(ex); });
  }));
  (*check)(exchange);  // the job may have finished before the subscription began
}

}  // namespace diffusiond::http_api
