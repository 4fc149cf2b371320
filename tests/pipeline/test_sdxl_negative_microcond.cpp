// SDXL negative micro-conditioning (negative_original_size, negative_crops_coords_top_left,
// negative_target_size) against the tiny-sdxl goldens made by diffusers v0.27.2
// (golden/negative_microcond/make_golden.py; each .json says how): step by step and within 1/255;
// diffusers' rule that one negative size alone changes nothing; a batch mixing images with and
// without them equals each image alone; `diffusiond generate --negative-*` writes the golden's
// image and records the fields in both PNG chunks.
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
#include "pipeline/model_folder.h"
#include "pipeline/safetensors.h"
#include "pipeline/txt2img.h"
#include "tests/golden_compare.h"

using namespace diffusiond;
namespace fs = std::filesystem;

using diffusiond::testing::max_pixel_difference;
using diffusiond::testing::read_png;
using diffusiond::testing::relative_l2;

namespace {

const fs::path kModel = fs::path(DIFFUSIOND_FIXTURES) / "tiny-sdxl";
const fs::path kGoldens = kModel / "golden" / "negative_microcond";

StableDiffusion& pipeline() {
  static std::unique_ptr<StableDiffusion> pipe =
      StableDiffusion::load(resolve_model(kModel.string()), torch::kCPU, torch::kFloat32);
  return *pipe;
}

std::optional<std::array<int, 2>> pair(const nlohmann::json& meta, const char* key) {
  if (!meta.contains(key)) return std::nullopt;
  const auto v = meta.at(key).get<std::vector<int>>();
  return std::array<int, 2>{v.at(0), v.at(1)};
}

// The golden's call: the micro-conditioning pairs diffusers was given, no others.
Txt2ImgParams golden_params(const nlohmann::json& meta) {
  Txt2ImgParams p;
  p.prompts = {meta.at("prompt").get<std::string>()};
  p.negative_prompt = meta.at("negative_prompt").get<std::string>();
  p.seed = meta.at("seed").get<std::uint64_t>();
  p.steps = meta.at("steps").get<int>();
  p.guidance_scale = meta.at("guidance_scale").get<double>();
  p.width = meta.at("width").get<int>();
  p.height = meta.at("height").get<int>();
  p.original_size = pair(meta, "original_size");
  p.crops_coords_top_left = pair(meta, "crops_coords_top_left");
  p.target_size = pair(meta, "target_size");
  p.negative_original_size = pair(meta, "negative_original_size");
  p.negative_crops_coords_top_left = pair(meta, "negative_crops_coords_top_left");
  p.negative_target_size = pair(meta, "negative_target_size");
  return p;
}

nlohmann::json golden_meta(const std::string& name) {
  return read_json_file(kGoldens / (name + ".json"));
}

RgbImage golden_png(const std::string& name) {
  return read_png(kGoldens / (name + ".png"));
}

void check_golden(const std::string& name) {
  INFO("golden " << name);
  const auto meta = golden_meta(name);
  auto golden = SafetensorsFile::open(kGoldens / (name + ".safetensors"));
  std::map<std::string, torch::Tensor> dumped;
  auto images =
      pipeline().generate(golden_params(meta), {},
                          [&](const std::string& n, const torch::Tensor& v) { dumped[n] = v; });
  for (const auto& info : golden->tensors()) {
    INFO("golden tensor " << info.name);
    REQUIRE(dumped.count(info.name) == 1);
    const auto expected = golden->tensor(info.name);
    REQUIRE(dumped[info.name].sizes() == expected.sizes());
    CHECK(relative_l2(dumped[info.name], expected) <= 1e-5);
  }
  // add_time_ids exactly: [negative row, positive row].
  CHECK(torch::equal(dumped["add_time_ids"], golden->tensor("add_time_ids")));
  REQUIRE(images.size() == 1);
  CHECK(max_pixel_difference(images[0], golden_png(name)) <= 1);
  // The golden is sensitive to the feature: without the negative pairs the image is another one.
  Txt2ImgParams without = golden_params(meta);
  without.negative_original_size.reset();
  without.negative_crops_coords_top_left.reset();
  without.negative_target_size.reset();
  CHECK(max_pixel_difference(pipeline().generate(without).at(0), golden_png(name)) > 1);
}

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream bytes;
  bytes << in.rdbuf();
  return bytes.str();
}

}  // namespace

