// Batches across requests (issue 11): StableDiffusion::generate_batch runs items with their own
// prompts, negative prompts, seeds and guidance scales as one UNet batch; every image equals
// the same image generated alone (generate()) within 1/255, a stopped image leaves the batch
// without disturbing the others (multistep samplers keep only the rows that stay), and items
// that cannot share a batch are refused.
#include <catch2/catch.hpp>

#include <filesystem>
#include <map>
#include <memory>
#include <optional>

#include <torch/torch.h>

#include "pipeline/model_folder.h"
#include "pipeline/txt2img.h"

using namespace diffusiond;
namespace fs = std::filesystem;

namespace {

StableDiffusion& tiny(const char* name) {
  static std::map<std::string, std::unique_ptr<StableDiffusion>> pipes;
  auto& pipe = pipes[name];
  if (!pipe)
    pipe = StableDiffusion::load(resolve_model((fs::path(DIFFUSIOND_FIXTURES) / name).string()),
                                 torch::kCPU, torch::kFloat32);
  return *pipe;
}

int max_difference(const RgbImage& a, const RgbImage& b) {
  REQUIRE(a.width == b.width);
  REQUIRE(a.height == b.height);
  REQUIRE(a.pixels.size() == b.pixels.size());
  int worst = 0;
  for (std::size_t i = 0; i < a.pixels.size(); ++i)
    worst = std::max(worst, std::abs(int(a.pixels[i]) - int(b.pixels[i])));
  return worst;
}

bool differs(const RgbImage& a, const RgbImage& b) {
  return a.pixels != b.pixels;
}

Txt2ImgParams item(const std::string& prompt, std::uint64_t seed, double guidance,
                   std::optional<std::string> negative, const std::string& scheduler) {
  Txt2ImgParams p;
  p.prompts = {prompt};
  p.negative_prompt = std::move(negative);
  p.seed = seed;
  p.guidance_scale = guidance;
  p.steps = 6;
  p.width = 64;
  p.height = 64;
  p.scheduler = scheduler;
  return p;
}

RgbImage alone(StableDiffusion& pipe, const Txt2ImgParams& p) {
  auto images = pipe.generate(p);
  REQUIRE(images.size() == 1);
  return images.front();
}

std::vector<Txt2ImgParams> mixed_items(const std::string& scheduler) {
  return {item("a red house by a lake", 11, 7.5, std::nullopt, scheduler),
          item("an astronaut riding a horse", 12, 3.0, "blurry, low quality", scheduler),
          item("a bowl of fruit", 13, 12.0, "", scheduler),
          item("a red house by a lake", 99, 7.5, "cartoon", scheduler)};
}

}  // namespace

TEST_CASE("a batch of mixed requests equals each image alone", "[pipeline][batch]") {
  auto& pipe = tiny("tiny-sd1");
  for (const std::string scheduler : {"pndm", "euler_a", "dpmpp_2m", "unipc"}) {
    INFO("scheduler " << scheduler);
    const auto items = mixed_items(scheduler);
    const BatchOutcome outcome = pipe.generate_batch(items);
    REQUIRE(outcome.images.size() == items.size());
    for (std::size_t k = 0; k < items.size(); ++k) {
      INFO("image " << k);
      REQUIRE(outcome.images[k].has_value());
      CHECK(outcome.batch_sizes[k] == 4);
      CHECK(max_difference(*outcome.images[k], alone(pipe, items[k])) <= 1);
    }
    // The images are their own: different prompts, seeds and guidance make different pixels.
    CHECK(differs(*outcome.images[0], *outcome.images[3]));
    CHECK(differs(*outcome.images[1], *outcome.images[2]));
  }
}

