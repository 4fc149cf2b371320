// The A1111 and OpenAI dialects' pure parts: sampler/scheduler mapping, the txt2img and
// images.generate bodies (what is accepted silently, what is a 400 naming the field), the
// infotext parser, base64, HTTP Basic passwords and the OpenAI error shape.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include "fake_service.h"
#include "http/a1111_samplers.h"
#include "http/a1111_txt2img.h"
#include "http/auth.h"
#include "http/base64.h"
#include "http/handlers.h"
#include "http/openai_request.h"
#include "server_fixture.h"

using namespace diffusiond;
using namespace diffusiond::http_api;
using nlohmann::json;

namespace {

// The fake with the real registry's names (pipeline/schedulers/registry.cpp).
class RegistryService : public testing::FakeImageService {
 public:
  RegistryService() : FakeImageService(std::filesystem::temp_directory_path()) {}
  ModelInfo model_info() const override {
    ModelInfo m = FakeImageService::model_info();
    m.default_scheduler = "pndm";
    m.default_steps = 50;
    m.schedulers = {{"pndm", {"PLMS", "PNDM"}}, {"ddim", {"DDIM"}},
                    {"euler", {"Euler"}},       {"euler_a", {"Euler a"}},
                    {"dpmpp_2m", {"DPM++ 2M"}}, {"dpmpp_2m_karras", {"DPM++ 2M Karras"}}};
    return m;
  }
  std::optional<std::string> canonical_scheduler(const std::string& name) const override {
    std::string l;
    for (char c : name) l += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    for (const auto& s : model_info().schedulers) {
      if (l == s.name) return s.name;
      for (const auto& a : s.aliases) {
        std::string la;
        for (char c : a) la += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        if (l == la) return s.name;
      }
    }
    return std::nullopt;
  }
};

std::string field_of_error(const std::function<void()>& f) {
  try {
    f();
  } catch (const ServiceError& e) {
    CHECK(e.code() == ErrorCode::invalid_request);
    return e.field();
  }
  return "<no error>";
}

}  // namespace

TEST_CASE("A1111 sampler names and schedules map onto canonical schedulers", "[http][dialects]") {
  RegistryService s;
  using O = std::optional<std::string>;
  CHECK(a1111_scheduler(std::nullopt, std::nullopt, s) == std::nullopt);  // the model's default
  CHECK(a1111_scheduler(O("Euler a"), std::nullopt, s) == "euler_a");
  CHECK(a1111_scheduler(O("Euler a"), O("Automatic"), s) == "euler_a");
  CHECK(a1111_scheduler(O("DDIM"), O("normal"), s) == "ddim");  // SillyTavern's defaults
  CHECK(a1111_scheduler(O("DPM++ 2M"), O("karras"), s) == "dpmpp_2m_karras");
  CHECK(a1111_scheduler(O("DPM++ 2M"), O("automatic"), s) == "dpmpp_2m");
  CHECK(a1111_scheduler(O("DPM++ 2M Karras"), std::nullopt, s) == "dpmpp_2m_karras");  // old name
  CHECK(a1111_scheduler(O("DPM++ 2M Karras"), O("Automatic"), s) == "dpmpp_2m_karras");
  CHECK(a1111_scheduler(O("DPM++ 2M Karras"), O("normal"), s) == "dpmpp_2m");  // field wins
  CHECK(a1111_scheduler(O("dpmpp_2m"), O("Karras"), s) == "dpmpp_2m_karras");
  CHECK(a1111_scheduler(std::nullopt, O("normal"), s) == "pndm");
  CHECK(field_of_error([&] { a1111_scheduler(O("Euler"), O("karras"), s); }) == "scheduler");
  CHECK(field_of_error([&] { a1111_scheduler(O("Euler a Karras"), std::nullopt, s); }) ==
        "scheduler");
  CHECK(field_of_error([&] { a1111_scheduler(O("Euler"), O("sgm_uniform"), s); }) == "scheduler");
  CHECK(field_of_error([&] { a1111_scheduler(O("Restart"), std::nullopt, s); }) == "sampler_name");
  const json samplers = a1111_samplers_json(s.model_info());
  REQUIRE(samplers.size() == 6);
  CHECK(samplers[3]["name"] == "Euler a");
  CHECK(samplers[3]["aliases"][0] == "euler_a");
  const json schedules = a1111_schedulers_json();
  CHECK(schedules[0]["name"] == "automatic");
  CHECK(schedules[2]["label"] == "Karras");
}

