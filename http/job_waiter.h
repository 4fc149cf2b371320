// Answers a request once a job has finished, without blocking an I/O thread: subscribes to the
// job's events and re-reads the job on the connection's strand when an image or the job ends.
// Used by the handlers; call on the connection's strand.
#pragma once

#include <functional>
#include <string>

#include "http/exchange.h"

namespace diffusiond::http_api {

using FinishedAnswer = std::function<Response(const JobView&)>;

// Calls `answer` (on the strand) with the job's view as soon as it is done, failed or
// cancelled, and sends what it returns. If the job is already finished, answers now.
void answer_when_finished(ServerContext& context, Exchange& exchange, const std::string& job_id,
                          FinishedAnswer answer);

}  // namespace diffusiond::http_api