TEST_CASE("SDXL: all three negative micro-conditioning pairs, as diffusers",
          "[pipeline][golden][sdxl]") {
  check_golden("pipeline_negative_microcond");
}

TEST_CASE("SDXL: both negative sizes, negative crops defaulted, as diffusers",
          "[pipeline][golden][sdxl]") {
  check_golden("pipeline_negative_sizes");
}

TEST_CASE("SDXL: one negative size alone changes nothing, as diffusers", "[pipeline][sdxl]") {
  const auto meta = golden_meta("pipeline_negative_microcond");
  Txt2ImgParams p = golden_params(meta);
  p.negative_original_size.reset();
  p.negative_crops_coords_top_left.reset();
  p.negative_target_size.reset();
  const RgbImage without = pipeline().generate(p).at(0);  // differs from the golden (above)
  // diffusers uses them only when both sizes are given: otherwise the positive ids, both halves.
  for (int which = 0; which < 2; ++which) {
    INFO("only negative " << (which == 0 ? "original_size" : "target_size") << " and the crops");
    Txt2ImgParams half = p;
    (which == 0 ? half.negative_original_size : half.negative_target_size) =
        std::array<int, 2>{32, 48};
    half.negative_crops_coords_top_left = std::array<int, 2>{0, 24};
    torch::Tensor ids;
    const RgbImage image = pipeline()
                               .generate(half, {},
                                         [&](const std::string& n, const auto& v) {
                                           if (n == "add_time_ids") ids = v;
                                         })
                               .at(0);
    REQUIRE(ids.defined());
    CHECK(torch::equal(ids[0], ids[1]));
    CHECK(max_pixel_difference(image, without) == 0);
  }
}

TEST_CASE("SDXL: without guidance the negative micro-conditioning changes nothing",
          "[pipeline][sdxl]") {
  Txt2ImgParams p = golden_params(golden_meta("pipeline_negative_microcond"));
  p.guidance_scale = 1.0;  // no unconditional half
  torch::Tensor ids;
  const RgbImage with = pipeline()
                            .generate(p, {},
                                      [&](const std::string& n, const auto& v) {
                                        if (n == "add_time_ids") ids = v;
                                      })
                            .at(0);
  REQUIRE(ids.defined());
  // [1, 6]: the positive row only.
  CHECK(torch::equal(ids, torch::tensor({128.f, 192.f, 16.f, 8.f, 64.f, 96.f}).unsqueeze(0)));
  p.negative_original_size.reset();
  p.negative_crops_coords_top_left.reset();
  p.negative_target_size.reset();
  CHECK(max_pixel_difference(with, pipeline().generate(p).at(0)) == 0);
}

TEST_CASE("SDXL: a batch mixing negative micro-conditioning equals each image alone",
          "[pipeline][batch][sdxl]") {
  const Txt2ImgParams a = golden_params(golden_meta("pipeline_negative_microcond"));
  Txt2ImgParams b = a;  // same steps, size and scheduler: one batch
  b.seed = 7;
  b.guidance_scale = 4.0;
  b.negative_original_size.reset();
  b.negative_crops_coords_top_left.reset();
  b.negative_target_size.reset();
  Txt2ImgParams c = a;
  c.seed = 8;
  c.negative_original_size = std::array<int, 2>{256, 128};
  c.negative_crops_coords_top_left.reset();
  c.negative_target_size = std::array<int, 2>{16, 16};
  const BatchOutcome outcome = pipeline().generate_batch({a, b, c});
  REQUIRE(outcome.images.size() == 3);
  const std::vector<Txt2ImgParams> items = {a, b, c};
  for (std::size_t k = 0; k < items.size(); ++k) {
    INFO("image " << k);
    REQUIRE(outcome.images[k].has_value());
    CHECK(outcome.batch_sizes[k] == 3);
    CHECK(max_pixel_difference(*outcome.images[k], pipeline().generate(items[k]).at(0)) <= 1);
  }
  CHECK(max_pixel_difference(*outcome.images[0], golden_png("pipeline_negative_microcond")) <= 1);
}

