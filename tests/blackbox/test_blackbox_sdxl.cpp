// The real daemon serving the tiny SDXL fixture (tests/fixtures/tiny-sdxl) and its Turbo variant
// (the fixture with golden/scheduler_turbo/ as its scheduler) over real HTTP: GET /model says the
// family's defaults and presets, and the images equal diffusers' goldens (golden/pipeline*.png)
// within 1/255, with the absent/empty negative prompt kept apart and the micro-conditioning
// fields (the negative ones too, golden/negative_microcond/) recorded in the job and the PNG.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "blackbox_util.h"
#include "png_check.h"
#include "tests/support/model_variant.h"

using namespace diffusiond::testing;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

const fs::path kModel = fs::path(DIFFUSIOND_FIXTURES) / "tiny-sdxl";

json golden(const std::string& name) {
  return json::parse(read_file((kModel / "golden" / (name + ".json")).string()));
}

DecodedImage golden_png(const std::string& name) {
  return decode_png(read_file((kModel / "golden" / (name + ".png")).string()));
}

// POST /generate with Accept: image/png; returns the PNG bytes.
std::string generate_png(std::uint16_t port, const json& body) {
  HttpReply r = http_request(port, "POST", "/generate", body.dump(), {{"Accept", "image/png"}});
  INFO(r.body.substr(0, 300));
  REQUIRE(r.status == 200);
  return r.body;
}

// The golden's call as a request: fields diffusers was given (height/width only when passed).
json golden_request(const json& g, bool with_steps) {
  json body = {{"prompt", g["prompt"]}, {"seed", g["seed"]}};
  if (with_steps) {
    body["steps"] = g["steps"];
    body["guidance_scale"] = g["guidance_scale"];
  }
  if (g["negative_prompt_given"].get<bool>()) body["negative_prompt"] = g["negative_prompt"];
  if (!g["height_width_passed"][0].is_null()) {
    body["width"] = g["width"];
    body["height"] = g["height"];
  }
  return body;
}

fs::path turbo_folder(const fs::path& parent) {
  const fs::path d = parent / "tiny-sdxl-turbo";
  fs::create_directories(d / "scheduler");
  for (const char* c : {"text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "vae",
                        "model_index.json"})
    fs::create_symlink(fs::absolute(kModel / c), d / c);
  fs::copy_file(kModel / "golden" / "scheduler_turbo" / "scheduler_config.json",
                d / "scheduler" / "scheduler_config.json");
  return d;
}

}  // namespace

TEST_CASE("the daemon serves SDXL images equal to diffusers'", "[blackbox][sdxl]") {
  TempDir dir("sdxl");
  DaemonProcess d(dir.path / "data", {"--devices", "cpu"}, kModel);

  json model = get_json(d.port(), "/model");
  CHECK(model["family"] == "sdxl");
  CHECK(model["micro_conditioning"] == true);
  CHECK(model["defaults"]["steps"] == 30);
  CHECK(model["defaults"]["guidance_scale"] == 5.0);
  CHECK(model["defaults"]["scheduler"] == "euler");
  CHECK(model["defaults"]["width"] == 64);
  REQUIRE(model["size_presets"].size() >= 5);
  CHECK(model["size_presets"][0] == json::array({64, 64}));  // 1024² buckets scaled to 64
  CHECK(model["size_presets"][1] == json::array({72, 56}));  // 1152x896

  // Absent negative prompt: zeros (golden "pipeline"), at the model's default size.
  const std::string png = generate_png(d.port(), golden_request(golden("pipeline"), true));
  CHECK(max_abs_diff(decode_png(png), golden_png("pipeline")) <= 1);
  PngChunks chunks = read_png_chunks(png);
  json meta = json::parse(chunks.text["diffusiond"]);
  CHECK(meta["negative_prompt"].is_null());
  CHECK(meta["original_size"] == json::array({64, 64}));
  CHECK(chunks.text["parameters"].find("Original size: 64x64, Crop top left: 0,0, "
                                       "Target size: 64x64") != std::string::npos);

  // A given negative prompt at a non-square size.
  CHECK(max_abs_diff(
            decode_png(generate_png(d.port(), golden_request(golden("pipeline_negative"), true))),
            golden_png("pipeline_negative")) <= 1);

  // An explicit "" (encoded, not zeros) and the micro-conditioning fields.
  const json g = golden("pipeline_microcond");
  json body = golden_request(g, true);
  body["original_size"] = g["original_size"];
  body["crops_coords_top_left"] = g["crops_coords_top_left"];
  body["target_size"] = g["target_size"];
  const std::string micro = generate_png(d.port(), body);
  CHECK(max_abs_diff(decode_png(micro), golden_png("pipeline_microcond")) <= 1);
  // The PNG's JSON chunk names its job.
  const json micro_meta = json::parse(read_png_chunks(micro).text["diffusiond"]);
  REQUIRE(micro_meta["request"].contains("job_id"));
  json job = get_json(d.port(), "/jobs/" + micro_meta["request"]["job_id"].get<std::string>());
  CHECK(job["request"]["negative_prompt"] == "");
  CHECK(job["request"]["original_size"] == json::array({128, 96}));
  CHECK(job["request"]["crops_coords_top_left"] == json::array({16, 8}));
  CHECK(job["request"]["target_size"] == json::array({64, 48}));
  CHECK(read_png_chunks(micro).text["parameters"].find(
            "Original size: 96x128, Crop top left: 16,8, Target size: 48x64") != std::string::npos);

  // The same request with the negative prompt absent is another image (zeros, not "").
  body.erase("negative_prompt");
  CHECK(max_abs_diff(decode_png(generate_png(d.port(), body)), golden_png("pipeline_microcond")) >
        1);

  // Bad micro-conditioning is a 400 naming the field.
  HttpReply bad =
      http_request(d.port(), "POST", "/generate", R"({"prompt":"x","original_size":[64]})");
  CHECK(bad.status == 400);
  CHECK(bad.json()["error"]["field"] == "original_size");
}

