// Several models in one real daemon (--models-dir), over real HTTP: tiny-sd1 and tiny-sdxl side
// by side (the SDXL one in a sub-folder, "sdxl/tiny-sdxl"), a broken diffusers folder and a
// single-file checkpoint. Requests alternating between the two models on cpu*2 give the images
// `diffusiond generate --model` gives for each; at --max-loaded-models 1 the device evicts and
// reloads (seen in /devices and /metrics) and the images stay right; an unknown model is a 400
// unknown_model; a model that fails to load fails its job with the loader's message; the PNGs
// carry A1111's "Model hash" (the UNet weights' sha256, first 10 hex digits) and the JSON the
// full sha256.
#include <catch2/catch.hpp>

#include <openssl/evp.h>
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>

#include "blackbox_util.h"
#include "png_check.h"
#include "prometheus_text.h"

using namespace diffusiond::testing;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

const fs::path kSd1 = fs::path(DIFFUSIOND_FIXTURES) / "tiny-sd1";
const fs::path kSdxl = fs::path(DIFFUSIOND_FIXTURES) / "tiny-sdxl";

std::string sha256_hex(const std::string& bytes) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  EVP_Digest(bytes.data(), bytes.size(), digest, &size, EVP_sha256(), nullptr);
  std::string out;
  char hex[3];
  for (unsigned i = 0; i < size; ++i) {
    std::snprintf(hex, sizeof hex, "%02x", digest[i]);
    out += hex;
  }
  return out;
}

std::int64_t weights_bytes(const fs::path& model) {
  std::int64_t total = 0;
  for (const char* c : {"unet", "vae", "text_encoder", "text_encoder_2"}) {
    for (const char* f : {"diffusion_pytorch_model.safetensors", "model.safetensors"})
      if (fs::exists(model / c / f))
        total += static_cast<std::int64_t>(fs::file_size(model / c / f));
  }
  return total;
}

// models/: tiny-sd1, sdxl/tiny-sdxl, broken (tiny-sd1 with a UNet weights file that is not
// safetensors), single.safetensors (a single-file checkpoint) and clutter that is not a model.
fs::path make_models_dir(const fs::path& root) {
  const fs::path dir = root / "models";
  fs::create_directories(dir / "sdxl");
  fs::create_directory_symlink(fs::absolute(kSd1), dir / "tiny-sd1");
  fs::create_directory_symlink(fs::absolute(kSdxl), dir / "sdxl" / "tiny-sdxl");
  const fs::path broken = dir / "broken";
  fs::create_directories(broken / "unet");
  for (const char* c : {"text_encoder", "tokenizer", "vae", "scheduler", "model_index.json"})
    fs::create_symlink(fs::absolute(kSd1 / c), broken / c);
  fs::copy_file(kSd1 / "unet" / "config.json", broken / "unet" / "config.json");
  std::ofstream(broken / "unet" / "diffusion_pytorch_model.safetensors") << "not safetensors";
  std::ofstream(dir / "single.safetensors") << "a stand-in single-file checkpoint";
  std::ofstream(dir / "notes.txt") << "not a model";
  return dir;
}

// `diffusiond generate --model MODEL` for one image; returns its decoded PNG.
DecodedImage generate_twin(const fs::path& out_dir, const fs::path& model,
                           const std::string& prompt, int seed, int steps) {
  const fs::path out =
      out_dir / ("twin-" + model.filename().string() + "-" + std::to_string(seed) + ".png");
  const std::string cmd = "'" + daemon_binary().string() + "' generate --model '" + model.string() +
                          "' --prompt '" + prompt + "' --seed " + std::to_string(seed) +
                          " --steps " + std::to_string(steps) + " -o '" + out.string() + "' > '" +
                          out.string() + ".log' 2>&1";
  const int rc = std::system(cmd.c_str());
  INFO(cmd);
  REQUIRE(rc == 0);
  return decode_png(read_file(out.string()));
}

std::string image_bytes(std::uint16_t port, const json& job, int k = 0) {
  HttpReply r = http_request(port, "GET", job["images"][k]["url"].get<std::string>());
  REQUIRE(r.status == 200);
  return r.body;
}

json only_device(std::uint16_t port) {
  const json devices = get_json(port, "/devices")["devices"];
  if (devices.size() != 1) throw std::runtime_error("not one device: " + devices.dump());
  return devices[0];
}

}  // namespace

