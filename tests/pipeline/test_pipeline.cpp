// The whole txt2img pipeline against golden/pipeline.* (diffusers' StableDiffusionPipeline on the
// tiny-sd1 fixture, see golden/pipeline.json), batching independence, cancellation, and the
// `diffusiond generate` CLI.
#include <catch2/catch.hpp>

#include <unistd.h>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <torch/torch.h>

#include "golden_pipeline.h"
#include "pipeline/media/config_util.h"
#include "pipeline/media/png.h"
#include "pipeline/model_folder.h"
#include "pipeline/safetensors.h"
#include "pipeline/txt2img.h"
#include "tests/support/process_temp_dir.h"

using namespace diffusiond;
namespace fs = std::filesystem;

namespace {

const fs::path kModel = fs::path(DIFFUSIOND_FIXTURES) / "tiny-sd1";
const std::string kPrompt = "a photograph of an astronaut riding a horse";

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in.good());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

double relative_l2(const torch::Tensor& actual, const torch::Tensor& expected) {
  auto a = actual.to(torch::kFloat64), e = expected.to(torch::kFloat64);
  return ((a - e).norm() / e.norm()).item<double>();
}

int max_pixel_difference(const RgbImage& a, const RgbImage& b) {
  REQUIRE(a.width == b.width);
  REQUIRE(a.height == b.height);
  REQUIRE(a.pixels.size() == b.pixels.size());
  int worst = 0;
  for (std::size_t i = 0; i < a.pixels.size(); ++i) {
    worst = std::max(worst, std::abs(int(a.pixels[i]) - int(b.pixels[i])));
  }
  return worst;
}

StableDiffusion& tiny_pipeline() {
  static std::unique_ptr<StableDiffusion> pipe =
      StableDiffusion::load(resolve_model(kModel.string()), torch::kCPU, torch::kFloat32);
  return *pipe;
}

Txt2ImgParams golden_params() {
  return testing::golden_pipeline_params(kModel);
}

RgbImage golden_image() {
  return testing::golden_pipeline_image(kModel);
}

fs::path temp_dir() {
  return testing::process_temp_dir("test_pipeline");
}

}  // namespace

TEST_CASE("txt2img reproduces diffusers step by step", "[pipeline][golden]") {
  auto& pipe = tiny_pipeline();
  CHECK(pipe.default_scheduler() == "pndm");
  CHECK(pipe.default_width() == 64);  // fixture: unet sample_size 8 x vae factor 8
  auto golden = SafetensorsFile::open(kModel / "golden" / "pipeline.safetensors");
  auto meta = read_json_file(kModel / "golden" / "pipeline.json");
  const int evaluations = static_cast<int>(meta.at("timesteps").size());

  std::map<std::string, torch::Tensor> dumped;
  std::vector<int> steps_seen;
  auto images = pipe.generate(
      golden_params(),
      [&](int image, int step, int steps) {
        CHECK(image == 0);
        CHECK(steps == evaluations);
        steps_seen.push_back(step);
        return true;
      },
      [&](const std::string& name, const torch::Tensor& value) { dumped[name] = value; });
  CHECK(steps_seen.size() == static_cast<std::size_t>(evaluations));
  CHECK(steps_seen.back() == evaluations);

  for (const auto& info : golden->tensors()) {
    INFO("golden tensor " << info.name);
    if (info.name.rfind("noise_pred_", 0) == 0) continue;  // the two halves are not dumped
    REQUIRE(dumped.count(info.name) == 1);
    CHECK(dumped[info.name].sizes() == golden->tensor(info.name).sizes());
    CHECK(relative_l2(dumped[info.name], golden->tensor(info.name)) <= 1e-5);
  }
  REQUIRE(images.size() == 1);
  CHECK(max_pixel_difference(images[0], golden_image()) <= 1);
}

TEST_CASE("given latents replace the generator's draw, like diffusers' latents=", "[pipeline]") {
  auto golden = SafetensorsFile::open(kModel / "golden" / "pipeline.safetensors");
  Txt2ImgParams params = golden_params();
  params.seed += 1000;  // another seed: only the given noise can bring back the golden image
  params.latents = golden->tensor("latents.00");
  auto images = tiny_pipeline().generate(params);
  REQUIRE(images.size() == 1);
  CHECK(max_pixel_difference(images[0], golden_image()) <= 1);

  params.latents = torch::zeros({1, 4, 4, 4});
  CHECK_THROWS_WITH(tiny_pipeline().generate(params),
                    Catch::Contains("latents") && Catch::Contains("[1, 4, 8, 8]"));
}

TEST_CASE("batched images equal separate runs with seed + k", "[pipeline]") {
  auto& pipe = tiny_pipeline();
  for (const std::string scheduler : {"pndm", "euler_a"}) {  // euler_a draws noise every step
    INFO("scheduler " << scheduler);
    auto params = golden_params();
    params.scheduler = scheduler;
    params.steps = 4;
    params.seed = 7;
    params.num_images_per_prompt = 2;
    auto batch = pipe.generate(params);
    REQUIRE(batch.size() == 2);
    params.num_images_per_prompt = 1;
    auto first = pipe.generate(params);
    params.seed = 8;
    auto second = pipe.generate(params);
    CHECK(max_pixel_difference(batch[0], first[0]) <= 1);
    CHECK(max_pixel_difference(batch[1], second[0]) <= 1);
    CHECK(max_pixel_difference(batch[0], batch[1]) > 1);  // different seeds differ
  }
}

