// Black-box: the AUTOMATIC1111 (/sdapi/v1) and OpenAI (/v1) dialects against the real daemon on
// the tiny model, replaying what Open WebUI (backend/open_webui/routers/images.py, both engines)
// and SillyTavern (src/endpoints/stable-diffusion.js + its extension's txt2img body) send, and
// checking every field their code then reads. JPEG/WebP output is decoded with libjpeg/libwebp.
#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <future>
#include <thread>

#include "blackbox_util.h"
#include "pipeline/media/exif.h"
#include "pipeline/media/jpeg.h"
#include "pipeline/media/webp.h"
#include "png_check.h"

using namespace diffusiond::testing;
using nlohmann::json;

namespace {

// RFC 4648 base64, written here so the test does not trust the daemon's coder.
std::string b64_decode(const std::string& in) {
  static const std::string abc = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  int bits = 0, acc = 0;
  for (char c : in) {
    if (c == '=') break;
    const auto v = abc.find(c);
    if (v == std::string::npos) throw std::runtime_error("not base64");
    acc = (acc << 6) | static_cast<int>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xff);
    }
  }
  return out;
}
std::string b64_encode(const std::string& in) {
  static const char* abc = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  std::size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    const unsigned v = (static_cast<unsigned char>(in[i]) << 16) |
                       (static_cast<unsigned char>(in[i + 1]) << 8) |
                       static_cast<unsigned char>(in[i + 2]);
    for (int s = 18; s >= 0; s -= 6) out += abc[(v >> s) & 63];
  }
  if (i < in.size()) {
    unsigned v = static_cast<unsigned char>(in[i]) << 16;
    if (i + 1 < in.size()) v |= static_cast<unsigned char>(in[i + 1]) << 8;
    out += abc[(v >> 18) & 63];
    out += abc[(v >> 12) & 63];
    out += i + 1 < in.size() ? abc[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

HttpReply req(std::uint16_t port, const std::string& method, const std::string& target,
              const json& body, const Headers& h) {
  return http_request(port, method, target, body.is_null() ? "" : body.dump(), h);
}

}  // namespace

TEST_CASE("Open WebUI's Automatic1111 engine: options, sd-models, model switch, txt2img",
          "[blackbox][a1111]") {
  TempDir dir("owui-a1111");
  DaemonProcess d(dir.path, {"--devices", "cpu", "--api-key", "owui-key"});
  // get_automatic1111_api_auth: "Basic " + base64(AUTOMATIC1111_API_AUTH), "user:password".
  const Headers auth = {{"authorization", "Basic " + b64_encode("admin:owui-key")}};
  // No key (Open WebUI sends an empty header when none is configured): refused.
  CHECK(req(d.port(), "GET", "/sdapi/v1/options", nullptr, {{"authorization", ""}}).status == 401);
  CHECK(req(d.port(), "GET", "/sdapi/v1/options", nullptr,
            {{"authorization", "Basic " + b64_encode("admin:wrong")}})
            .status == 401);
  // verify_url
  HttpReply options = req(d.port(), "GET", "/sdapi/v1/options", nullptr, auth);
  REQUIRE(options.status == 200);
  // get_models: {'id': model['title'], 'name': model['model_name']}
  HttpReply models = req(d.port(), "GET", "/sdapi/v1/sd-models", nullptr, auth);
  REQUIRE(models.status == 200);
  const json list = models.json();
  REQUIRE(list.size() == 1);
  const std::string title = list[0]["title"];
  CHECK(list[0]["model_name"].is_string());
  // get_image_model / set_image_model: GET options, compare, POST the whole dict back.
  json opts = options.json();
  CHECK(opts["sd_model_checkpoint"] == title);
  opts["sd_model_checkpoint"] = title;
  opts["some_ui_setting"] = 42;
  CHECK(req(d.port(), "POST", "/sdapi/v1/options", opts, auth).status == 200);
  const json after = req(d.port(), "GET", "/sdapi/v1/options", nullptr, auth).json();
  CHECK(after["sd_model_checkpoint"] == title);
  CHECK(after["some_ui_setting"] == 42);  // kept and echoed
  json bad = opts;
  bad["sd_model_checkpoint"] = "no-such-model.safetensors";
  HttpReply refused = req(d.port(), "POST", "/sdapi/v1/options", bad, auth);
  CHECK(refused.status == 400);
  CHECK(refused.body.find("sd_model_checkpoint") != std::string::npos);

  // image_generations: {prompt, batch_size: n, width, height, steps, negative_prompt}
  const json body = {{"prompt", "a lighthouse at dusk"},
                     {"batch_size", 2},
                     {"width", 64},
                     {"height", 64},
                     {"steps", 3},
                     {"negative_prompt", "blurry"}};
  HttpReply r = req(d.port(), "POST", "/sdapi/v1/txt2img", body, auth);
  REQUIRE(r.status == 200);
  const json res = r.json();
  REQUIRE(res["images"].size() == 2);
  for (const auto& image : res["images"]) {
    const std::string png = b64_decode(image);  // get_image_data: no ',' -> image/png
    const DecodedImage decoded = decode_png(png);
    CHECK(decoded.width == 64);
    CHECK(decoded.height == 64);
  }
  REQUIRE(res["info"].is_string());  // upload metadata: {'info': res['info']}
  const json info = json::parse(res["info"].get<std::string>());
  CHECK(info["all_seeds"].size() == 2);
  CHECK(info["all_seeds"][1] == info["seed"].get<std::uint64_t>() + 1);
  CHECK(info["all_prompts"][0] == "a lighthouse at dusk");
  CHECK(info["negative_prompt"] == "blurry");
  CHECK(info["steps"] == 3);
  CHECK(info["width"] == 64);
  CHECK(info["height"] == 64);
  CHECK(info["batch_size"] == 2);
  CHECK(info["sampler_name"].is_string());
  CHECK(info["sd_model_name"].is_string());
  REQUIRE(info["infotexts"].size() == 2);
  CHECK(info["infotexts"][0].get<std::string>().find("Steps: 3") != std::string::npos);
  CHECK(res["parameters"]["batch_size"] == 2);
  CHECK(res["parameters"]["prompt"] == "a lighthouse at dusk");
  // The same key as a Bearer token works too.
  CHECK(req(d.port(), "GET", "/sdapi/v1/progress", nullptr, {{"Authorization", "Bearer owui-key"}})
            .status == 200);
}

TEST_CASE("SillyTavern's sequence: lists, get/set model, progress, generate, png-info",
          "[blackbox][a1111]") {
  TempDir dir("sillytavern");
  DaemonProcess d(dir.path, {"--devices", "cpu"});
  const Headers auth = {{"Authorization", "Basic " + b64_encode(":")}};  // getBasicAuthHeader("")
  CHECK(req(d.port(), "GET", "/sdapi/v1/options", nullptr, auth).status == 200);  // ping
  // upscalers: data.map(x => x.name) of both lists, "None" first.
  const json upscalers = req(d.port(), "GET", "/sdapi/v1/upscalers", nullptr, auth).json();
  REQUIRE(upscalers.is_array());
  CHECK(upscalers[0]["name"] == "None");
  CHECK(req(d.port(), "GET", "/sdapi/v1/latent-upscale-modes", nullptr, auth).json().is_array());
  CHECK(req(d.port(), "GET", "/sdapi/v1/sd-vae", nullptr, auth).json().is_array());  // x.model_name
  const json samplers = req(d.port(), "GET", "/sdapi/v1/samplers", nullptr, auth).json();
  std::vector<std::string> sampler_names;
  for (const auto& s : samplers) sampler_names.push_back(s["name"]);
  CHECK(std::find(sampler_names.begin(), sampler_names.end(), "DDIM") != sampler_names.end());
  CHECK(std::find(sampler_names.begin(), sampler_names.end(), "Euler a") != sampler_names.end());
  const json schedulers = req(d.port(), "GET", "/sdapi/v1/schedulers", nullptr, auth).json();
  CHECK(schedulers[0]["name"] == "automatic");
  const json models = req(d.port(), "GET", "/sdapi/v1/sd-models", nullptr, auth).json();
  const std::string title = models[0]["title"];  // {value: x.title, text: x.title}
  CHECK(req(d.port(), "GET", "/sdapi/v1/options", nullptr, auth).json()["sd_model_checkpoint"] ==
        title);  // get-model
  // set-model: POST options {sd_model_checkpoint}, then wait for progress 0 and job_count 0.
  CHECK(req(d.port(), "POST", "/sdapi/v1/options", {{"sd_model_checkpoint", title}}, auth).status ==
        200);
  const json idle = req(d.port(), "GET", "/sdapi/v1/progress", nullptr, auth).json();
  CHECK(idle["progress"] == 0.0);
  CHECK(idle["state"]["job_count"] == 0);
  // generate: GET options ('forge_preset' in options: no), then the extension's body, forwarded
  // with SillyTavern's own url and auth fields.
  CHECK_FALSE(
      req(d.port(), "GET", "/sdapi/v1/options", nullptr, auth).json().contains("forge_preset"));
  const json body = {{"url", "http://127.0.0.1:" + std::to_string(d.port())},
                     {"auth", ""},
                     {"prompt", "a (red:1.1) fox, masterpiece"},
                     {"negative_prompt", "lowres, bad anatomy"},
                     {"sampler_name", "DDIM"},
                     {"scheduler", "normal"},
                     {"steps", 3},
                     {"cfg_scale", 7},
                     {"width", 64},
                     {"height", 64},
                     {"restore_faces", false},
                     {"enable_hr", false},
                     {"hr_upscaler", "Latent"},
                     {"hr_scale", 2.0},
                     {"denoising_strength", 0.7},
                     {"hr_second_pass_steps", 0},
                     {"seed", 1234},
                     {"override_settings", {{"CLIP_stop_at_last_layers", 1}}},
                     {"override_settings_restore_afterwards", true},
                     {"clip_skip", 1},
                     {"save_images", true},
                     {"send_images", true},
                     {"do_not_save_grid", false},
                     {"do_not_save_samples", false}};
  HttpReply r = req(d.port(), "POST", "/sdapi/v1/txt2img", body, auth);
  REQUIRE(r.status == 200);
  const json res = r.json();
  REQUIRE(res["images"].size() == 1);  // {format: 'png', data: data.images[0]}
  const std::string png = b64_decode(res["images"][0]);
  const PngChunks chunks = read_png_chunks(png);
  const std::string parameters = chunks.text.at("parameters");
  CHECK(parameters.find("Seed: 1234") != std::string::npos);
  CHECK(parameters.find("Sampler: DDIM") != std::string::npos);
  CHECK(json::parse(res["info"].get<std::string>())["seed"] == 1234);
  CHECK_FALSE(res["parameters"].contains("auth"));  // never echoed
  // png-info on the image it made
  HttpReply info = req(d.port(), "POST", "/sdapi/v1/png-info",
                       {{"image", "data:image/png;base64," + b64_encode(png)}}, auth);
  REQUIRE(info.status == 200);
  CHECK(info.json()["info"] == parameters);
  CHECK(info.json()["parameters"]["Seed"] == "1234");
  CHECK(info.json()["items"].contains("diffusiond"));
  // A full-size image (512x512 of noise: about 1 MB in base64) passes png-info's own body limit,
  // while every other route keeps the 64 KiB one.
  json big = body;
  big["width"] = 512;
  big["height"] = 512;
  big["steps"] = 1;
  HttpReply large = req(d.port(), "POST", "/sdapi/v1/txt2img", big, auth);
  REQUIRE(large.status == 200);
  const std::string large_png =
      "data:image/png;base64," + large.json()["images"][0].get<std::string>();
  REQUIRE(large_png.size() > 64 * 1024);
  HttpReply large_info = req(d.port(), "POST", "/sdapi/v1/png-info", {{"image", large_png}}, auth);
  CHECK(large_info.status == 200);
  CHECK(large_info.json()["parameters"]["Size-1"] == 512);
  json padded = body;
  padded["comments"] = large_png;  // the same bytes where no image belongs
  CHECK(req(d.port(), "POST", "/sdapi/v1/txt2img", padded, auth).status == 413);
  // A field whose effect is missing: 400 naming it; the daemon goes on.
  json hires = body;
  hires["enable_hr"] = true;
  HttpReply no = req(d.port(), "POST", "/sdapi/v1/txt2img", hires, auth);
  CHECK(no.status == 400);
  CHECK(no.json()["error"]["field"] == "enable_hr");
  json cn = body;
  cn["alwayson_scripts"] = {{"controlnet", {{"args", json::array({json::object()})}}}};
  CHECK(req(d.port(), "POST", "/sdapi/v1/txt2img", cn, auth).json()["error"]["field"] ==
        "alwayson_scripts.controlnet");
  // The other lists clients ask for.
  for (const char* path : {"/sdapi/v1/loras", "/sdapi/v1/cmd-flags", "/sdapi/v1/memory",
                           "/sdapi/v1/embeddings", "/sdapi/v1/prompt-styles"})
    CHECK(req(d.port(), "GET", path, nullptr, auth).status == 200);
  CHECK(
      req(d.port(), "GET", "/sdapi/v1/memory", nullptr, auth).json()["ram"]["total"].get<double>() >
      0);
  CHECK(req(d.port(), "GET", "/sdapi/v1/img2img", nullptr, auth).status == 404);
}

TEST_CASE(
    "A1111 progress shows the caller's own work with a preview, and interrupt is scoped to it",
    "[blackbox][a1111]") {
  TempDir dir("a1111-progress");
  DaemonProcess d(dir.path, {"--devices", "cpu", "--api-key", "alice", "--api-key", "bob"});
  const Headers alice = {{"Authorization", "Bearer alice"}};
  const Headers bob = {{"Authorization", "Basic " + b64_encode("bob:bob")}};
  const json body = {{"prompt", "a long one"}, {"steps", 150}, {"width", 128},
                     {"height", 128},          {"n_iter", 2},  {"sampler_name", "Euler a"}};
  auto answer = std::async(std::launch::async,
                           [&] { return req(d.port(), "POST", "/sdapi/v1/txt2img", body, alice); });
  json seen;
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (std::chrono::steady_clock::now() < until) {
    seen = req(d.port(), "GET", "/sdapi/v1/progress", nullptr, alice).json();
    if (seen["state"]["sampling_step"].get<int>() > 2 && seen["current_image"].is_string()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  INFO(seen.dump().substr(0, 400));
  CHECK(seen["state"]["job_count"] == 2);
  CHECK(seen["progress"].get<double>() > 0);
  CHECK(seen["progress"].get<double>() < 1);
  CHECK(seen["state"]["sampling_steps"] == 150);
  REQUIRE(seen["current_image"].is_string());
  const DecodedImage preview = decode_png(b64_decode(seen["current_image"]));
  CHECK(preview.width == 16);  // latent-sized: 128 / 8
  const json skipped =
      req(d.port(), "GET", "/sdapi/v1/progress?skip_current_image=true", nullptr, alice).json();
  CHECK(skipped["current_image"].is_null());
  // Bob sees nothing of Alice's and cannot interrupt it.
  CHECK(req(d.port(), "GET", "/sdapi/v1/progress", nullptr, bob).json()["state"]["job_count"] == 0);
  CHECK(req(d.port(), "POST", "/sdapi/v1/interrupt", nullptr, bob).status == 200);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  CHECK(req(d.port(), "GET", "/sdapi/v1/progress", nullptr, alice).json()["state"]["job_count"] ==
        2);
  // Alice can.
  CHECK(req(d.port(), "POST", "/sdapi/v1/interrupt", nullptr, alice).status == 200);
  HttpReply r = answer.get();
  REQUIRE(r.status == 200);
  CHECK(r.json()["images"].size() < 2);
  const json after = req(d.port(), "GET", "/sdapi/v1/progress", nullptr, alice).json();
  CHECK(after["state"]["interrupted"] == true);
  CHECK(after["state"]["job_count"] == 0);
}

TEST_CASE("Open WebUI's OpenAI engine and the OpenAI dialect: b64_json, url, formats, errors",
          "[blackbox][openai]") {
  TempDir dir("openai");
  DaemonProcess d(dir.path, {"--devices", "cpu", "--api-key", "sk-test"});
  const std::string host = "127.0.0.1:" + std::to_string(d.port());  // as real clients send it
  const Headers auth = {
      {"Authorization", "Bearer sk-test"}, {"Content-Type", "application/json"}, {"Host", host}};
  // Open WebUI: {model, prompt, n, size, response_format: 'b64_json'}; reads data[*].b64_json.
  HttpReply r = req(d.port(), "POST", "/v1/images/generations",
                    {{"model", "dall-e-2"},
                     {"prompt", "a red bicycle"},
                     {"n", 2},
                     {"size", "64x64"},
                     {"response_format", "b64_json"},
                     {"steps", 3}},
                    auth);
  REQUIRE(r.status == 200);
  json res = r.json();
  CHECK(res["created"].is_number_integer());
  CHECK(res["size"] == "64x64");
  CHECK(res["output_format"] == "png");
  CHECK(res["background"] == "opaque");
  REQUIRE(res["data"].size() == 2);
  for (const auto& item : res["data"]) CHECK(decode_png(b64_decode(item["b64_json"])).width == 64);
  // url: fetched with the same Authorization header (get_image_data), content-type image/*.
  r = req(d.port(), "POST", "/v1/images/generations",
          {{"prompt", "a red bicycle"},
           {"size", "64x64"},
           {"response_format", "url"},
           {"output_format", "jpeg"},
           {"output_compression", 80},
           {"quality", "low"}},
          auth);
  REQUIRE(r.status == 200);
  res = r.json();
  const std::string url = res["data"][0]["url"];
  const std::string prefix = "http://127.0.0.1:" + std::to_string(d.port()) + "/jobs/";
  REQUIRE(url.rfind(prefix, 0) == 0);
  HttpReply image = http_request(d.port(), "GET", url.substr(url.find("/jobs/")), "",
                                 {{"Authorization", "Bearer sk-test"}});
  REQUIRE(image.status == 200);
  CHECK(image.header("content-type") == "image/jpeg");
  std::string exif;
  const auto decoded = diffusiond::decode_jpeg(image.body, &exif);
  CHECK(decoded.width == 64);
  CHECK(diffusiond::exif_user_comment(exif).value_or("").find("a red bicycle") == 0);
  // WebP, through b64_json
  r = req(d.port(), "POST", "/v1/images/generations",
          {{"prompt", "a red bicycle"}, {"size", "64x64"}, {"output_format", "webp"}, {"steps", 2}},
          auth);
  REQUIRE(r.status == 200);
  CHECK(r.json()["output_format"] == "webp");
  std::string webp_exif;
  CHECK(diffusiond::decode_webp(b64_decode(r.json()["data"][0]["b64_json"]), &webp_exif).height ==
        64);
  CHECK(diffusiond::exif_user_comment(webp_exif).value_or("").find("Steps: 2") !=
        std::string::npos);
  // models
  const json models = req(d.port(), "GET", "/v1/models", nullptr, auth).json();
  CHECK(models["object"] == "list");
  const std::string id = models["data"][0]["id"];
  CHECK(req(d.port(), "GET", "/v1/models/" + id, nullptr, auth).json()["id"] == id);
  // Errors: OpenAI's shape, the native statuses.
  HttpReply e = req(d.port(), "GET", "/v1/models/nope", nullptr, auth);
  CHECK(e.status == 404);
  CHECK(e.json()["error"]["type"] == "not_found_error");
  e = req(d.port(), "POST", "/v1/images/generations",
          {{"prompt", "x"}, {"background", "transparent"}}, auth);
  CHECK(e.status == 400);
  CHECK(e.json()["error"]["param"] == "background");
  CHECK(e.json()["error"]["type"] == "invalid_request_error");
  CHECK(e.json()["error"]["message"].is_string());
  CHECK(e.json()["error"].contains("code"));
  e = req(d.port(), "POST", "/v1/images/generations", {{"prompt", "x"}, {"size", "100x100"}}, auth);
  CHECK(e.status == 400);
  CHECK(e.json()["error"]["param"] == "width");
  e = req(d.port(), "POST", "/v1/images/generations", {{"prompt", "x"}}, {});
  CHECK(e.status == 401);
  CHECK(e.json()["error"]["type"] == "authentication_error");
  e = req(d.port(), "GET", "/v1/images/generations", nullptr, auth);
  CHECK(e.status == 405);
  CHECK(e.json()["error"].contains("type"));
  // The same images through the native routes: .jpg/.webp next to .png.
  const std::string job = url.substr(url.find("/jobs/") + 6, 16);
  CHECK(http_request(d.port(), "GET", "/jobs/" + job + "/images/0.webp?quality=50", "",
                     {{"Authorization", "Bearer sk-test"}})
            .header("content-type") == "image/webp");
  CHECK(http_request(d.port(), "GET", "/jobs/" + job + "/images/0.jpg?quality=0", "",
                     {{"Authorization", "Bearer sk-test"}})
            .status == 400);
}

TEST_CASE("OpenAI streaming: partial images from live previews, then completed",
          "[blackbox][openai]") {
  TempDir dir("openai-stream");
  DaemonProcess d(dir.path, {"--devices", "cpu"});
  HttpReply r = req(d.port(), "POST", "/v1/images/generations",
                    {{"prompt", "a slow fox"},
                     {"size", "128x128"},
                     {"steps", 60},
                     {"stream", true},
                     {"partial_images", 2}},
                    {});
  REQUIRE(r.status == 200);
  CHECK(r.header("content-type").rfind("text/event-stream", 0) == 0);
  const auto messages = parse_event_stream(r.body);
  std::vector<json> partial, completed;
  for (const auto& m : messages) {
    const json data = json::parse(m.data);
    CHECK(data["type"] == m.event);
    if (m.event == "image_generation.partial_image") partial.push_back(data);
    if (m.event == "image_generation.completed") completed.push_back(data);
  }
  REQUIRE(completed.size() == 1);
  CHECK(decode_png(b64_decode(completed[0]["b64_json"])).width == 128);
  CHECK(completed[0]["size"] == "128x128");
  CHECK(completed[0]["usage"]["total_tokens"].is_number());
  REQUIRE(partial.size() >= 1);
  REQUIRE(partial.size() <= 2);
  for (std::size_t i = 0; i < partial.size(); ++i) {
    CHECK(partial[i]["partial_image_index"] == static_cast<int>(i));
    CHECK(decode_png(b64_decode(partial[i]["b64_json"])).width == 16);  // the latent preview
  }
}

TEST_CASE("OpenAI url answers use --public-url when given", "[blackbox][openai]") {
  TempDir dir("openai-public-url");
  DaemonProcess d(dir.path, {"--devices", "cpu", "--public-url", "https://images.example.org/"});
  HttpReply r = req(d.port(), "POST", "/v1/images/generations",
                    {{"prompt", "x"},
                     {"size", "64x64"},
                     {"steps", 1},
                     {"response_format", "url"},
                     {"output_format", "webp"}},
                    {});
  REQUIRE(r.status == 200);
  const std::string url = r.json()["data"][0]["url"];
  CHECK(url.rfind("https://images.example.org/jobs/", 0) == 0);
  CHECK(url.find("/images/0.webp?quality=100") != std::string::npos);
}