TEST_CASE("A1111 txt2img: the fields, their off values, and the effects diffusiond lacks",
          "[http][dialects]") {
  RegistryService s;
  SECTION("what SillyTavern sends by default is accepted, its own url/auth never echoed") {
    const json body = {{"url", "http://127.0.0.1:7860"},
                       {"auth", "user:secret"},
                       {"prompt", "a (cat:1.2)"},
                       {"negative_prompt", "blurry"},
                       {"sampler_name", "DDIM"},
                       {"scheduler", "normal"},
                       {"steps", 20},
                       {"cfg_scale", 7},
                       {"width", 512},
                       {"height", 768},
                       {"restore_faces", false},
                       {"enable_hr", false},
                       {"hr_upscaler", "Latent"},
                       {"hr_scale", 2.0},
                       {"denoising_strength", 0.7},
                       {"hr_second_pass_steps", 0},
                       {"seed", -1},
                       {"override_settings", {{"CLIP_stop_at_last_layers", 1}}},
                       {"override_settings_restore_afterwards", true},
                       {"clip_skip", 1},
                       {"save_images", true},
                       {"send_images", true},
                       {"do_not_save_grid", false},
                       {"do_not_save_samples", false},
                       {"n_iter", 1},
                       {"s_churn", 0.0},
                       {"s_min_uncond", 0.0},
                       {"s_noise", 1.0},
                       {"s_tmax", nullptr},
                       {"s_tmin", 0.0}};
    const A1111Txt2Img t = parse_a1111_txt2img(body, s);
    CHECK(t.request.prompts == std::vector<std::string>{"a (cat:1.2)"});
    CHECK(t.request.negative_prompt == "blurry");
    CHECK(t.request.scheduler == "ddim");
    CHECK(t.request.steps == 20);
    CHECK(t.request.guidance_scale == 7.0);
    CHECK(t.request.width == 512);
    CHECK(t.request.height == 768);
    CHECK_FALSE(t.request.seed.has_value());  // -1: random
    CHECK(t.request.prompt_syntax == "a1111");
    CHECK(t.request.n == 1);
    CHECK_FALSE(t.parameters.contains("url"));
    CHECK_FALSE(t.parameters.contains("auth"));
    CHECK(t.parameters["prompt"] == "a (cat:1.2)");
    CHECK(t.parameters["enable_hr"] == false);
    CHECK(t.parameters["batch_size"] == 1);  // A1111's default filled in
  }
  SECTION("batch_size x n_iter, seed, override_settings.sd_model_checkpoint, empty negative") {
    const A1111Txt2Img t =
        parse_a1111_txt2img({{"prompt", "x"},
                             {"batch_size", 2},
                             {"n_iter", 3},
                             {"seed", 42},
                             {"steps", 4.0},
                             {"override_settings", {{"sd_model_checkpoint", "tiny [abc123]"}}},
                             {"alwayson_scripts", json::object()},
                             {"script_name", nullptr},
                             {"styles", json::array()}},
                            s);
    CHECK(t.request.n == 6);
    CHECK(t.request.seed == 42u);
    CHECK(t.request.steps == 4);
    CHECK(t.request.negative_prompt == "");  // A1111 encodes "" (never SDXL's zeros)
    CHECK(t.checkpoint == "tiny [abc123]");
    CHECK(t.batch_size == 2);
    CHECK(t.n_iter == 3);
  }
  SECTION("an effect diffusiond does not provide is a 400 naming the field") {
    const std::vector<std::pair<json, std::string>> cases = {
        {{{"enable_hr", true}}, "enable_hr"},
        {{{"restore_faces", true}}, "restore_faces"},
        {{{"tiling", true}}, "tiling"},
        {{{"script_name", "X/Y/Z plot"}}, "script_name"},
        {{{"alwayson_scripts", {{"ControlNet", {{"args", json::array({1})}}}}}},
         "alwayson_scripts.ControlNet"},
        {{{"subseed_strength", 0.5}}, "subseed_strength"},
        {{{"seed_resize_from_w", 640}}, "seed_resize_from_w"},
        {{{"eta", 0.3}}, "eta"},
        {{{"s_churn", 1.0}}, "s_churn"},
        {{{"styles", json::array({"cinematic"})}}, "styles"},
        {{{"refiner_checkpoint", "sdxl_refiner"}}, "refiner_checkpoint"},
        {{{"override_settings", {{"CLIP_stop_at_last_layers", 2}}}},
         "override_settings.CLIP_stop_at_last_layers"},
        {{{"override_settings", {{"sd_vae", "vae-ft-mse.safetensors"}}}},
         "override_settings.sd_vae"},
        {{{"clip_skip", 2}}, "clip_skip"},
        {{{"batch_size", 0}}, "batch_size"},
        {{{"steps", "ten"}}, "steps"},
        {{{"seed", -5}}, "seed"},
        {{{"sampler_name", "Restart"}}, "sampler_name"},
    };
    for (const auto& [extra, field] : cases) {
      INFO(extra.dump());
      json body = {{"prompt", "x"}};
      body.update(extra);
      CHECK(field_of_error([&] { parse_a1111_txt2img(body, s); }) == field);
    }
  }
}