TEST_CASE("a batch without classifier-free guidance, and items of several images",
          "[pipeline][batch]") {
  auto& pipe = tiny("tiny-sd1");
  auto a = item("a lighthouse", 5, 1.0, std::nullopt, "euler");
  auto b = item("a forest", 6, 0.0, "ignored without guidance", "euler");
  b.prompts = {"a forest", "a desert"};
  b.num_images_per_prompt = 2;  // four images: prompt-major, seeds 6..9
  const BatchOutcome outcome = pipe.generate_batch({a, b});
  REQUIRE(outcome.images.size() == 5);
  CHECK(max_difference(*outcome.images[0], alone(pipe, a)) <= 1);
  const auto b_alone = pipe.generate(b);
  REQUIRE(b_alone.size() == 4);
  for (int k = 0; k < 4; ++k) CHECK(max_difference(*outcome.images[1 + k], b_alone[k]) <= 1);
}

TEST_CASE("an image stopped mid-batch leaves it - the others are undisturbed", "[pipeline][batch]") {
  auto& pipe = tiny("tiny-sd1");
  // Multistep samplers (history per row), a second-order one and a stochastic one.
  for (const std::string scheduler : {"dpmpp_2m", "unipc", "pndm", "lms", "heun", "euler_a"}) {
    INFO("scheduler " << scheduler);
    const auto items = mixed_items(scheduler);
    std::vector<int> last_step(items.size(), 0);
    const BatchOutcome outcome = pipe.generate_batch(items, [&](int image, int step, int) {
      last_step[static_cast<std::size_t>(image)] = step;
      return !(image == 1 && step == 2);  // image 1 stops after its second step
    });
    REQUIRE(outcome.images.size() == items.size());
    CHECK_FALSE(outcome.images[1].has_value());
    CHECK(last_step[1] == 2);  // asked no more once it left
    for (std::size_t k : {0, 2, 3}) {
      INFO("image " << k);
      REQUIRE(outcome.images[k].has_value());
      CHECK(last_step[k] > 2);
      CHECK(max_difference(*outcome.images[k], alone(pipe, items[k])) <= 1);
    }
  }
  // Every image stopping ends the batch with no image.
  const auto all = pipe.generate_batch(mixed_items("euler"), [](int, int, int) { return false; });
  for (const auto& image : all.images) CHECK_FALSE(image.has_value());
}

TEST_CASE("items that cannot share a batch are refused", "[pipeline][batch]") {
  auto& pipe = tiny("tiny-sd1");
  const auto a = item("a", 1, 7.5, std::nullopt, "euler");
  auto b = a;
  b.steps = 5;
  CHECK_THROWS_AS(pipe.generate_batch({a, b}), std::invalid_argument);
  b = a;
  b.width = 72;
  CHECK_THROWS_AS(pipe.generate_batch({a, b}), std::invalid_argument);
  b = a;
  b.scheduler = "ddim";
  CHECK_THROWS_AS(pipe.generate_batch({a, b}), std::invalid_argument);
  b = a;
  b.guidance_scale = 1.0;  // CFG off next to CFG on
  CHECK_THROWS_AS(pipe.generate_batch({a, b}), std::invalid_argument);
  b = a;
  b.scheduler = "Euler";  // an alias of the same sampler shares the batch
  CHECK(pipe.generate_batch({a, b}).images.size() == 2);
  CHECK_THROWS_AS(pipe.generate_batch({}), std::invalid_argument);
}

TEST_CASE("SDXL: a batch with per-image micro-conditioning and negative prompts",
          "[pipeline][batch][sdxl]") {
  auto& pipe = tiny("tiny-sdxl");
  auto a = item("a castle", 3, 5.0, std::nullopt, "euler");  // absent: zeros
  auto b = item("a castle", 4, 6.5, "", "euler");            // given "": encoded
  b.original_size = std::array<int, 2>{128, 96};
  b.crops_coords_top_left = std::array<int, 2>{8, 0};
  auto c = item("a river", 5, 5.0, "fog", "euler");
  c.target_size = std::array<int, 2>{32, 32};
  const BatchOutcome outcome = pipe.generate_batch({a, b, c});
  REQUIRE(outcome.images.size() == 3);
  const std::vector<Txt2ImgParams> items = {a, b, c};
  for (std::size_t k = 0; k < 3; ++k) {
    INFO("image " << k);
    REQUIRE(outcome.images[k].has_value());
    CHECK(max_difference(*outcome.images[k], alone(pipe, items[k])) <= 1);
  }
}