TEST_CASE("the daemon: SDXL negative micro-conditioning, batched, equals diffusers'",
          "[blackbox][sdxl]") {
  TempDir dir("sdxl-negmicro");
  DaemonProcess d(dir.path / "data",
                  {"--devices", "cpu", "--max-batch", "2", "--batch-wait-ms", "1500"}, kModel);
  const json g = json::parse(read_file(
      (kModel / "golden" / "negative_microcond" / "pipeline_negative_microcond.json").string()));
  json body = {
      {"prompt", g["prompt"]}, {"negative_prompt", g["negative_prompt"]}, {"seed", g["seed"]},
      {"steps", g["steps"]},   {"guidance_scale", g["guidance_scale"]},   {"width", g["width"]},
      {"height", g["height"]}};
  for (const char* f :
       {"original_size", "crops_coords_top_left", "target_size", "negative_original_size",
        "negative_crops_coords_top_left", "negative_target_size"})
    body[f] = g[f];

  // One negative size alone (or the crops alone): 400 naming the missing size.
  for (const char* given : {"negative_original_size", "negative_crops_coords_top_left"}) {
    json half = {{"prompt", "x"}, {given, g[given]}};
    HttpReply r = http_request(d.port(), "POST", "/generate", half.dump());
    INFO(r.body);
    CHECK(r.status == 400);
    CHECK(r.json()["error"]["field"] == (std::string(given) == "negative_original_size"
                                             ? "negative_target_size"
                                             : "negative_original_size"));
  }

  // n = 2: both images in one UNet batch; image 0 equals diffusers' image alone.
  body["n"] = 2;
  const json job = wait_finished(d.port(), submit(d.port(), body.dump()));
  REQUIRE(job["status"] == "done");
  for (const char* f : {"negative_original_size", "negative_crops_coords_top_left",
                        "negative_target_size", "original_size", "target_size"})
    CHECK(job["request"][f] == g[f]);
  CHECK(job["images"][0]["batch_size"] == 2);
  HttpReply png = http_request(d.port(), "GET", job["images"][0]["url"].get<std::string>());
  REQUIRE(png.status == 200);
  CHECK(max_abs_diff(decode_png(png.body),
                     decode_png(read_file((kModel / "golden" / "negative_microcond" /
                                           "pipeline_negative_microcond.png")
                                              .string()))) <= 1);
  PngChunks chunks = read_png_chunks(png.body);
  const json meta = json::parse(chunks.text["diffusiond"]);
  CHECK(meta["negative_original_size"] == json::array({32, 48}));
  CHECK(meta["negative_crops_coords_top_left"] == json::array({0, 24}));
  CHECK(meta["negative_target_size"] == json::array({48, 80}));
  CHECK(meta["request"]["negative_target_size"] == json::array({48, 80}));
  CHECK(chunks.text["parameters"].find("Negative original size: 48x32, Negative crop top left: "
                                       "0,24, Negative target size: 80x48") != std::string::npos);

  // Two requests with different negative micro-conditioning share one batch; each image equals
  // itself alone (the first: diffusers' golden).
  body["n"] = 1;
  json other = body;
  other["seed"] = 7;
  other["negative_original_size"] = json::array({256, 128});
  other.erase("negative_crops_coords_top_left");  // only the two sizes: crops default [0, 0]
  other["negative_target_size"] = json::array({16, 16});
  const std::string first_id = submit(d.port(), body.dump());
  const std::string other_id = submit(d.port(), other.dump());
  const json first = wait_finished(d.port(), first_id);
  const json second = wait_finished(d.port(), other_id);
  REQUIRE(first["status"] == "done");
  REQUIRE(second["status"] == "done");
  CHECK(first["images"][0]["batch_size"] == 2);
  CHECK(second["images"][0]["batch_size"] == 2);
  CHECK(second["request"]["negative_crops_coords_top_left"] == json::array({0, 0}));
  auto image_of = [&](const json& j) {
    HttpReply r = http_request(d.port(), "GET", j["images"][0]["url"].get<std::string>());
    REQUIRE(r.status == 200);
    return decode_png(r.body);
  };
  CHECK(max_abs_diff(image_of(first),
                     golden_png("negative_microcond/pipeline_negative_microcond")) <= 1);
  const json alone = wait_finished(d.port(), submit(d.port(), other.dump()));
  REQUIRE(alone["status"] == "done");
  CHECK(alone["images"][0]["batch_size"] == 1);
  CHECK(max_abs_diff(image_of(second), image_of(alone)) <= 1);
  // ... and differs from the same request without the negative sizes.
  for (const char* f : {"negative_original_size", "negative_target_size"}) other.erase(f);
  const json plain = wait_finished(d.port(), submit(d.port(), other.dump()));
  REQUIRE(plain["status"] == "done");
  CHECK(max_abs_diff(image_of(plain), image_of(alone)) > 1);
}

