#include "http/a1111_txt2img.h"

#include <cmath>
#include <ctime>

#include "http/a1111_samplers.h"

namespace diffusiond::http_api {
namespace {

using nlohmann::json;

[[noreturn]] void fail(const std::string& field, const std::string& message) {
  throw ServiceError(ErrorCode::invalid_request, message, "invalid_field", field);
}

[[noreturn]] void not_provided(const std::string& field, const json& value) {
  fail(field, "field '" + field + "' = " + value.dump().substr(0, 100) +
                  " asks for something diffusiond does not provide; leave it out or at its "
                  "default");
}

const json* field(const json& body, const char* name) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

std::optional<std::string> string_field(const json& body, const char* name) {
  const json* v = field(body, name);
  if (!v) return std::nullopt;
  if (!v->is_string()) fail(name, std::string("field '") + name + "' must be a string");
  return v->get<std::string>();
}

// A1111 (pydantic) takes 20.0 for 20; so does this.
std::optional<std::int64_t> int_field(const json& body, const char* name) {
  const json* v = field(body, name);
  if (!v) return std::nullopt;
  if (v->is_number_integer()) return v->get<std::int64_t>();
  if (v->is_number_float()) {
    const double d = v->get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.2e18)
      return static_cast<std::int64_t>(d);
  }
  fail(name,
       std::string("field '") + name + "' must be an integer, got " + v->dump().substr(0, 40));
}

std::optional<double> number_field(const json& body, const char* name) {
  const json* v = field(body, name);
  if (!v) return std::nullopt;
  if (!v->is_number()) fail(name, std::string("field '") + name + "' must be a number");
  return v->get<double>();
}

bool truthy(const json& v) {
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_number()) return v.get<double>() != 0;
  if (v.is_string()) return !v.get<std::string>().empty();
  return !v.is_null();
}

// Off: false/null. On: a 400.
void require_off(const json& body, const char* name) {
  if (const json* v = field(body, name); v && truthy(*v)) not_provided(name, *v);
}

// A number that must equal its default (null also accepted).
void require_number(const json& body, const char* name, double off, bool also_nonpositive = false) {
  const json* v = field(body, name);
  if (!v) return;
  if (!v->is_number()) {
    // A1111's s_tmax default is inf; JSON clients send null, "inf" or a huge number.
    if (v->is_string() && off == INFINITY && (*v == "inf" || *v == "Infinity")) return;
    fail(name, std::string("field '") + name + "' must be a number");
  }
  const double d = v->get<double>();
  if (d == off || (also_nonpositive && d <= 0) || (off == INFINITY && (d == 0 || d > 1e30))) return;
  not_provided(name, *v);
}

// "", "None" and null mean none in A1111 for these names.
void require_none_name(const json& body, const char* name) {
  const json* v = field(body, name);
  if (!v) return;
  if (v->is_string() && (v->get<std::string>().empty() || *v == "None")) return;
  not_provided(name, *v);
}

void check_override_settings(const json& overrides, A1111Txt2Img& out) {
  if (!overrides.is_object())
    fail("override_settings", "field 'override_settings' must be an object");
  for (const auto& [key, value] : overrides.items()) {
    const std::string name = "override_settings." + key;
    if (value.is_null()) continue;
    if (key == "sd_model_checkpoint") {
      if (!value.is_string()) fail(name, "field '" + name + "' must be a string");
      if (!value.get<std::string>().empty()) out.checkpoint = value.get<std::string>();
    } else if (key == "CLIP_stop_at_last_layers") {
      if (!value.is_number() || value.get<double>() > 1) not_provided(name, value);
    } else if (key == "sd_vae") {
      if (!value.is_string() ||
          !(value == "Automatic" || value == "None" || value.get<std::string>().empty()))
        not_provided(name, value);
    } else if (key == "eta_noise_seed_delta") {
      if (!value.is_number() || value.get<double>() != 0) not_provided(name, value);
    }
    // Every other setting (save formats, UI options, ...) changes nothing diffusiond does.
  }
}

