// GET /jobs/{id}, DELETE /jobs/{id}, GET /jobs?status=&limit=
#include <algorithm>
#include <charconv>

#include "http/handlers.h"
#include "http/json_views.h"

namespace diffusiond::http_api {
namespace {

StringResponse job_not_found(const std::string& id) {
  return error_response(http::status::not_found, "job_not_found", "no job '" + id + "'");
}

}  // namespace

void handle_get_job(ServerContext& c, Exchange& ex, const RouteParams& p) {
  std::optional<JobView> job = c.service.job(p.job_id);
  if (!job) return ex.respond(job_not_found(p.job_id));
  ex.respond(json_response(http::status::ok, job_json(*job)));
}

void handle_cancel_job(ServerContext& c, Exchange& ex, const RouteParams& p) {
  switch (c.service.cancel(p.job_id)) {
    case CancelResult::not_found:
      return ex.respond(job_not_found(p.job_id));
    case CancelResult::already_finished: {
      std::optional<JobView> job = c.service.job(p.job_id);
      return ex.respond(error_response(http::status::conflict, "job_finished",
                                       "job '" + p.job_id + "' already finished (" +
                                           (job ? to_string(job->status) : "gone") +
                                           "); there is nothing to cancel"));
    }
    case CancelResult::cancelled: {
      // A queued job is cancelled now; a running one stops at its next step.
      std::optional<JobView> job = c.service.job(p.job_id);
      if (!job) return ex.respond(job_not_found(p.job_id));
      return ex.respond(json_response(http::status::ok, job_json(*job)));
    }
  }
}

void handle_list_jobs(ServerContext& c, Exchange& ex, const RouteParams& p) {
  std::optional<JobStatus> status;
  if (auto it = p.query.find("status"); it != p.query.end() && !it->second.empty()) {
    status = parse_job_status(it->second);
    if (!status) {
      return ex.respond(error_response(
          http::status::bad_request, "invalid_field",
          "query parameter 'status' must be one of queued, running, done, failed, cancelled",
          "status"));
    }
  }
  int limit = 50;
  if (auto it = p.query.find("limit"); it != p.query.end()) {
    const std::string& s = it->second;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), limit);
    if (s.empty() || ec != std::errc() || end != s.data() + s.size() || limit < 1 ||
        limit > c.options.max_list_limit) {
      return ex.respond(error_response(http::status::bad_request, "invalid_field",
                                       "query parameter 'limit' must be an integer from 1 to " +
                                           std::to_string(c.options.max_list_limit),
                                       "limit"));
    }
  }
  std::string before;
  if (auto it = p.query.find("before"); it != p.query.end()) before = it->second;
  // Pages of a few jobs at a time, until `limit` jobs or max_list_bytes of JSON: a listing of
  // large jobs never makes a large answer. "next" is the cursor of the following page.
  constexpr int kPage = 20;
  nlohmann::json list = nlohmann::json::array();
  std::size_t bytes = 0;
  int listed = 0;
  bool more = true;
  std::string last;
  while (more && listed < limit && bytes < c.options.max_list_bytes) {
    const int want = std::min(kPage, limit - listed);
    const std::vector<JobView> page = c.service.jobs(status, want, last.empty() ? before : last);
    more = static_cast<int>(page.size()) == want;
    for (const JobView& job : page) {
      nlohmann::json j = job_json(job);
      const std::size_t size = j.dump().size();
      if (listed > 0 && bytes + size > c.options.max_list_bytes) {
        more = true;
        bytes = c.options.max_list_bytes;  // stop: this job starts the next page
        break;
      }
      bytes += size;
      list.push_back(std::move(j));
      last = job.id;
      ++listed;
    }
  }
  nlohmann::json next = more && listed > 0 ? nlohmann::json(last) : nlohmann::json(nullptr);
  ex.respond(json_response(http::status::ok, {{"jobs", std::move(list)}, {"next", next}}));
}

}  // namespace diffusiond::http_api