TEST_CASE("a models dir: GET /models, alternating models on cpu*2, each its generate twin",
          "[blackbox][models]") {
  TempDir dir("models");
  const fs::path models = make_models_dir(dir.path);
  DaemonProcess d(
      dir.path / "data",
      {"--devices", "cpu*2", "--models-dir", models.string(), "--max-loaded-models", "2"},
      "tiny-sd1");  // --model names an entry of the dir

  // GET /models: every entry, sorted by name, the clutter left out.
  const json listing = get_json(d.port(), "/models");
  CHECK(listing["default"] == "tiny-sd1");
  std::map<std::string, json> by_name;
  std::vector<std::string> names;
  for (const auto& m : listing["models"]) {
    names.push_back(m["name"]);
    by_name[m["name"]] = m;
  }
  CHECK(names == std::vector<std::string>{"broken", "sdxl/tiny-sdxl", "single", "tiny-sd1"});
  CHECK(by_name["tiny-sd1"]["format"] == "diffusers");
  CHECK(by_name["tiny-sd1"]["family"] == "sd");
  CHECK(by_name["tiny-sd1"]["is_default"] == true);
  CHECK(by_name["tiny-sd1"]["size_bytes"] == weights_bytes(kSd1));
  CHECK(by_name["sdxl/tiny-sdxl"]["family"] == "sdxl");
  CHECK(by_name["sdxl/tiny-sdxl"]["size_bytes"] == weights_bytes(kSdxl));
  CHECK(by_name["sdxl/tiny-sdxl"]["defaults"]["steps"] == 30);
  CHECK(by_name["single"]["format"] == "single_file");
  CHECK(by_name["single"]["file_name"] == "single.safetensors");
  CHECK(by_name["single"]["size_bytes"] == 33);
  const auto loaded_on = by_name["tiny-sd1"]["loaded_on"];
  CHECK(loaded_on == json::array({"cpu:0", "cpu:1"}));  // the start-up load
  CHECK(by_name["sdxl/tiny-sdxl"]["loaded_on"] == json::array());
  CHECK(get_json(d.port(), "/model")["name"] == "tiny-sd1");  // GET /model: the default

  // Alternating requests; the SDXL one named by its A1111-style file name.
  struct Ask {
    std::string model;
    fs::path folder;
    int seed;
  };
  const std::vector<Ask> asks = {{"tiny-sd1", kSd1, 11},
                                 {"tiny-sdxl", kSdxl, 12},
                                 {"", kSd1, 13},
                                 {"sdxl/tiny-sdxl", kSdxl, 14}};
  std::vector<std::string> ids;
  for (const auto& a : asks) {
    json body = {{"prompt", "a lighthouse"}, {"seed", a.seed}, {"steps", 3}};
    if (!a.model.empty()) body["model"] = a.model;
    ids.push_back(submit(d.port(), body.dump()));
  }
  for (std::size_t i = 0; i < asks.size(); ++i) {
    const json job = wait_finished(d.port(), ids[i]);
    INFO(job.dump());
    REQUIRE(job["status"] == "done");
    const bool xl = asks[i].folder == kSdxl;
    CHECK(job["model"] == (xl ? "sdxl/tiny-sdxl" : "tiny-sd1"));
    CHECK(job["request"]["guidance_scale"] == (xl ? 5.0 : 7.5));  // that model's own defaults
    CHECK(job["request"]["scheduler"] ==
          (xl ? by_name["sdxl/tiny-sdxl"] : by_name["tiny-sd1"])["defaults"]["scheduler"]);
    const std::string bytes = image_bytes(d.port(), job);
    const DecodedImage served = decode_png(bytes);
    const DecodedImage twin =
        generate_twin(dir.path, asks[i].folder, "a lighthouse", asks[i].seed, 3);
    REQUIRE(served.width == twin.width);
    CHECK(max_abs_diff(served, twin) == 0);
    // A1111's Model hash: the first 10 hex digits of the UNet weights' sha256.
    const std::string sha = sha256_hex(
        read_file((asks[i].folder / "unet" / "diffusion_pytorch_model.safetensors").string()));
    const auto chunks = read_png_chunks(bytes);
    CHECK_THAT(chunks.text.at("parameters"),
               Catch::Contains("Model hash: " + sha.substr(0, 10) +
                               ", Model: " + job["model"].get<std::string>()));
    const json meta = json::parse(chunks.text.at("diffusiond"));
    CHECK(meta["model"]["sha256"] == sha);
    CHECK(meta["model"]["hash"] == sha.substr(0, 10));
  }
  // Now both are loaded; the hash is listed too.
  const json after = get_json(d.port(), "/models");
  for (const auto& m : after["models"])
    if (m["name"] == "sdxl/tiny-sdxl") {
      CHECK_FALSE(m["loaded_on"].empty());
      CHECK(m["hash"].is_string());
      CHECK(m["title"] == "sdxl/tiny-sdxl [" + m["hash"].get<std::string>() + "]");
    }

  // An unknown model: 400 unknown_model naming a few known ones.
  HttpReply r = http_request(d.port(), "POST", "/generate",
                             json{{"prompt", "x"}, {"model", "no-such-model"}}.dump());
  CHECK(r.status == 400);
  CHECK(r.json()["error"]["code"] == "unknown_model");
  CHECK_THAT(r.json()["error"]["message"].get<std::string>(),
             Catch::Contains("no-such-model") && Catch::Contains("tiny-sd1"));

  // A model that fails to load fails its job with the loader's message; the devices stay.
  const json broken = wait_finished(
      d.port(), submit(d.port(), json{{"prompt", "x"}, {"model", "broken"}, {"n", 2}}.dump()));
  CHECK(broken["status"] == "failed");
  CHECK_THAT(broken["error"].get<std::string>(),
             Catch::Contains("cannot load model 'broken'") &&
                 Catch::Contains("diffusion_pytorch_model.safetensors"));
  const json single = wait_finished(
      d.port(), submit(d.port(), json{{"prompt", "x"}, {"model", "single.safetensors"}}.dump()));
  CHECK(single["status"] == "failed");
  CHECK_THAT(single["error"].get<std::string>(), Catch::Contains("single.safetensors"));
  const json devices_reply = get_json(d.port(), "/devices");
  for (const auto& dev : devices_reply["devices"]) CHECK(dev["healthy"] == true);
  CHECK(get_json(d.port(), "/readyz")["status"] == "ready");
  CHECK(wait_finished(d.port(),
                      submit(d.port(), json{{"prompt", "x"}, {"steps", 2}}.dump()))["status"] ==
        "done");
}