const json& defaults() {
  static const json d = {
      {"prompt", ""},
      {"negative_prompt", ""},
      {"styles", json::array()},
      {"seed", -1},
      {"subseed", -1},
      {"subseed_strength", 0},
      {"seed_resize_from_h", -1},
      {"seed_resize_from_w", -1},
      {"sampler_name", nullptr},
      {"scheduler", nullptr},
      {"batch_size", 1},
      {"n_iter", 1},
      {"steps", 50},
      {"cfg_scale", 7.0},
      {"width", 512},
      {"height", 512},
      {"restore_faces", nullptr},
      {"tiling", nullptr},
      {"do_not_save_samples", false},
      {"do_not_save_grid", false},
      {"eta", nullptr},
      {"denoising_strength", 0},
      {"s_min_uncond", nullptr},
      {"s_churn", nullptr},
      {"s_tmax", nullptr},
      {"s_tmin", nullptr},
      {"s_noise", nullptr},
      {"override_settings", nullptr},
      {"override_settings_restore_afterwards", true},
      {"refiner_checkpoint", nullptr},
      {"refiner_switch_at", nullptr},
      {"disable_extra_networks", false},
      {"firstpass_image", nullptr},
      {"comments", nullptr},
      {"enable_hr", false},
      {"firstphase_width", 0},
      {"firstphase_height", 0},
      {"hr_scale", 2.0},
      {"hr_upscaler", nullptr},
      {"hr_second_pass_steps", 0},
      {"hr_resize_x", 0},
      {"hr_resize_y", 0},
      {"hr_checkpoint_name", nullptr},
      {"hr_sampler_name", nullptr},
      {"hr_scheduler", nullptr},
      {"hr_prompt", ""},
      {"hr_negative_prompt", ""},
      {"force_task_id", nullptr},
      {"sampler_index", "Euler"},
      {"script_name", nullptr},
      {"script_args", json::array()},
      {"send_images", true},
      {"save_images", false},
      {"alwayson_scripts", json::object()},
      {"infotext", nullptr},
  };
  return d;
}

std::string timestamp(std::int64_t unix_ms) {
  const std::time_t t = static_cast<std::time_t>(unix_ms / 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y%m%d%H%M%S", &tm);
  return buf;
}

}  // namespace

A1111Txt2Img parse_a1111_txt2img(const json& body, const ImageService& service) {
  if (!body.is_object()) fail("", "the body must be a JSON object");
  A1111Txt2Img out;
  GenerateRequest& r = out.request;
  r.prompts = {string_field(body, "prompt").value_or("")};
  r.negative_prompt = string_field(body, "negative_prompt").value_or("");  // A1111 encodes ""
  if (auto seed = int_field(body, "seed"); seed && *seed != -1) {
    if (*seed < 0) fail("seed", "field 'seed' must be -1 (random) or a non-negative integer");
    r.seed = static_cast<std::uint64_t>(*seed);
  }
  const auto batch = int_field(body, "batch_size").value_or(1);
  const auto iters = int_field(body, "n_iter").value_or(1);
  if (batch < 1 || batch > 1000) fail("batch_size", "field 'batch_size' must be at least 1");
  if (iters < 1 || iters > 1000) fail("n_iter", "field 'n_iter' must be at least 1");
  out.batch_size = static_cast<int>(batch);
  out.n_iter = static_cast<int>(iters);
  r.n = batch * iters;
  r.steps = int_field(body, "steps");
  r.guidance_scale = number_field(body, "cfg_scale");
  r.width = int_field(body, "width");
  r.height = int_field(body, "height");
  auto sampler = string_field(body, "sampler_name");
  if (!sampler) sampler = string_field(body, "sampler_index");  // the deprecated spelling
  r.scheduler = a1111_scheduler(sampler, string_field(body, "scheduler"), service);
  r.prompt_syntax = "a1111";

  for (const char* name : {"enable_hr", "restore_faces", "tiling"}) require_off(body, name);
  require_number(body, "subseed_strength", 0);
  require_number(body, "seed_resize_from_h", -1, true);
  require_number(body, "seed_resize_from_w", -1, true);
  require_number(body, "s_churn", 0);
  require_number(body, "s_tmin", 0);
  require_number(body, "s_tmax", INFINITY);
  require_number(body, "s_noise", 1);
  require_number(body, "s_min_uncond", 0);
  require_number(body, "clip_skip", 1, true);  // SD.Next's spelling of CLIP_stop_at_last_layers
  if (const json* eta = field(body, "eta")) not_provided("eta", *eta);
  if (const json* styles = field(body, "styles");
      styles && !(styles->is_array() && styles->empty()))
    not_provided("styles", *styles);
  for (const char* name : {"script_name", "refiner_checkpoint"}) require_none_name(body, name);
  for (const char* name : {"firstpass_image", "infotext"})
    if (const json* v = field(body, name); v && truthy(*v)) not_provided(name, *v);
  if (const json* scripts = field(body, "alwayson_scripts")) {
    if (!scripts->is_object())
      fail("alwayson_scripts", "field 'alwayson_scripts' must be an object");
    for (const auto& [name, value] : scripts->items())
      if (!value.is_null() && !(value.is_object() && value.empty()))
        not_provided("alwayson_scripts." + name, value);
  }
  if (const json* overrides = field(body, "override_settings"))
    check_override_settings(*overrides, out);
  if (const json* send = field(body, "send_images")) out.send_images = truthy(*send);

  out.parameters = defaults();
  for (auto& [key, value] : out.parameters.items()) {
    auto it = body.find(key);
    if (it != body.end()) value = *it;
  }
  return out;
}