TEST_CASE("several prompts are ordered prompt-major", "[pipeline]") {
  auto& pipe = tiny_pipeline();
  auto params = golden_params();
  params.steps = 3;
  params.prompts = {"a red cube", "a blue sphere"};
  params.num_images_per_prompt = 2;
  params.seed = 100;
  auto all = pipe.generate(params);
  REQUIRE(all.size() == 4);
  params.prompts = {"a blue sphere"};
  params.num_images_per_prompt = 1;
  params.seed = 103;  // image 3 = prompt 1, copy 1
  CHECK(max_pixel_difference(all[3], pipe.generate(params)[0]) <= 1);
}

TEST_CASE("guidance <= 1 skips the unconditional pass", "[pipeline]") {
  auto& pipe = tiny_pipeline();
  auto params = golden_params();
  params.steps = 2;
  params.guidance_scale = 1.0;
  torch::Tensor embeds;
  auto images = pipe.generate(params, {}, [&](const std::string& name, const torch::Tensor& v) {
    if (name == "prompt_embeds") embeds = v;
  });
  REQUIRE(embeds.defined());
  CHECK(embeds.size(0) == 1);
  CHECK(images.size() == 1);
}

TEST_CASE("bad parameters and cancellation", "[pipeline]") {
  auto& pipe = tiny_pipeline();
  auto params = golden_params();
  params.steps = 5;
  int calls = 0;
  CHECK_THROWS_AS(pipe.generate(params,
                                [&](int, int step, int) {
                                  ++calls;
                                  return step < 2;
                                }),
                  GenerationCancelled);
  CHECK(calls == 2);
  params.width = 60;
  CHECK_THROWS_WITH(pipe.generate(params), Catch::Contains("multiples of 8"));
  params.width = 64;
  params.scheduler = "no-such-sampler";
  CHECK_THROWS_WITH(pipe.generate(params), Catch::Contains("no-such-sampler"));
  params.scheduler.clear();
  params.prompts.clear();
  CHECK_THROWS_AS(pipe.generate(params), std::invalid_argument);
}

TEST_CASE("diffusiond generate reproduces the golden image", "[pipeline][cli]") {
  const char* bin = std::getenv("DIFFUSIOND_BIN");
  REQUIRE(bin != nullptr);
  auto out = temp_dir() / "cli.png";
  std::string command = std::string(bin) + " generate --model " + kModel.string() + " --prompt \"" +
                        kPrompt + "\" --seed 42 --steps 8 --width 64 --height 64 -o " +
                        out.string() + " > " + (temp_dir() / "cli.log").string() + " 2>&1";
  INFO(command);
  REQUIRE(std::system(command.c_str()) == 0);
  const std::string png = read_file(out);
  CHECK(max_pixel_difference(decode_png(png), golden_image()) <= 1);
  auto chunks = read_png_text_chunks(png);
  REQUIRE(chunks.size() == 2);
  CHECK(chunks[0].keyword == "parameters");
  CHECK_THAT(chunks[0].text,
             Catch::StartsWith(kPrompt +
                               "\nSteps: 8, Sampler: PLMS, CFG scale: 7.5, Seed: 42, Size: 64x64"));
  auto meta = nlohmann::json::parse(chunks[1].text);
  CHECK(meta["seed"] == 42);
  CHECK(meta["scheduler"] == "pndm");
  CHECK(meta["request"]["prompts"] == nlohmann::json::array({kPrompt}));  // the daemon's shape

  // Several images: OUT-0.png, OUT-1.png in image order, image k from seed + k.
  auto multi = temp_dir() / "multi.png";
  command = std::string(bin) + " generate --model " + kModel.string() + " --prompt \"" + kPrompt +
            "\" --seed 41 --steps 8 --width 64 --height 64 -n 2 -o " + multi.string() + " > " +
            (temp_dir() / "multi.log").string() + " 2>&1";
  REQUIRE(std::system(command.c_str()) == 0);
  CHECK_FALSE(fs::exists(multi));
  REQUIRE(fs::exists(temp_dir() / "multi-1.png"));
  CHECK(max_pixel_difference(decode_png(read_file(temp_dir() / "multi-1.png")), golden_image()) <=
        1);
  CHECK(nlohmann::json::parse(
            read_png_text_chunks(read_file(temp_dir() / "multi-0.png"))[1].text)["seed"] == 41);

  // A bad argument is an error, not a crash.
  command = std::string(bin) + " generate --model " + kModel.string() +
            " --prompt x --width 63 -o " + (temp_dir() / "bad.png").string() + " > /dev/null 2>&1";
  CHECK(std::system(command.c_str()) != 0);
}
