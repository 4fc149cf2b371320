// AutoencoderKL against diffusers on the tiny-sd1 fixture (golden/vae.json), and the encoder.
#include <catch2/catch.hpp>

#include <map>

#include "pipeline/media/config_util.h"
#include "pipeline/model_folder.h"
#include "pipeline/safetensors.h"
#include "pipeline/vae.h"
#include "test_util.h"

using namespace diffusiond;
using diffusiond::test::relative_l2;
using diffusiond::test::tiny_sd1;

TEST_CASE("VAE decode matches diffusers", "[vae][golden]") {
  torch::NoGradGuard no_grad;
  auto golden = SafetensorsFile::open(tiny_sd1() / "golden" / "vae.safetensors");
  auto vae = load_vae(resolve_model(tiny_sd1().string()), torch::kCPU, torch::kFloat32);
  CHECK(vae->config().scaling_factor == Approx(0.18215));
  CHECK(vae->config().force_upcast);
  CHECK(vae->config().scale_factor() == 8);

  // decoder_input = latents / scaling_factor, as the fixture's own tensor says.
  auto latents = golden->tensor("latents");
  auto input = golden->tensor("decoder_input");
  CHECK(relative_l2(latents / vae->config().scaling_factor, input) <= 1e-6);

  std::map<std::string, torch::Tensor> taps;
  auto decoded = vae->decode(
      input, [&](const std::string& name, const torch::Tensor& v) { taps[name] = v.clone(); });
  auto expected = golden->tensor("decoded");
  REQUIRE(decoded.sizes() == expected.sizes());  // [1,3,64,64]
  CHECK(relative_l2(decoded, expected) <= 1e-5);
  for (const char* name : {"post_quant_conv", "decoder.conv_in", "decoder.mid_block",
                           "decoder.up_blocks.0", "decoder.up_blocks.1"}) {
    INFO("debug intermediate " << name);
    auto ref = golden->tensor(std::string("debug.") + name);
    REQUIRE(taps.count(name) == 1);
    REQUIRE(taps[name].sizes() == ref.sizes());
    CHECK(relative_l2(taps[name], ref) <= 1e-5);
  }
}

TEST_CASE("VAE encoder gives a latent Gaussian of the right shape", "[vae]") {
  torch::NoGradGuard no_grad;
  torch::manual_seed(7);
  auto image = torch::rand({2, 3, 64, 64}) * 2 - 1;

  SECTION("fixture weights") {
    auto vae = load_vae(resolve_model(tiny_sd1().string()), torch::kCPU, torch::kFloat32);
    auto [mean, logvar] = vae->encode(image);
    CHECK(mean.sizes() == torch::IntArrayRef({2, 4, 8, 8}));
    CHECK(logvar.sizes() == torch::IntArrayRef({2, 4, 8, 8}));
    CHECK(torch::isfinite(mean).all().item<bool>());
    CHECK(torch::isfinite(logvar).all().item<bool>());
    CHECK(logvar.max().item<double>() <= 20.0);
    CHECK(logvar.min().item<double>() >= -30.0);
    CHECK(torch::equal(vae->encode_mean(image), mean));
    // Each image is encoded independently of its batch neighbours.
    auto single = vae->encode_mean(image.slice(0, 1, 2));
    CHECK(relative_l2(single, mean.slice(0, 1, 2)) <= 1e-5);
  }

  SECTION("randomly initialised model") {
    auto config = VaeConfig::from_json(read_json_file(tiny_sd1() / "vae" / "config.json"), "vae");
    AutoencoderKL vae(config);
    vae->eval();
    auto [mean, logvar] = vae->encode(image);
    CHECK(mean.sizes() == torch::IntArrayRef({2, 4, 8, 8}));
    CHECK(torch::isfinite(mean).all().item<bool>());
    CHECK(torch::isfinite(logvar).all().item<bool>());
    auto decoded = vae->decode(mean);
    CHECK(decoded.sizes() == torch::IntArrayRef({2, 3, 64, 64}));
    CHECK(torch::isfinite(decoded).all().item<bool>());
  }
}

TEST_CASE("VAE config errors name the key", "[vae][config]") {
  auto config = read_json_file(tiny_sd1() / "vae" / "config.json");
  config.erase("latent_channels");
  try {
    VaeConfig::from_json(config, "vae/config.json");
    FAIL("expected ConfigError");
  } catch (const ConfigError& e) {
    CHECK(std::string(e.what()).find("'latent_channels'") != std::string::npos);
  }
  // SD 1.x VAE configs predate scaling_factor: diffusers' default applies.
  config = read_json_file(tiny_sd1() / "vae" / "config.json");
  config.erase("scaling_factor");
  CHECK(VaeConfig::from_json(config, "vae").scaling_factor == Approx(0.18215));
}
