// /healthz, /readyz, /metrics, /devices, /model, /schedulers
#include "http/handlers.h"
#include "http/json_views.h"

namespace diffusiond::http_api {

void handle_healthz(ServerContext&, Exchange& ex, const RouteParams&) {
  ex.respond(json_response(http::status::ok, {{"status", "ok"}}));
}

void handle_readyz(ServerContext& c, Exchange& ex, const RouteParams&) {
  if (c.service.ready()) return ex.respond(json_response(http::status::ok, {{"status", "ready"}}));
  int loaded = 0, healthy = 0, total = 0;
  for (const DeviceView& d : c.service.devices()) {
    ++total;
    if (d.loaded) ++loaded;
    if (d.loaded && d.healthy) ++healthy;
  }
  std::string why = "the model is loaded on " + std::to_string(loaded) + " of " +
                    std::to_string(total) + " device(s)";
  if (loaded > 0 && healthy == 0)
    why += ", and no healthy device is left (each is probed again later; see /devices)";
  ex.respond(error_response(http::status::service_unavailable, "not_ready", why));
}

void handle_metrics(ServerContext& c, Exchange& ex, const RouteParams&) {
  std::string text = c.service.metrics_text();
  if (!text.empty() && text.back() != '\n') text += '\n';
  text += c.stats.prometheus_text();
  auto res =
      text_response(http::status::ok, std::move(text), "text/plain; version=0.0.4; charset=utf-8");
  res.set(http::field::cache_control, "no-store");
  ex.respond(std::move(res));
}

void handle_devices(ServerContext& c, Exchange& ex, const RouteParams&) {
  nlohmann::json list = nlohmann::json::array();
  for (const DeviceView& d : c.service.devices()) list.push_back(device_json(d));
  ex.respond(json_response(http::status::ok, {{"devices", std::move(list)},
                                              {"ready", c.service.ready()},
                                              {"model", model_json(c.service.model_info())}}));
}

void handle_model(ServerContext& c, Exchange& ex, const RouteParams&) {
  ex.respond(json_response(http::status::ok, model_json(c.service.model_info())));
}

void handle_schedulers(ServerContext& c, Exchange& ex, const RouteParams&) {
  ex.respond(json_response(http::status::ok, schedulers_json(c.service.model_info())));
}

}  // namespace diffusiond::http_api
