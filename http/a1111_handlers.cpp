// The AUTOMATIC1111 web UI API under /sdapi/v1 (http/README.md "AUTOMATIC1111 API"): txt2img
// answered when the job ends, progress/interrupt/skip scoped to the caller's own jobs, the lists
// (samplers, schedulers, sd-models, ...), options, png-info, memory. Errors keep the native
// {"error":{...}} shape (A1111 clients print the text).
#include <unistd.h>

#include <chrono>
#include <ctime>

#include "http/a1111_samplers.h"
#include "http/a1111_txt2img.h"
#include "http/base64.h"
#include "http/handlers.h"
#include "http/job_waiter.h"
#include "http/model_listing.h"

namespace diffusiond::http_api {
namespace {

using nlohmann::json;

json parse_body(const Request& req) {
  json body = json::parse(req.body(), nullptr, false);
  if (body.is_discarded())
    throw ServiceError(ErrorCode::invalid_request, "the body is not valid JSON", "invalid_json");
  return body;
}

std::string title_of(const ListedModel& m) {
  return m.title;
}

// The caller's checkpoint (options POST keeps the model's name), else the daemon's default, as
// A1111 shows it: the title sd-models lists.
std::string default_checkpoint(ServerContext& c, const std::string& client) {
  const std::string name =
      c.a1111.checkpoint(client).value_or(resolve_listed_model(c.service, "").value_or(""));
  for (const auto& m : listed_models(c.service))
    if (m.name == name) return title_of(m);
  return name;
}

Response txt2img_answer(ServerContext& c, const A1111Txt2Img& asked, const JobView& job) {
  std::vector<int> done;
  for (const auto& image : job.images)
    if (image.status == ImageStatus::done) done.push_back(image.index);
  if (done.empty() && job.status == JobStatus::failed)
    return error_response(http::status::internal_server_error, "generation_failed",
                          "job '" + job.id + "' failed: " + job.error);
  json images = json::array();
  std::vector<std::string> infotexts;
  std::vector<int> answered;
  for (int k : done) {
    auto png = c.service.encoded_image(job.id, k, ImageFormat::png, 100);
    if (!png) continue;  // removed meanwhile (retention)
    answered.push_back(k);
    std::string infotext;
    try {
      for (const auto& [key, text] : c.service.image_text(png->bytes))
        if (key == "parameters") infotext = text;
    } catch (const ServiceError&) {
    }
    infotexts.push_back(infotext);
    if (asked.send_images) images.push_back(base64_encode(png->bytes));
  }
  const ModelInfo model = c.service.model_info();
  const json info = a1111_info(job, asked, answered, infotexts,
                               sampler_display(model.schedulers, job.request.scheduler));
  return json_response(
      http::status::ok,
      {{"images", images}, {"parameters", asked.parameters}, {"info", info.dump()}});
}

void txt2img(ServerContext& c, Exchange& ex, const RouteParams& p) {
  const json body = parse_body(ex.request());
  auto asked = std::make_shared<A1111Txt2Img>(parse_a1111_txt2img(body, c.service));
  const bool from_request = asked->checkpoint.has_value();
  const std::optional<std::string> checkpoint =
      from_request ? asked->checkpoint : c.a1111.checkpoint(p.client);
  if (checkpoint) {
    const auto name = resolve_listed_model(c.service, *checkpoint);
    if (!name)
      throw ServiceError(
          ErrorCode::invalid_request,
          "unknown checkpoint '" + checkpoint->substr(0, 100) +
              "'; GET /sdapi/v1/sd-models lists them",
          "unknown_model",
          from_request ? "override_settings.sd_model_checkpoint" : "sd_model_checkpoint");
    asked->request.model = *name;
  }
  SubmitContext context;
  context.client = p.client;
  context.may_prioritise = p.may_prioritise;
  context.previews = true;  // for /sdapi/v1/progress's current_image
  c.a1111.set_flags(p.client, false, false);
  const Submission submitted = c.service.submit(asked->request, context);
  answer_when_finished(c, ex, submitted.job.id,
                       [&c, asked](const JobView& job) { return txt2img_answer(c, *asked, job); });
}

std::int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string timestamp_now() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y%m%d%H%M%S", &tm);
  return buf;
}

void progress(ServerContext& c, Exchange& ex, const RouteParams& p) {
  const auto jobs = c.service.client_jobs(p.client);
  const auto [interrupted, skipped] = c.a1111.flags(p.client);
  int images = 0, finished = 0, step = 0, steps = 0;
  double fraction = 0;
  std::int64_t started = 0;
  std::string job_id;
  std::optional<EncodedImage> preview;
  const auto skip_image = p.query.find("skip_current_image");
  const bool want_image =
      skip_image == p.query.end() || skip_image->second == "false" || skip_image->second == "0";
  for (const auto& job : jobs) {
    if (job_id.empty()) job_id = job.id;
    if (job.started_ms > 0 && (started == 0 || job.started_ms < started)) started = job.started_ms;
    for (const auto& image : job.images) {
      ++images;
      if (is_terminal(image.status)) {
        ++finished;
        fraction += 1;
      } else if (image.status == ImageStatus::running && image.steps > 0) {
        fraction += static_cast<double>(image.step) / image.steps;
        if (steps == 0) {
          step = image.step;
          steps = image.steps;
          if (want_image) preview = c.service.preview(job.id, image.index);
        }
      }
    }
  }
  const double progress = images == 0 ? 0.0 : fraction / images;
  double eta = 0;
  if (progress > 0 && started > 0) {
    const double elapsed = static_cast<double>(now_ms() - started) / 1000.0;
    eta = elapsed / progress - elapsed;
  }
  json textinfo = nullptr;
  if (images > 0)
    textinfo = steps > 0
                   ? "Image " + std::to_string(finished + 1) + " of " + std::to_string(images) +
                         ": step " + std::to_string(step) + "/" + std::to_string(steps)
                   : std::string("In queue...");
  json state = {
      {"skipped", skipped},           {"interrupted", interrupted},
      {"stopping_generation", false}, {"job", job_id.empty() ? "" : "job(" + job_id + ")"},
      {"job_count", images},          {"job_timestamp", images > 0 ? timestamp_now() : "0"},
      {"job_no", finished},           {"sampling_step", step},
      {"sampling_steps", steps}};
  ex.respond(json_response(
      http::status::ok,
      {{"progress", progress},
       {"eta_relative", eta},
       {"state", state},
       {"current_image", preview ? json(base64_encode(preview->bytes)) : json(nullptr)},
       {"textinfo", textinfo},
       {"current_task", job_id.empty() ? json(nullptr) : json(job_id)}}));
}

void stop_own_work(ServerContext& c, Exchange& ex, const RouteParams& p, bool skip) {
  // Only the caller's own jobs; diffusiond runs a request's images in parallel, so there is no
  // "current image" to skip to the next: skip stops the caller's work as interrupt does.
  for (const auto& job : c.service.client_jobs(p.client)) c.service.cancel(job.id);
  c.a1111.set_flags(p.client, !skip, skip);
  ex.respond(json_response(http::status::ok, json::object()));
}
void interrupt(ServerContext& c, Exchange& ex, const RouteParams& p) {
  stop_own_work(c, ex, p, false);
}
void skip(ServerContext& c, Exchange& ex, const RouteParams& p) {
  stop_own_work(c, ex, p, true);
}

void samplers(ServerContext& c, Exchange& ex, const RouteParams&) {
  ex.respond(json_response(http::status::ok, a1111_samplers_json(c.service.model_info())));
}
void schedulers(ServerContext&, Exchange& ex, const RouteParams&) {
  ex.respond(json_response(http::status::ok, a1111_schedulers_json()));
}
void sd_models(ServerContext& c, Exchange& ex, const RouteParams&) {
  json out = json::array();
  for (const auto& m : listed_models(c.service))
    out.push_back({{"title", title_of(m)},
                   {"model_name", m.name},
                   {"hash", m.hash.empty() ? json(nullptr) : json(m.hash)},
                   {"sha256", m.sha256.empty() ? json(nullptr) : json(m.sha256)},
                   {"filename", m.path},
                   {"config", nullptr}});
  ex.respond(json_response(http::status::ok, out));
}
void loras(ServerContext& c, Exchange& ex, const RouteParams&) {
  json out = json::array();
  for (const auto& l : listed_loras(c.service))
    out.push_back(
        {{"name", l.name}, {"alias", l.name}, {"path", l.path}, {"metadata", json::object()}});
  ex.respond(json_response(http::status::ok, out));
}
void upscalers(ServerContext&, Exchange& ex, const RouteParams&) {
  // A1111 always lists "None"; diffusiond has no upscaler.
  ex.respond(json_response(http::status::ok, json::array({{{"name", "None"},
                                                           {"model_name", nullptr},
                                                           {"model_path", nullptr},
                                                           {"model_url", nullptr},
                                                           {"scale", 4}}})));
}
void empty_list(ServerContext&, Exchange& ex, const RouteParams&) {
  ex.respond(json_response(http::status::ok, json::array()));
}
void embeddings(ServerContext&, Exchange& ex, const RouteParams&) {
  ex.respond(
      json_response(http::status::ok, {{"loaded", json::object()}, {"skipped", json::object()}}));
}
void refresh(ServerContext&, Exchange& ex, const RouteParams&) {
  ex.respond(json_response(http::status::ok, nullptr));
}

json options_json(ServerContext& c, const std::string& client) {
  json out = {{"sd_model_checkpoint", default_checkpoint(c, client)},
              {"sd_checkpoint_hash", nullptr},
              {"sd_vae", "Automatic"},
              {"CLIP_stop_at_last_layers", 1},
              {"eta_noise_seed_delta", 0},
              {"samples_format", "png"},
              {"sd_lora", "None"}};
  const json kept = c.a1111.options(client);  // a named copy: items() does not extend lifetimes
  for (const auto& [key, value] : kept.items())
    if (key != "sd_model_checkpoint") out[key] = value;  // kept as a name, shown as its title
  return out;
}

void options_get(ServerContext& c, Exchange& ex, const RouteParams& p) {
  ex.respond(json_response(http::status::ok, options_json(c, p.client)));
}

void options_post(ServerContext& c, Exchange& ex, const RouteParams& p) {
  const json body = parse_body(ex.request());
  if (!body.is_object())
    throw ServiceError(ErrorCode::invalid_request, "the body must be a JSON object of options",
                       "invalid_field");
  json changes = body;
  if (auto it = changes.find("sd_model_checkpoint"); it != changes.end() && !it->is_null()) {
    const auto name =
        it->is_string() ? resolve_listed_model(c.service, it->get<std::string>()) : std::nullopt;
    if (!name)
      throw ServiceError(ErrorCode::invalid_request,
                         "unknown checkpoint " + it->dump().substr(0, 100) +
                             "; GET /sdapi/v1/sd-models lists them",
                         "unknown_model", "sd_model_checkpoint");
    *it = *name;
  }
  if (!c.a1111.update_options(p.client, changes))
    throw ServiceError(ErrorCode::invalid_request, "too many options kept for this caller",
                       "too_many_options");
  ex.respond(json_response(http::status::ok, nullptr));
}

void cmd_flags(ServerContext& c, Exchange& ex, const RouteParams&) {
  const auto models = listed_models(c.service);
  ex.respond(json_response(
      http::status::ok, {{"api", true},
                         {"nowebui", true},
                         {"listen", c.options.host != "127.0.0.1" &&
                                        c.options.host != "localhost" && c.options.host != "::1"},
                         {"port", c.options.port},
                         {"api_auth", c.options.api_keys.empty() ? json(nullptr) : json("<set>")},
                         {"ckpt", models.empty() ? json(nullptr) : json(models.front().path)},
                         {"lora_dir", nullptr},
                         {"no_half", false},
                         {"server_name", c.options.host}}));
}

void png_info(ServerContext& c, Exchange& ex, const RouteParams&) {
  const json body = parse_body(ex.request());
  const json* image = body.is_object() && body.contains("image") ? &body["image"] : nullptr;
  if (!image || !image->is_string())
    throw ServiceError(ErrorCode::invalid_request, "field 'image' (base64 image) is required",
                       "missing_field", "image");
  std::string text = image->get<std::string>();
  if (text.rfind("data:", 0) == 0) text = text.substr(text.find(',') + 1);  // a data URL
  const auto bytes = base64_decode(text);
  if (!bytes)
    throw ServiceError(ErrorCode::invalid_request, "field 'image' is not base64", "invalid_field",
                       "image");
  std::string info;
  json items = json::object();
  for (const auto& [key, value] : c.service.image_text(*bytes)) {
    if (key == "parameters")
      info = value;
    else
      items[key] = value;
  }
  ex.respond(json_response(http::status::ok,
                           {{"info", info},
                            {"items", items},
                            {"parameters", info.empty() ? json::object() : parse_infotext(info)}}));
}

void memory(ServerContext& c, Exchange& ex, const RouteParams&) {
  const double page = static_cast<double>(sysconf(_SC_PAGESIZE));
  const double total = page * static_cast<double>(sysconf(_SC_PHYS_PAGES));
  const double free = page * static_cast<double>(sysconf(_SC_AVPHYS_PAGES));
  json cuda = {{"error", "no CUDA device"}};
  for (const auto& d : c.service.devices()) {
    if (d.name.rfind("cuda", 0) != 0 || d.memory_total_bytes <= 0) continue;
    const auto t = static_cast<double>(d.memory_total_bytes),
               u = static_cast<double>(d.memory_used_bytes);
    cuda = {{"system", {{"free", t - u}, {"used", u}, {"total", t}}}, {"device", d.name}};
    break;
  }
  ex.respond(json_response(
      http::status::ok,
      {{"ram", {{"free", free}, {"used", total - free}, {"total", total}}}, {"cuda", cuda}}));
}

struct A1111Route {
  const char* name;
  Handler get;
  Handler post;
};

constexpr A1111Route kRoutes[] = {
    {"txt2img", nullptr, txt2img},
    {"progress", progress, nullptr},
    {"interrupt", nullptr, interrupt},
    {"skip", nullptr, skip},
    {"samplers", samplers, nullptr},
    {"schedulers", schedulers, nullptr},
    {"sd-models", sd_models, nullptr},
    {"sd-vae", empty_list, nullptr},
    {"sd-modules", empty_list, nullptr},
    {"loras", loras, nullptr},
    {"upscalers", upscalers, nullptr},
    {"latent-upscale-modes", empty_list, nullptr},
    {"face-restorers", empty_list, nullptr},
    {"hypernetworks", empty_list, nullptr},
    {"prompt-styles", empty_list, nullptr},
    {"embeddings", embeddings, nullptr},
    {"options", options_get, options_post},
    {"cmd-flags", cmd_flags, nullptr},
    {"png-info", nullptr, png_info},
    {"memory", memory, nullptr},
    {"refresh-checkpoints", nullptr, refresh},
    {"refresh-loras", nullptr, refresh},
    {"refresh-vae", nullptr, refresh},
};

}  // namespace

bool a1111_route(std::string_view name, Handler& get, Handler& post) {
  for (const auto& r : kRoutes) {
    if (name == r.name) {
      get = r.get;
      post = r.post;
      return true;
    }
  }
  return false;
}

}  // namespace diffusiond::http_api