json a1111_info(const JobView& job, const A1111Txt2Img& asked, const std::vector<int>& done,
                const std::vector<std::string>& infotexts, const std::string& sampler) {
  const JobRequest& r = job.request;
  json prompts = json::array(), negatives = json::array(), seeds = json::array();
  for (int k : done) {
    const auto& image = job.images[static_cast<std::size_t>(k)];
    prompts.push_back(image.prompt);
    negatives.push_back(r.negative_prompt.value_or(""));
    seeds.push_back(image.seed);
  }
  const std::uint64_t first_seed = job.images.empty() ? r.seed : job.images.front().seed;
  return {
      {"prompt", r.prompts.empty() ? "" : r.prompts.front()},
      {"all_prompts", prompts},
      {"negative_prompt", r.negative_prompt.value_or("")},
      {"all_negative_prompts", negatives},
      {"seed", first_seed},
      {"all_seeds", seeds},
      {"subseed", first_seed},
      {"all_subseeds", seeds},
      {"subseed_strength", 0},
      {"width", r.width},
      {"height", r.height},
      {"sampler_name", sampler},
      {"scheduler", r.scheduler},
      {"cfg_scale", r.guidance_scale},
      {"steps", r.steps},
      {"batch_size", asked.batch_size},
      {"n_iter", asked.n_iter},
      {"restore_faces", false},
      {"face_restoration_model", nullptr},
      {"sd_model_name", job.model},
      {"sd_model_hash", nullptr},
      {"sd_vae_name", nullptr},
      {"sd_vae_hash", nullptr},
      {"seed_resize_from_w", -1},
      {"seed_resize_from_h", -1},
      {"denoising_strength", asked.parameters.value("denoising_strength", json(0))},
      {"extra_generation_params", json::object()},
      {"index_of_first_image", 0},
      {"infotexts", infotexts},
      {"styles", json::array()},
      {"job_timestamp", timestamp(job.created_ms)},
      {"clip_skip", 1},
      {"is_using_inpainting_conditioning", false},
      {"version", std::string("diffusiond ") + DIFFUSIOND_VERSION},
      {"job_id", job.id},
  };
}

json parse_infotext(const std::string& text) {
  json out = json::object();
  std::vector<std::string> lines;
  std::size_t start = 0;
  while (start <= text.size()) {
    const auto nl = text.find('\n', start);
    lines.push_back(text.substr(start, nl == std::string::npos ? std::string::npos : nl - start));
    if (nl == std::string::npos) break;
    start = nl + 1;
  }
  std::string settings;
  if (!lines.empty() && lines.back().find("Steps: ") != std::string::npos) {
    settings = lines.back();
    lines.pop_back();
  }
  std::string prompt, negative;
  bool in_negative = false;
  for (const auto& line : lines) {
    if (line.rfind("Negative prompt: ", 0) == 0) {
      in_negative = true;
      negative = line.substr(17);
    } else if (in_negative) {
      negative += "\n" + line;
    } else {
      prompt += (prompt.empty() ? "" : "\n") + line;
    }
  }
  out["Prompt"] = prompt;
  out["Negative prompt"] = negative;
  // "Key: value, Key: "quoted, value", ..."
  std::size_t i = 0;
  while (i < settings.size()) {
    const auto colon = settings.find(": ", i);
    if (colon == std::string::npos) break;
    const std::string key = settings.substr(i, colon - i);
    std::size_t v = colon + 2, end;
    std::string value;
    if (v < settings.size() && settings[v] == '"') {
      end = settings.find('"', v + 1);
      if (end == std::string::npos) end = settings.size();
      value = settings.substr(v + 1, end - v - 1);
      end = settings.find(", ", end);
    } else {
      end = settings.find(", ", v);
      value = settings.substr(v, end == std::string::npos ? std::string::npos : end - v);
    }
    out[key] = value;
    if (key == "Size") {
      const auto x = value.find('x');
      if (x != std::string::npos) {
        try {
          out["Size-1"] = std::stoi(value.substr(0, x));
          out["Size-2"] = std::stoi(value.substr(x + 1));
        } catch (const std::exception&) {
        }
      }
    }
    if (end == std::string::npos) break;
    i = end + 2;
  }
  return out;
}

}  // namespace diffusiond::http_api
