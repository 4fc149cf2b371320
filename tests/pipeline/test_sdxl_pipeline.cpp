// The SDXL txt2img pipeline against the tiny-sdxl fixture's goldens (diffusers'
// StableDiffusionXLPipeline; each golden/pipeline*.json says how it was run): an absent negative
// prompt (zeros), a given one at a non-square size, an explicit "" with micro-conditioning, and
// the Turbo use (EulerAncestral trailing, guidance 0, 1 and 4 steps); batching independence.
#include <catch2/catch.hpp>

#include <unistd.h>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <torch/torch.h>

#include "pipeline/media/config_util.h"
#include "pipeline/media/png.h"
#include "pipeline/media/posix_fs.h"
#include "pipeline/model_family.h"
#include "pipeline/model_folder.h"
#include "pipeline/safetensors.h"
#include "pipeline/schedulers/scheduler.h"
#include "pipeline/txt2img.h"
#include "tests/golden_compare.h"
#include "tests/support/model_variant.h"

using namespace diffusiond;
namespace fs = std::filesystem;

using diffusiond::testing::max_pixel_difference;
using diffusiond::testing::read_png;
using diffusiond::testing::relative_l2;

namespace {

const fs::path kModel = fs::path(DIFFUSIOND_FIXTURES) / "tiny-sdxl";

// The fixture with golden/scheduler_turbo/ as its scheduler (the Turbo goldens' model variant).
const fs::path& turbo_folder() {
  static const testing::ModelVariant variant(
      kModel, kModel / "golden" / "scheduler_turbo" / "scheduler_config.json", "sdxl_turbo");
  return variant.path();
}

StableDiffusion& pipeline(bool turbo) {
  static std::unique_ptr<StableDiffusion> base =
      StableDiffusion::load(resolve_model(kModel.string()), torch::kCPU, torch::kFloat32);
  static std::unique_ptr<StableDiffusion> fast =
      StableDiffusion::load(resolve_model(turbo_folder().string()), torch::kCPU, torch::kFloat32);
  return turbo ? *fast : *base;
}

std::optional<std::array<int, 2>> pair(const nlohmann::json& meta, const char* key) {
  auto v = meta.at(key).get<std::vector<int>>();
  return std::array<int, 2>{v.at(0), v.at(1)};
}

// The golden's call, as diffusers got it: height/width and the micro-conditioning only when the
// golden passed them (height_width_passed; microcond), the negative prompt only when given.
Txt2ImgParams golden_params(const nlohmann::json& meta, const std::string& name) {
  Txt2ImgParams p;
  p.prompts = {meta.at("prompt").get<std::string>()};
  if (meta.at("negative_prompt_given").get<bool>())
    p.negative_prompt = meta.at("negative_prompt").get<std::string>();
  p.seed = meta.at("seed").get<std::uint64_t>();
  p.steps = meta.at("steps").get<int>();
  p.guidance_scale = meta.at("guidance_scale").get<double>();
  p.width = meta.at("width").get<int>();
  p.height = meta.at("height").get<int>();
  if (name == "pipeline_microcond") {
    p.original_size = pair(meta, "original_size");
    p.crops_coords_top_left = pair(meta, "crops_coords_top_left");
    p.target_size = pair(meta, "target_size");
  }
  return p;
}

void check_golden(const std::string& name, bool turbo) {
  INFO("golden " << name);
  const auto meta = read_json_file(kModel / "golden" / (name + ".json"));
  auto golden = SafetensorsFile::open(kModel / "golden" / (name + ".safetensors"));
  std::map<std::string, torch::Tensor> dumped;
  auto images = pipeline(turbo).generate(
      golden_params(meta, name), {},
      [&](const std::string& n, const torch::Tensor& v) { dumped[n] = v; });
  for (const auto& info : golden->tensors()) {
    if (info.name.rfind("step_noise.", 0) == 0) continue;       // drawn inside the sampler
    if (info.name.rfind("vae_fp16_upcast.", 0) == 0) continue;  // a float16 VAE (own test)
    INFO("golden tensor " << info.name);
    REQUIRE(dumped.count(info.name) == 1);
    const auto expected = golden->tensor(info.name);
    REQUIRE(dumped[info.name].sizes() == expected.sizes());
    if (expected.abs().max().item<double>() == 0.0) {
      CHECK(dumped[info.name].abs().max().item<double>() == 0.0);
    } else {
      CHECK(relative_l2(dumped[info.name], expected) <= 1e-5);
    }
  }
  REQUIRE(images.size() == 1);
  CHECK(max_pixel_difference(images[0], read_png(kModel / "golden" / (name + ".png"))) <= 1);
}

}  // namespace