TEST_CASE("negative micro-conditioning is refused by SD 1.x/2.x and bounded for SDXL",
          "[pipeline][sdxl]") {
  Txt2ImgParams p;
  p.prompts = {"x"};
  p.steps = 1;
  p.width = p.height = 64;
  p.negative_original_size = std::array<int, 2>{64, 64};
  p.negative_target_size = std::array<int, 2>{0, 64};
  CHECK_THROWS_WITH(pipeline().generate(p), Catch::Contains("negative_target_size"));
  p.negative_target_size = std::array<int, 2>{64, 64};
  p.negative_crops_coords_top_left = std::array<int, 2>{-1, 0};
  CHECK_THROWS_WITH(pipeline().generate(p), Catch::Contains("negative_crops_coords_top_left"));
  auto sd1 =
      StableDiffusion::load(resolve_model((fs::path(DIFFUSIOND_FIXTURES) / "tiny-sd1").string()),
                            torch::kCPU, torch::kFloat32);
  p.negative_crops_coords_top_left.reset();
  CHECK_THROWS_WITH(sd1->generate(p), Catch::Contains("SDXL models only"));
}

TEST_CASE("diffusiond generate: SDXL negative micro-conditioning", "[pipeline][cli][sdxl]") {
  const char* bin = std::getenv("DIFFUSIOND_BIN");
  REQUIRE(bin != nullptr);
  const auto g = golden_meta("pipeline_negative_microcond");
  const auto out =
      fs::temp_directory_path() / ("sdxl_negmicro_" + std::to_string(::getpid()) + ".png");
  auto hw = [&](const char* key) {
    return std::to_string(g.at(key)[0].get<int>()) + " " + std::to_string(g.at(key)[1].get<int>());
  };
  const std::string base = std::string(bin) + " generate --model " + kModel.string() +
                           " --prompt \"" + g.at("prompt").get<std::string>() +
                           "\" --negative-prompt \"" + g.at("negative_prompt").get<std::string>() +
                           "\" --seed " + std::to_string(g.at("seed").get<int>()) + " --steps " +
                           std::to_string(g.at("steps").get<int>()) +
                           " --guidance 6 --width 96 --height 64" + " --original-size " +
                           hw("original_size") + " --crops-coords-top-left " +
                           hw("crops_coords_top_left") + " --target-size " + hw("target_size") +
                           " --negative-original-size " + hw("negative_original_size") + " -o " +
                           out.string() + " > " + out.string() + ".log 2>&1";
  // One negative size alone: refused (diffusers would ignore it), naming the missing one.
  INFO(base);
  CHECK(std::system(base.c_str()) != 0);
  CHECK_THAT(read_bytes(out.string() + ".log"), Catch::Contains("negative_target_size"));
  CHECK_FALSE(fs::exists(out));
  const std::string command = base.substr(0, base.find(" -o ")) +
                              " --negative-crops-coords-top-left " +
                              hw("negative_crops_coords_top_left") + " --negative-target-size " +
                              hw("negative_target_size") + base.substr(base.find(" -o "));
  INFO(command);
  REQUIRE(std::system(command.c_str()) == 0);
  CHECK(max_pixel_difference(read_png(out), golden_png("pipeline_negative_microcond")) <= 1);
  const auto chunks = read_png_text_chunks(read_bytes(out));
  REQUIRE(chunks.size() == 2);
  CHECK_THAT(chunks[0].text, Catch::Contains("Negative original size: 48x32, Negative crop top "
                                             "left: 0,24, Negative target size: 80x48"));
  const auto meta = nlohmann::json::parse(chunks[1].text);
  CHECK(meta["negative_original_size"] == nlohmann::json::array({32, 48}));
  CHECK(meta["request"]["negative_crops_coords_top_left"] == nlohmann::json::array({0, 24}));
  CHECK(meta["request"]["negative_target_size"] == nlohmann::json::array({48, 80}));
  fs::remove(out);
  fs::remove(out.string() + ".log");
}
