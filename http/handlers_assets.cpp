// GET / and the web UI's static files (embedded by web/; served without an API key so the page
// can load and ask for one).
#include "http/handlers.h"
#include "web/web_assets.h"

namespace diffusiond::http_api {

bool is_asset_path(const std::string& path) {
  return web::find_asset(path).has_value();
}

void handle_asset(ServerContext&, Exchange& ex, const RouteParams& p) {
  std::optional<web::Asset> asset = web::find_asset(p.path);
  if (!asset) {
    return ex.respond(error_response(http::status::not_found, "not_found",
                                     "no such resource: " + p.path.substr(0, 200)));
  }
  auto res = text_response(http::status::ok, std::string(asset->body), asset->content_type);
  // The UI changes with the binary; let browsers revalidate rather than keep stale copies.
  res.set(http::field::cache_control, "no-cache");
  res.set("X-Content-Type-Options", "nosniff");
  ex.respond(std::move(res));
}

}  // namespace diffusiond::http_api