TEST_CASE("at --max-loaded-models 1 a device evicts and reloads, images stay right",
          "[blackbox][models]") {
  TempDir dir("models-evict");
  const fs::path models = make_models_dir(dir.path);
  DaemonProcess d(dir.path / "data",
                  {"--devices", "cpu", "--models-dir", models.string(), "--max-loaded-models", "1"},
                  "tiny-sd1");
  auto run = [&](const std::string& model, int seed) {
    const json job = wait_finished(
        d.port(),
        submit(d.port(),
               json{{"prompt", "a boat"}, {"seed", seed}, {"steps", 3}, {"model", model}}.dump()));
    REQUIRE(job["status"] == "done");
    return decode_png(image_bytes(d.port(), job));
  };
  CHECK(only_device(d.port())["models"] == json::array({"tiny-sd1"}));
  const DecodedImage first = run("tiny-sd1", 5);
  const DecodedImage xl = run("sdxl/tiny-sdxl", 6);
  json dev = only_device(d.port());
  CHECK(dev["models"] == json::array({"sdxl/tiny-sdxl"}));
  CHECK(dev["model_evictions"] == 1);
  const DecodedImage again = run("tiny-sd1", 5);  // reloaded after its eviction
  dev = only_device(d.port());
  CHECK(dev["models"] == json::array({"tiny-sd1"}));
  CHECK(dev["model_loads"] == 3);
  CHECK(dev["model_evictions"] == 2);
  CHECK(max_abs_diff(first, again) == 0);
  CHECK(max_abs_diff(first, generate_twin(dir.path, kSd1, "a boat", 5, 3)) == 0);
  CHECK(max_abs_diff(xl, generate_twin(dir.path, kSdxl, "a boat", 6, 3)) == 0);
  const MetricFamilies metrics =
      parse_prometheus_text(http_request(d.port(), "GET", "/metrics").body);
  const std::string name = only_device(d.port())["name"];
  CHECK(metrics.value("diffusiond_device_model_evictions_total", {{"device", name}}) == 2);
  CHECK(metrics.value("diffusiond_device_model_loads_total", {{"device", name}}) == 3);
  CHECK(metrics.value("diffusiond_device_models_loaded", {{"device", name}}) == 1);
}

TEST_CASE("a single-file default model beside a models dir serves diffusers' golden image",
          "[blackbox][models][single_file]") {
  const fs::path extras = fs::path(DIFFUSIOND_FIXTURES) / "tiny-sd1-extras";
  const json golden =
      json::parse(read_file((extras / "golden" / "single_file.json").string()))["cases"][0];
  TempDir dir("models-single");
  const fs::path models = dir.path / "models";
  fs::create_directories(models);
  fs::create_directory_symlink(fs::absolute(kSdxl), models / "tiny-sdxl");
  DaemonProcess d(dir.path / "data",
                  {"--devices", "cpu", "--models-dir", models.string(), "--model-config",
                   fs::absolute(kSd1).string()},
                  extras / golden["file"].get<std::string>());
  const json listing = get_json(d.port(), "/models");
  REQUIRE(listing["models"].size() == 2);
  const json& first = listing["models"][0];
  CHECK(first["is_default"] == true);
  CHECK(first["format"] == "single_file");
  CHECK(first["family"] == "sd");
  json body = {{"prompt", golden["prompt"]},
               {"negative_prompt", golden["negative_prompt"]},
               {"seed", golden["seed"]},
               {"steps", golden["steps"]},
               {"guidance_scale", golden["guidance_scale"]},
               {"width", golden["width"]},
               {"height", golden["height"]},
               {"scheduler", golden["scheduler"]}};
  HttpReply r = http_request(d.port(), "POST", "/generate", body.dump(), {{"Accept", "image/png"}});
  INFO(r.body.substr(0, 300));
  REQUIRE(r.status == 200);
  CHECK(max_abs_diff(decode_png(r.body),
                     decode_png(read_file((extras / "golden" / "single_file.png").string()))) <= 1);
  // The other model of the dir still serves next to it.
  body["model"] = "tiny-sdxl";
  body.erase("scheduler");
  body.erase("negative_prompt");
  CHECK(
      http_request(d.port(), "POST", "/generate", body.dump(), {{"Accept", "image/png"}}).status ==
      200);
}