TEST_CASE("SDXL folders load as SDXL with their family's defaults", "[pipeline][sdxl]") {
  const auto base = resolve_model(kModel.string());
  CHECK(is_sdxl(base));
  CHECK(model_family(base) == ModelFamily::kSDXL);
  CHECK(family_defaults(ModelFamily::kSDXL).steps == 30);
  CHECK(family_defaults(ModelFamily::kSDXL).guidance_scale == 5.0);
  CHECK(force_zeros_for_empty_prompt(base));
  const auto turbo = resolve_model(turbo_folder().string());
  CHECK(model_family(turbo) == ModelFamily::kSDXLTurbo);
  CHECK(family_defaults(ModelFamily::kSDXLTurbo).steps == 1);
  CHECK(family_defaults(ModelFamily::kSDXLTurbo).guidance_scale == 0.0);
  const auto sd1 = resolve_model((fs::path(DIFFUSIOND_FIXTURES) / "tiny-sd1").string());
  CHECK_FALSE(is_sdxl(sd1));
  CHECK(model_family(sd1) == ModelFamily::kSD);
  CHECK(family_defaults(ModelFamily::kSD).steps == 50);

  auto& pipe = pipeline(false);
  CHECK(pipe.is_xl());
  CHECK(pipe.default_scheduler() == "euler");
  CHECK(pipe.default_width() == 64);  // unet sample_size 8 x vae factor 8
  CHECK(pipeline(true).default_scheduler() == "euler_a");
}

TEST_CASE("SDXL: absent negative prompt -> zeros, reproduces diffusers step by step",
          "[pipeline][golden][sdxl]") {
  check_golden("pipeline", false);
}

TEST_CASE("SDXL: a given negative prompt at a non-square size", "[pipeline][golden][sdxl]") {
  check_golden("pipeline_negative", false);
}

TEST_CASE("SDXL: an explicit empty negative prompt is encoded, and micro-conditioning",
          "[pipeline][golden][sdxl]") {
  check_golden("pipeline_microcond", false);
}

TEST_CASE("SDXL-Turbo: euler_a trailing, guidance 0, 1 step", "[pipeline][golden][sdxl]") {
  check_golden("pipeline_turbo_1step", true);
}

TEST_CASE("SDXL-Turbo: euler_a trailing, guidance 0, 4 steps", "[pipeline][golden][sdxl]") {
  check_golden("pipeline_turbo_4steps", true);
}

TEST_CASE("SDXL: absent and empty negative prompts differ", "[pipeline][sdxl]") {
  auto& pipe = pipeline(false);
  Txt2ImgParams p;
  p.prompts = {"a red cube"};
  p.steps = 2;
  p.guidance_scale = 5.0;
  p.width = p.height = 64;
  p.seed = 3;
  torch::Tensor absent, empty;
  pipe.generate(p, {}, [&](const std::string& n, const torch::Tensor& v) {
    if (n == "add_text_embeds") absent = v;
  });
  p.negative_prompt = "";
  pipe.generate(p, {}, [&](const std::string& n, const torch::Tensor& v) {
    if (n == "add_text_embeds") empty = v;
  });
  REQUIRE(absent.defined());
  REQUIRE(empty.defined());
  CHECK(absent[0].abs().max().item<double>() == 0.0);
  CHECK(empty[0].abs().max().item<double>() > 0.0);
  CHECK(torch::equal(absent[1], empty[1]));  // the prompt's row is the same
}

TEST_CASE("SDXL: n = 2 in one batch equals two single runs", "[pipeline][sdxl]") {
  for (const bool turbo : {false, true}) {
    INFO("turbo " << turbo);
    auto& pipe = pipeline(turbo);
    Txt2ImgParams p;
    p.prompts = {"a lighthouse made of glass"};
    p.steps = turbo ? 2 : 3;
    p.guidance_scale = turbo ? 0.0 : 5.0;
    p.width = 96;
    p.height = 64;
    p.seed = 11;
    p.num_images_per_prompt = 2;
    auto batch = pipe.generate(p);
    REQUIRE(batch.size() == 2);
    p.num_images_per_prompt = 1;
    auto first = pipe.generate(p);
    p.seed = 12;
    auto second = pipe.generate(p);
    CHECK(max_pixel_difference(batch[0], first[0]) <= 1);
    CHECK(max_pixel_difference(batch[1], second[0]) <= 1);
    CHECK(max_pixel_difference(batch[0], batch[1]) > 1);
  }
}

