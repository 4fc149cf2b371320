// The tiny-sdxl fixture's UNet (text_time added conditioning, transformer_layers_per_block [1,2],
// per-block heads, linear projection, a DownBlock2D first) and VAE against diffusers' outputs
// (golden/unet.json, golden/vae.json say how they were computed).
#include <catch2/catch.hpp>

#include <map>

#include "pipeline/media/config_util.h"
#include "pipeline/model_folder.h"
#include "pipeline/safetensors.h"
#include "pipeline/unet.h"
#include "pipeline/vae.h"
#include "test_util.h"

using namespace diffusiond;
using diffusiond::test::relative_l2;

namespace {

std::filesystem::path tiny_sdxl() {
  return std::filesystem::path(DIFFUSIOND_FIXTURES) / "tiny-sdxl";
}

}  // namespace

TEST_CASE("SDXL UNet config: every SDXL feature is read from config.json", "[unet][sdxl]") {
  const auto path = tiny_sdxl() / "unet" / "config.json";
  const auto c = UNetConfig::from_json(read_json_file(path), path.string());
  CHECK(c.addition_embed_type == "text_time");
  CHECK(c.addition_time_embed_dim == 8);
  CHECK(c.projection_class_embeddings_input_dim == 88);
  CHECK(c.down_block_types == std::vector<std::string>{"DownBlock2D", "CrossAttnDownBlock2D"});
  CHECK(c.num_attention_heads == std::vector<int>{2, 4});
  CHECK(c.use_linear_projection);
  CHECK(c.down_transformer_layers == std::vector<std::vector<int>>{{1, 1}, {2, 2}});
  CHECK(c.up_transformer_layers == std::vector<std::vector<int>>{{2, 2, 2}, {1, 1, 1}});
  CHECK(c.mid_transformer_layers == 2);
}

TEST_CASE("SDXL UNet matches diffusers with added text/time conditioning", "[unet][golden][sdxl]") {
  torch::NoGradGuard no_grad;
  auto golden = SafetensorsFile::open(tiny_sdxl() / "golden" / "unet.safetensors");
  auto unet = load_unet(resolve_model(tiny_sdxl().string()), torch::kCPU, torch::kFloat32);
  auto sample = golden->tensor("sample");                  // [2,4,8,8]
  auto context = golden->tensor("encoder_hidden_states");  // [2,77,72]
  UNetAddedConditions added{golden->tensor("text_embeds"), golden->tensor("time_ids")};
  auto timesteps = golden->tensor("timesteps");  // [2]

  for (int k = 0; k < 2; ++k) {
    INFO("timestep " << timesteps[k].item<double>());
    std::map<std::string, torch::Tensor> taps;
    auto out = unet->forward(sample, timesteps[k], context, added,
                             [&](const std::string& n, const torch::Tensor& v) { taps[n] = v; });
    CHECK(relative_l2(out, golden->tensor("output." + std::to_string(k))) <= 1e-5);
    if (k != 0) continue;
    for (const char* name : {"time_proj", "time_embedding", "add_time_proj", "add_embedding.input",
                             "add_embedding", "conv_in", "down_blocks.0", "down_blocks.1",
                             "mid_block", "up_blocks.0", "up_blocks.1", "conv_norm_out"}) {
      INFO("debug intermediate " << name);
      auto ref = golden->tensor(std::string("debug.t0.") + name);
      REQUIRE(taps.count(name) == 1);
      REQUIRE(taps[name].sizes() == ref.sizes());
      CHECK(relative_l2(taps[name], ref) <= 1e-5);
    }
  }
  // The conditioning matters: other time ids give another output.
  UNetAddedConditions other{added.text_embeds, added.time_ids.flip({0})};
  CHECK(relative_l2(unet->forward(sample, timesteps[0], context, other),
                    golden->tensor("output.0")) > 1e-3);
}

TEST_CASE("SDXL UNet refuses missing or misshapen added conditions", "[unet][sdxl]") {
  torch::NoGradGuard no_grad;
  auto golden = SafetensorsFile::open(tiny_sdxl() / "golden" / "unet.safetensors");
  auto unet = load_unet(resolve_model(tiny_sdxl().string()), torch::kCPU, torch::kFloat32);
  auto sample = golden->tensor("sample");
  auto context = golden->tensor("encoder_hidden_states");
  CHECK_THROWS_WITH(unet->forward(sample, 999.0, context),
                    Catch::Contains("text_embeds and time_ids"));
  UNetAddedConditions short_ids{golden->tensor("text_embeds"),
                                golden->tensor("time_ids").slice(1, 0, 4)};
  CHECK_THROWS_WITH(unet->forward(sample, 999.0, context, short_ids),
                    Catch::Contains("projection_class_embeddings_input_dim"));
}

TEST_CASE("SDXL VAE decode matches diffusers", "[vae][golden][sdxl]") {
  torch::NoGradGuard no_grad;
  auto golden = SafetensorsFile::open(tiny_sdxl() / "golden" / "vae.safetensors");
  auto vae = load_vae(resolve_model(tiny_sdxl().string()), torch::kCPU, torch::kFloat32);
  CHECK(vae->config().scaling_factor == Approx(0.13025));
  CHECK(vae->config().force_upcast);
  std::map<std::string, torch::Tensor> taps;
  auto decoded = vae->decode(golden->tensor("latents") / vae->config().scaling_factor,
                             [&](const std::string& n, const torch::Tensor& v) { taps[n] = v; });
  CHECK(relative_l2(decoded, golden->tensor("decoded")) <= 1e-5);
  for (const char* name : {"post_quant_conv", "decoder.conv_in", "decoder.mid_block",
                           "decoder.up_blocks.0", "decoder.up_blocks.1"}) {
    INFO("debug intermediate " << name);
    REQUIRE(taps.count(name) == 1);
    CHECK(relative_l2(taps[name], golden->tensor(std::string("debug.") + name)) <= 1e-5);
  }
}

TEST_CASE("SDXL VAE force_upcast: float16 weights decoded in float32 match diffusers",
          "[vae][golden][sdxl]") {
  // What StableDiffusionXLPipeline does with a float16 VAE and force_upcast (upcast_vae): the
  // weights rounded to float16, then the VAE run in float32. golden/pipeline.safetensors holds
  // the final latents and that decode.
  torch::NoGradGuard no_grad;
  auto golden = SafetensorsFile::open(tiny_sdxl() / "golden" / "pipeline.safetensors");
  auto vae = load_vae(resolve_model(tiny_sdxl().string()), torch::kCPU, torch::kFloat16);
  vae->to(torch::kFloat32);
  auto decoded = vae->decode(golden->tensor("latents") / vae->config().scaling_factor);
  auto image = (decoded / 2 + 0.5).clamp(0, 1);
  CHECK(relative_l2(image, golden->tensor("vae_fp16_upcast.image")) <= 1e-5);
  // ... and that differs from the float32 VAE's image: the rounding is what is being matched.
  CHECK(relative_l2(image, golden->tensor("image")) > 1e-5);
}
