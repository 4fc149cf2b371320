// SD-Turbo use of the tiny-sd1 fixture (golden/turbo/: stabilityai/sd-turbo's scheduler config,
// EulerAncestral with trailing spacing, guidance 0 = no CFG) against diffusers' own components
// (golden/turbo/make_golden.py says how): the family and its defaults, 1 and 4 steps through the
// pipeline and through `diffusiond generate` with the model's defaults.
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
#include "pipeline/model_family.h"
#include "pipeline/model_folder.h"
#include "pipeline/safetensors.h"
#include "pipeline/txt2img.h"
#include "tests/golden_compare.h"
#include "tests/support/model_variant.h"

using namespace diffusiond;
namespace fs = std::filesystem;

using diffusiond::testing::max_pixel_difference;
using diffusiond::testing::read_png;
using diffusiond::testing::relative_l2;

namespace {

const fs::path kModel = fs::path(DIFFUSIOND_FIXTURES) / "tiny-sd1";
const fs::path kGolden = kModel / "golden" / "turbo";

const fs::path& turbo_folder() {
  static const testing::ModelVariant variant(
      kModel, kGolden / "scheduler" / "scheduler_config.json", "sd_turbo");
  return variant.path();
}

}  // namespace

TEST_CASE("an SD-Turbo folder is the sd-turbo family: 1 step, guidance 0, Euler a",
          "[pipeline][turbo]") {
  const auto model = resolve_model(turbo_folder().string());
  CHECK_FALSE(is_sdxl(model));
  CHECK(model_family(model) == ModelFamily::kSDTurbo);
  CHECK(family_name(ModelFamily::kSDTurbo) == "sd-turbo");
  CHECK(family_defaults(ModelFamily::kSDTurbo).steps == 1);
  CHECK(family_defaults(ModelFamily::kSDTurbo).guidance_scale == 0.0);
  auto pipe = StableDiffusion::load(model, torch::kCPU, torch::kFloat32);
  CHECK(pipe->default_scheduler() == "euler_a");
}

TEST_CASE("SD-Turbo: 1 and 4 steps reproduce diffusers", "[pipeline][golden][turbo]") {
  torch::NoGradGuard no_grad;
  auto pipe =
      StableDiffusion::load(resolve_model(turbo_folder().string()), torch::kCPU, torch::kFloat32);
  for (const char* name : {"pipeline_1step", "pipeline_4steps"}) {
    INFO(name);
    const auto meta = read_json_file(kGolden / (std::string(name) + ".json"));
    Txt2ImgParams p;
    p.prompts = {meta.at("prompt").get<std::string>()};
    p.seed = meta.at("seed").get<std::uint64_t>();
    p.steps = meta.at("steps").get<int>();
    p.guidance_scale = meta.at("guidance_scale").get<double>();
    p.width = meta.at("width").get<int>();
    p.height = meta.at("height").get<int>();
    std::map<std::string, torch::Tensor> dumped;
    auto images =
        pipe->generate(p, {}, [&](const std::string& n, const torch::Tensor& v) { dumped[n] = v; });
    CHECK(dumped.count("noise_pred_uncond.00") == 0);  // guidance 0: no unconditional pass
    auto golden = SafetensorsFile::open(kGolden / (std::string(name) + ".safetensors"));
    for (const char* tensor : {"latents", "image"}) {
      INFO(tensor);
      REQUIRE(dumped.count(tensor) == 1);
      const auto expected = golden->tensor(tensor).to(torch::kFloat64);
      const auto actual = dumped[tensor].to(torch::kFloat64);
      REQUIRE(actual.sizes() == expected.sizes());
      CHECK(((actual - expected).norm() / expected.norm()).item<double>() <= 1e-5);
    }
    REQUIRE(images.size() == 1);
    CHECK(max_pixel_difference(images[0], read_png(kGolden / (std::string(name) + ".png"))) <= 1);
  }
}

TEST_CASE("diffusiond generate: an SD-Turbo folder with its defaults", "[pipeline][cli][turbo]") {
  const char* bin = std::getenv("DIFFUSIOND_BIN");
  REQUIRE(bin != nullptr);
  const auto g = read_json_file(kGolden / "pipeline_1step.json");
  const auto out = fs::temp_directory_path() / ("sd_turbo_cli_" + std::to_string(::getpid()));
  const std::string command = std::string(bin) + " generate --model " + turbo_folder().string() +
                              " --prompt \"" + g.at("prompt").get<std::string>() +
                              "\" --seed 5 --width 64 --height 64 -o " + out.string() + ".png > " +
                              out.string() + ".log 2>&1";
  INFO(command);
  REQUIRE(std::system(command.c_str()) == 0);
  CHECK(max_pixel_difference(read_png(out.string() + ".png"),
                             read_png(kGolden / "pipeline_1step.png")) <= 1);
  std::ifstream in(out.string() + ".png", std::ios::binary);
  std::stringstream bytes;
  bytes << in.rdbuf();
  const auto chunks = read_png_text_chunks(bytes.str());
  REQUIRE(chunks.size() == 2);
  CHECK_THAT(chunks[0].text, Catch::Contains("Steps: 1, Sampler: Euler a, CFG scale: 0.0"));
  fs::remove(out.string() + ".png");
  fs::remove(out.string() + ".log");
}