TEST_CASE("A1111 infotext parsing", "[http][dialects]") {
  const json p = parse_infotext(
      "a cat\non two lines\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7, "
      "Seed: 42, Size: 512x768, Model: \"tiny, v1\", Version: diffusiond 0.1");
  CHECK(p["Prompt"] == "a cat\non two lines");
  CHECK(p["Negative prompt"] == "blurry");
  CHECK(p["Steps"] == "20");
  CHECK(p["Sampler"] == "Euler a");
  CHECK(p["Size-1"] == 512);
  CHECK(p["Size-2"] == 768);
  CHECK(p["Model"] == "tiny, v1");
  CHECK(p["Version"] == "diffusiond 0.1");
}

TEST_CASE("OpenAI images.generate body", "[http][dialects]") {
  RegistryService s;
  const ModelInfo m = s.model_info();  // default_steps 50
  SECTION("defaults") {
    const auto r = parse_openai_image_request({{"prompt", "a fox"}}, m);
    CHECK(r.request.prompts == std::vector<std::string>{"a fox"});
    CHECK_FALSE(r.url);
    CHECK(r.format == ImageFormat::png);
    CHECK(r.quality == "high");
    CHECK_FALSE(r.request.steps.has_value());
    CHECK_FALSE(r.request.width.has_value());
    CHECK_FALSE(r.request.negative_prompt.has_value());
  }
  SECTION("every field") {
    const auto r = parse_openai_image_request({{"prompt", "a fox"},
                                               {"model", "gpt-image-1"},
                                               {"n", 2},
                                               {"size", "512x768"},
                                               {"quality", "low"},
                                               {"response_format", "url"},
                                               {"output_format", "webp"},
                                               {"output_compression", 80},
                                               {"background", "opaque"},
                                               {"user", "u1"},
                                               {"moderation", "low"},
                                               {"style", "natural"},
                                               {"stream", true},
                                               {"partial_images", 2}},
                                              m);
    CHECK_FALSE(r.request.model.has_value());  // OpenAI's own names: the default model
    CHECK(r.request.n == 2);
    CHECK(r.request.width == 512);
    CHECK(r.request.height == 768);
    CHECK(r.request.steps == 13);  // low: ceil(50 / 4)
    CHECK(r.url);
    CHECK(r.format == ImageFormat::webp);
    CHECK(r.compression == 80);
    CHECK(r.stream);
    CHECK(r.partial_images == 2);
    CHECK(parse_openai_image_request({{"prompt", "x"}, {"quality", "medium"}}, m).request.steps ==
          25);
    CHECK(parse_openai_image_request({{"prompt", "x"}, {"model", "tiny"}}, m).request.model ==
          "tiny");
  }
  SECTION("refusals name the parameter") {
    const std::vector<std::pair<json, std::string>> cases = {
        {{{"background", "transparent"}}, "background"},
        {{{"size", "big"}}, "size"},
        {{{"size", "512x"}}, "size"},
        {{{"output_format", "gif"}}, "output_format"},
        {{{"response_format", "file"}}, "response_format"},
        {{{"partial_images", 4}}, "partial_images"},
        {{{"output_compression", 101}}, "output_compression"},
        {{{"cfg_scale", 7}}, "cfg_scale"},
        {{{"n", "two"}}, "n"},
    };
    for (const auto& [extra, field] : cases) {
      INFO(extra.dump());
      json body = {{"prompt", "x"}};
      body.update(extra);
      CHECK(field_of_error([&] { parse_openai_image_request(body, m); }) == field);
    }
    CHECK(field_of_error([&] { parse_openai_image_request(json::object(), m); }) == "prompt");
  }
}

TEST_CASE("base64, Basic passwords and the OpenAI error shape", "[http][dialects]") {
  for (const std::string& s :
       std::vector<std::string>{"", "f", "fo", "foo", "foob", std::string("\0\xff\x10", 3)})
    CHECK(base64_decode(base64_encode(s)) == s);
  CHECK(base64_encode("diffusiond") == "ZGlmZnVzaW9uZA==");
  CHECK(base64_decode("ZGlmZnVzaW9uZA") == "diffusiond");  // unpadded
  CHECK_FALSE(base64_decode("not base64!").has_value());
  CHECK(basic_password("Basic " + base64_encode("user:s3cret:x")) == "s3cret:x");
  CHECK(basic_password("basic " + base64_encode(":key")) == "key");
  CHECK(basic_password("Bearer abc").empty());
  CHECK(basic_password("Basic " + base64_encode("nocolon")).empty());

  Response r = error_response(http::status::bad_request, "invalid_field", "bad width", "width");
  r = openai_error_shape(std::move(r));
  const json e = json::parse(std::get<StringResponse>(r).body());
  CHECK(e["error"]["message"] == "bad width");
  CHECK(e["error"]["type"] == "invalid_request_error");
  CHECK(e["error"]["param"] == "width");
  CHECK(e["error"]["code"] == "invalid_field");
  Response ok = json_response(http::status::ok, {{"a", 1}});
  CHECK(json::parse(std::get<StringResponse>(openai_error_shape(std::move(ok))).body()) ==
        json{{"a", 1}});  // not an error: unchanged
}
