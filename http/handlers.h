// The route handlers, one group per file. Each runs on the connection's strand, answers through
// the Exchange (now or later), and never waits on a device. Called by route_request
// (http/router.h).
#pragma once

#include "http/exchange.h"
#include "http/router.h"

namespace diffusiond::http_api {

// handlers_generate.cpp
void handle_generate(ServerContext& c, Exchange& ex, const RouteParams& p);
// handlers_jobs.cpp
void handle_get_job(ServerContext& c, Exchange& ex, const RouteParams& p);
void handle_cancel_job(ServerContext& c, Exchange& ex, const RouteParams& p);
void handle_list_jobs(ServerContext& c, Exchange& ex, const RouteParams& p);
// handlers_events.cpp
void handle_job_events(ServerContext& c, Exchange& ex, const RouteParams& p);
// handlers_images.cpp
void handle_job_image(ServerContext& c, Exchange& ex, const RouteParams& p);
// Builds the answer carrying image k of a finished job (also used by POST /generate).
Response image_file_response(ServerContext& c, std::string_view if_none_match,
                             const std::string& job_id, int k);
// handlers_info.cpp
void handle_healthz(ServerContext& c, Exchange& ex, const RouteParams& p);
void handle_readyz(ServerContext& c, Exchange& ex, const RouteParams& p);
void handle_metrics(ServerContext& c, Exchange& ex, const RouteParams& p);
void handle_devices(ServerContext& c, Exchange& ex, const RouteParams& p);
void handle_model(ServerContext& c, Exchange& ex, const RouteParams& p);
void handle_schedulers(ServerContext& c, Exchange& ex, const RouteParams& p);
void handle_loras(ServerContext& c, Exchange& ex, const RouteParams& p);
// handlers_assets.cpp
void handle_asset(ServerContext& c, Exchange& ex, const RouteParams& p);
bool is_asset_path(const std::string& path);

}  // namespace diffusiond::http_api