TEST_CASE("the daemon serves an SDXL-Turbo folder with its defaults", "[blackbox][sdxl]") {
  TempDir dir("sdxl-turbo");
  const fs::path folder = turbo_folder(dir.path);
  DaemonProcess d(dir.path / "data", {"--devices", "cpu"}, folder);
  json model = get_json(d.port(), "/model");
  CHECK(model["family"] == "sdxl-turbo");
  CHECK(model["defaults"]["steps"] == 1);
  CHECK(model["defaults"]["guidance_scale"] == 0.0);
  CHECK(model["defaults"]["scheduler"] == "euler_a");

  // No steps or guidance in the request: the model's defaults (1 step, guidance 0).
  CHECK(max_abs_diff(decode_png(generate_png(
                         d.port(), golden_request(golden("pipeline_turbo_1step"), false))),
                     golden_png("pipeline_turbo_1step")) <= 1);
  CHECK(max_abs_diff(decode_png(generate_png(
                         d.port(), golden_request(golden("pipeline_turbo_4steps"), true))),
                     golden_png("pipeline_turbo_4steps")) <= 1);
}

TEST_CASE("an SD 1.x daemon refuses SDXL micro-conditioning by name", "[blackbox][sdxl]") {
  TempDir dir("sd1-micro");
  DaemonProcess d(dir.path, {"--devices", "cpu"});
  CHECK(get_json(d.port(), "/model")["family"] == "sd");
  HttpReply r =
      http_request(d.port(), "POST", "/generate", R"({"prompt":"x","target_size":[64,64]})");
  CHECK(r.status == 400);
  CHECK(r.json()["error"]["field"] == "target_size");
  CHECK(r.body.find("SDXL") != std::string::npos);
}

TEST_CASE("the daemon serves an SD-Turbo folder with its defaults", "[blackbox][turbo]") {
  const fs::path sd1 = fs::path(DIFFUSIOND_FIXTURES) / "tiny-sd1";
  const fs::path goldens = sd1 / "golden" / "turbo";
  TempDir dir("sd-turbo");
  ModelVariant folder(sd1, goldens / "scheduler" / "scheduler_config.json", "sd_turbo_daemon");
  DaemonProcess d(dir.path / "data", {"--devices", "cpu"}, folder.path());
  json model = get_json(d.port(), "/model");
  CHECK(model["family"] == "sd-turbo");
  CHECK(model["defaults"]["steps"] == 1);
  CHECK(model["defaults"]["guidance_scale"] == 0.0);
  CHECK(model["defaults"]["scheduler"] == "euler_a");
  for (const char* name : {"pipeline_1step", "pipeline_4steps"}) {
    INFO(name);
    const json g = json::parse(read_file((goldens / (std::string(name) + ".json")).string()));
    json body = {{"prompt", g["prompt"]}, {"seed", g["seed"]}, {"width", 64}, {"height", 64}};
    if (g["steps"] != 1) body["steps"] = g["steps"];  // 1 step: the model's default
    CHECK(max_abs_diff(decode_png(generate_png(d.port(), body)),
                       decode_png(read_file((goldens / (std::string(name) + ".png")).string()))) <=
          1);
  }
}
