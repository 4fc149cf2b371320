// Batches across requests meet the per-request features: A1111 prompts whose conditional and
// unconditional rows differ in length (one UNet pass per length, or padded), a LoRA set merged
// once for the batch, and previews per item. Every image of a batch must equal the same image
// generated alone (generate()) within 1/255, also after an image left the batch.
#include <catch2/catch.hpp>

#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include <torch/torch.h>

#include "pipeline/model_folder.h"
#include "pipeline/txt2img.h"

using namespace diffusiond;
namespace fs = std::filesystem;

namespace {

const fs::path kKohya =
    fs::path(DIFFUSIOND_FIXTURES) / "tiny-sd1-extras" / "lora" / "style_kohya.safetensors";

StableDiffusion& tiny(const char* name) {
  static std::map<std::string, std::unique_ptr<StableDiffusion>> pipes;
  auto& pipe = pipes[name];
  if (!pipe)
    pipe = StableDiffusion::load(resolve_model((fs::path(DIFFUSIOND_FIXTURES) / name).string()),
                                 torch::kCPU, torch::kFloat32);
  return *pipe;
}

int max_difference(const RgbImage& a, const RgbImage& b) {
  REQUIRE(a.pixels.size() == b.pixels.size());
  int worst = 0;
  for (std::size_t i = 0; i < a.pixels.size(); ++i)
    worst = std::max(worst, std::abs(int(a.pixels[i]) - int(b.pixels[i])));
  return worst;
}

// "w0 w1 ...": `count` distinct words, each one CLIP token.
std::string words(int count, int offset = 0) {
  static const char* kWords[] = {"red", "blue", "cat", "dog", "tree", "house", "lake", "sky"};
  std::string s;
  for (int i = 0; i < count; ++i) s += std::string(i ? " " : "") + kWords[(i + offset) % 8];
  return s;
}

Txt2ImgParams item(const std::string& prompt, std::uint64_t seed,
                   std::optional<std::string> negative) {
  Txt2ImgParams p;
  p.prompts = {prompt};
  p.negative_prompt = std::move(negative);
  p.seed = seed;
  p.guidance_scale = 6.0;
  p.steps = 5;
  p.width = 64;
  p.height = 64;
  p.scheduler = "euler_a";
  p.a1111_prompt_syntax = true;
  return p;
}

RgbImage alone(StableDiffusion& pipe, const Txt2ImgParams& p) {
  auto images = pipe.generate(p);
  REQUIRE(images.size() == 1);
  return images.front();
}

// Two long prompts (2 chunks) with short negatives (1 chunk): cond and uncond differ in length
// within the sub-batch; a short prompt with a long negative; and a plain-length pair.
std::vector<Txt2ImgParams> a1111_items(bool pad) {
  std::vector<Txt2ImgParams> items = {
      item(words(75) + " (lake:1.3) " + words(20, 3), 21, "blurry"),
      item("a (red:0.8) house", 22, words(80, 1)),
      item(words(75, 2) + " " + words(10, 5), 23, "cartoon"),
      item("a [blue] cat", 24, std::nullopt),
  };
  for (auto& i : items) i.pad_cond_uncond = pad;
  return items;
}

}  // namespace

TEST_CASE("batch: A1111 prompts of mixed lengths equal each image alone, default and padded",
          "[pipeline][batch][a1111]") {
  auto& pipe = tiny("tiny-sd1");
  for (const bool pad : {false, true}) {
    INFO("pad_cond_uncond " << pad);
    const auto items = a1111_items(pad);
    const BatchOutcome outcome = pipe.generate_batch(items);
    REQUIRE(outcome.images.size() == items.size());
    for (std::size_t k = 0; k < items.size(); ++k) {
      INFO("image " << k);
      REQUIRE(outcome.images[k]);
      CHECK(max_difference(*outcome.images[k], alone(pipe, items[k])) <= 1);
    }
    // Items 0 and 2 share their shapes (2-chunk cond, 1-chunk uncond): one sub-batch of two.
    CHECK(outcome.batch_sizes[0] == 2);
    CHECK(outcome.batch_sizes[2] == 2);
    CHECK(outcome.batch_sizes[1] == 1);
  }
}

