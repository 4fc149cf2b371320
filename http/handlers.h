// The route handlers, one group per file. Each runs on the connection's strand, answers through
// the Exchange (now or later), and never waits on a device. Called by route_request
// (http/router.h).
#pragma once

#include "http/exchange.h"
#include "http/router.h"

namespace diffusiond::http_api {

using Handler = void (*)(ServerContext&, Exchange&, const RouteParams&);

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
void handle_models(ServerContext& c, Exchange& ex, const RouteParams& p);
void handle_schedulers(ServerContext& c, Exchange& ex, const RouteParams& p);
// a1111_handlers.cpp: /sdapi/v1/{name}; false when there is no such A1111 route.
bool a1111_route(std::string_view name, Handler& get, Handler& post);
// openai_handlers.cpp: /v1/images/generations, /v1/models, /v1/models/{id}
void handle_openai_generations(ServerContext& c, Exchange& ex, const RouteParams& p);
void handle_openai_models(ServerContext& c, Exchange& ex, const RouteParams& p);
void handle_openai_model(ServerContext& c, Exchange& ex, const RouteParams& p);
// The native error answer `r` in OpenAI's shape {"error":{"message","type","param","code"}}
// (other answers unchanged).
Response openai_error_shape(Response r);
void handle_loras(ServerContext& c, Exchange& ex, const RouteParams& p);
// handlers_assets.cpp
void handle_asset(ServerContext& c, Exchange& ex, const RouteParams& p);
bool is_asset_path(const std::string& path);

}  // namespace diffusiond::http_api