TEST_CASE("SDXL: every sampler runs", "[pipeline][sdxl]") {
  auto& pipe = pipeline(false);
  Txt2ImgParams p;
  p.prompts = {"a red cube"};
  p.steps = 3;
  p.guidance_scale = 5.0;
  p.width = p.height = 64;
  for (const auto& entry : scheduler_registry()) {
    INFO("scheduler " << entry.name);
    p.scheduler = entry.name;
    auto images = pipe.generate(p);
    REQUIRE(images.size() == 1);
    CHECK(images[0].pixels.size() == 64u * 64u * 3u);
  }
}

TEST_CASE("micro-conditioning is refused by SD 1.x/2.x and bounded for SDXL", "[pipeline][sdxl]") {
  Txt2ImgParams p;
  p.prompts = {"x"};
  p.steps = 1;
  p.width = p.height = 64;
  p.original_size = std::array<int, 2>{0, 64};
  CHECK_THROWS_WITH(pipeline(false).generate(p), Catch::Contains("original_size"));
  auto sd1 =
      StableDiffusion::load(resolve_model((fs::path(DIFFUSIOND_FIXTURES) / "tiny-sd1").string()),
                            torch::kCPU, torch::kFloat32);
  p.original_size = std::array<int, 2>{64, 64};
  CHECK_THROWS_WITH(sd1->generate(p), Catch::Contains("SDXL models only"));
}

TEST_CASE("diffusiond generate: SDXL micro-conditioning and an explicit empty negative prompt",
          "[pipeline][cli][sdxl]") {
  const char* bin = std::getenv("DIFFUSIOND_BIN");
  REQUIRE(bin != nullptr);
  const auto g = read_json_file(kModel / "golden" / "pipeline_microcond.json");
  const auto dir = fs::temp_directory_path();
  const auto out = dir / ("sdxl_cli_" + std::to_string(::getpid()) + ".png");
  const std::string command =
      std::string(bin) + " generate --model " + kModel.string() + " --prompt \"" +
      g.at("prompt").get<std::string>() + "\" --negative-prompt \"\" --seed 2024 --steps 5 " +
      "--guidance 4 --width 64 --height 64 --original-size 128 96 --crops-coords-top-left 16 8 " +
      "--target-size 64 48 -o " + out.string() + " > " + out.string() + ".log 2>&1";
  INFO(command);
  REQUIRE(std::system(command.c_str()) == 0);
  CHECK(max_pixel_difference(read_png(out),
                             read_png(kModel / "golden" / "pipeline_microcond.png")) <= 1);
  std::ifstream in(out, std::ios::binary);
  std::stringstream bytes;
  bytes << in.rdbuf();
  const auto chunks = read_png_text_chunks(bytes.str());
  REQUIRE(chunks.size() == 2);
  const auto meta = nlohmann::json::parse(chunks[1].text);
  CHECK(meta["negative_prompt"] == "");
  CHECK(meta["original_size"] == nlohmann::json::array({128, 96}));
  CHECK(meta["request"]["target_size"] == nlohmann::json::array({64, 48}));
  fs::remove(out);
  fs::remove(out.string() + ".log");
}

TEST_CASE("diffusiond generate: an SDXL-Turbo folder with its defaults (1 step, guidance 0)",
          "[pipeline][cli][sdxl]") {
  const char* bin = std::getenv("DIFFUSIOND_BIN");
  REQUIRE(bin != nullptr);
  const auto g = read_json_file(kModel / "golden" / "pipeline_turbo_1step.json");
  const auto out = fs::temp_directory_path() / ("turbo_cli_" + std::to_string(::getpid()) + ".png");
  const std::string command = std::string(bin) + " generate --model " + turbo_folder().string() +
                              " --prompt \"" + g.at("prompt").get<std::string>() +
                              "\" --seed 5 -o " + out.string() + " > " + out.string() + ".log 2>&1";
  INFO(command);
  REQUIRE(std::system(command.c_str()) == 0);
  CHECK(max_pixel_difference(read_png(out),
                             read_png(kModel / "golden" / "pipeline_turbo_1step.png")) <= 1);
  std::ifstream in(out, std::ios::binary);
  std::stringstream bytes;
  bytes << in.rdbuf();
  const auto chunks = read_png_text_chunks(bytes.str());
  REQUIRE(chunks.size() == 2);
  CHECK_THAT(chunks[0].text, Catch::Contains("Steps: 1, Sampler: Euler a, CFG scale: 0.0"));
  fs::remove(out);
  fs::remove(out.string() + ".log");
}