TEST_CASE("batch: an image leaving a batch whose rows differ in length spares the others",
          "[pipeline][batch][a1111]") {
  auto& pipe = tiny("tiny-sd1");
  std::vector<Txt2ImgParams> items = {a1111_items(false)[0], a1111_items(false)[2]};
  items.push_back(items[0]);
  items.back().seed = 77;
  const BatchOutcome outcome = pipe.generate_batch(
      items, [](int image, int step, int) { return !(image == 1 && step == 2); });
  REQUIRE(outcome.images.size() == 3);
  CHECK_FALSE(outcome.images[1]);
  for (std::size_t k : {std::size_t{0}, std::size_t{2}}) {
    INFO("image " << k);
    REQUIRE(outcome.images[k]);
    CHECK(max_difference(*outcome.images[k], alone(pipe, items[k])) <= 1);
  }
}

TEST_CASE("batch: one LoRA set merged for the batch, each image equals its LoRA image alone",
          "[pipeline][batch][lora]") {
  auto& pipe = tiny("tiny-sd1");
  std::vector<Txt2ImgParams> items = {a1111_items(false)[1], a1111_items(false)[3]};
  for (auto& i : items) i.loras = {{kKohya, 0.8}};
  const BatchOutcome outcome = pipe.generate_batch(items);
  std::vector<RgbImage> lora_alone;
  for (const auto& i : items) lora_alone.push_back(alone(pipe, i));
  for (std::size_t k = 0; k < items.size(); ++k) {
    INFO("image " << k);
    REQUIRE(outcome.images[k]);
    CHECK(max_difference(*outcome.images[k], lora_alone[k]) <= 1);
  }
  // The LoRA changed the images (else this test could not fail), and the base comes back.
  auto base = items.front();
  base.loras.clear();
  const RgbImage base_image = alone(pipe, base);
  CHECK(max_difference(base_image, lora_alone.front()) > 1);
  // Items with different LoRA sets cannot share a batch.
  items.back().loras = {{kKohya, 0.5}};
  CHECK_THROWS_AS(pipe.generate_batch(items), std::invalid_argument);
  pipe.apply_loras({});
}

TEST_CASE("batch: on_latents shows each item only its own images", "[pipeline][batch]") {
  auto& pipe = tiny("tiny-sd1");
  auto items = a1111_items(false);
  items.resize(2);
  items[1] = items[0];
  items[1].seed = 5;
  items[1].num_images_per_prompt = 2;  // rows 1 and 2 of the batch are item 1's
  std::map<int, std::vector<torch::Tensor>> seen;
  for (int it = 0; it < 2; ++it)
    items[static_cast<std::size_t>(it)].on_latents = [&seen, it](int, const torch::Tensor& l) {
      seen[it].push_back(l.clone());
    };
  const BatchOutcome outcome = pipe.generate_batch(items, [](int image, int step, int) {
    return !(image == 1 && step == 3);  // item 1's first image leaves after step 3
  });
  REQUIRE(outcome.images.size() == 3);
  CHECK(outcome.images[0]);
  CHECK_FALSE(outcome.images[1]);
  CHECK(outcome.images[2]);
  REQUIRE(seen[0].size() == 5);
  REQUIRE(seen[1].size() == 5);
  for (int s = 0; s < 5; ++s) {
    INFO("step " << s + 1);
    CHECK(seen[0][static_cast<std::size_t>(s)].size(0) == 1);
    CHECK(seen[1][static_cast<std::size_t>(s)].size(0) == (s < 2 ? 2 : 1));  // left at step 3
    CHECK_FALSE(torch::equal(seen[0][static_cast<std::size_t>(s)][0],
                             seen[1][static_cast<std::size_t>(s)][0]));
  }
  // Item 1's previews are its own rows: its first ones match the same item run alone.
  Txt2ImgParams single = items[1];
  std::vector<torch::Tensor> own;
  single.on_latents = [&own](int, const torch::Tensor& l) { own.push_back(l.clone()); };
  REQUIRE(pipe.generate(single).size() == 2);
  REQUIRE(own.size() == 5);
  CHECK(torch::allclose(seen[1][0], own[0], 1e-4, 1e-4));
  CHECK(torch::allclose(seen[1][1], own[1], 1e-4, 1e-4));
}
