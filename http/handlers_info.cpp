// /healthz, /readyz, /metrics, /devices, /model, /models, /schedulers, /loras
#include "http/handlers.h"
#include "http/json_views.h"

namespace diffusiond::http_api {

void handle_healthz(ServerContext&, Exchange& ex, const RouteParams&) {
  ex.respond(json_response(http::status::ok, {{"status", "ok"}}));
}

void handle_readyz(ServerContext& c, Exchange& ex, const RouteParams&) {
  const auto why = c.service.not_ready();
  if (!why) return ex.respond(json_response(http::status::ok, {{"status", "ready"}}));
  // Always 503 (what load balancers act on); the cause is in "reason".
  auto res = json_response(
      http::status::service_unavailable,
      {{"error", {{"code", "not_ready"}, {"reason", why->reason()}, {"message", why->what()}}}});
  if (why->retry_after_s() > 0)
    res.set(http::field::retry_after, std::to_string(why->retry_after_s()));
  ex.respond(std::move(res));
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

void handle_models(ServerContext& c, Exchange& ex, const RouteParams&) {
  nlohmann::json list = nlohmann::json::array();
  std::string default_name;
  for (const ModelInfo& m : c.service.models()) {
    if (m.is_default) default_name = m.name;
    list.push_back(model_json(m));
  }
  ex.respond(
      json_response(http::status::ok, {{"default", default_name}, {"models", std::move(list)}}));
}

void handle_schedulers(ServerContext& c, Exchange& ex, const RouteParams&) {
  ex.respond(json_response(http::status::ok, schedulers_json(c.service.model_info())));
}

void handle_loras(ServerContext& c, Exchange& ex, const RouteParams&) {
  ex.respond(json_response(http::status::ok, loras_json(c.service.loras())));
}

}  // namespace diffusiond::http_api
