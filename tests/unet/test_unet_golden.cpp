// UNet2DConditionModel against diffusers' own outputs on the tiny-sd1 fixture
// (golden/unet.json documents how golden/unet.safetensors was computed).
#include <catch2/catch.hpp>

#include <map>

#include <fstream>

#include "pipeline/media/config_util.h"
#include "pipeline/media/posix_fs.h"
#include "pipeline/model_folder.h"
#include "pipeline/safetensors.h"
#include "pipeline/unet.h"
#include "test_util.h"

using namespace diffusiond;
using diffusiond::test::relative_l2;
using diffusiond::test::tiny_sd1;

TEST_CASE("UNet matches diffusers at both golden timesteps", "[unet][golden]") {
  torch::NoGradGuard no_grad;
  auto golden = SafetensorsFile::open(tiny_sd1() / "golden" / "unet.safetensors");
  auto folder = resolve_model(tiny_sd1().string());
  auto unet = load_unet(folder, torch::kCPU, torch::kFloat32);

  auto sample = golden->tensor("sample");                  // [2,4,8,8]
  auto context = golden->tensor("encoder_hidden_states");  // [2,77,32]
  auto timesteps = golden->tensor("timesteps");            // [2] float32
  REQUIRE(timesteps.size(0) == 2);

  for (int k = 0; k < 2; ++k) {
    const double t = timesteps[k].item<double>();
    std::map<std::string, torch::Tensor> taps;
    auto out = unet->forward(
        sample, timesteps[k], context,
        [&](const std::string& name, const torch::Tensor& v) { taps[name] = v.clone(); });
    auto expected = golden->tensor("output." + std::to_string(k));
    REQUIRE(out.sizes() == expected.sizes());
    INFO("timestep " << t);
    CHECK(relative_l2(out, expected) <= 1e-5);

    // The scalar double entry point gives the same result.
    auto out_double = unet->forward(sample, t, context);
    CHECK(relative_l2(out_double, expected) <= 1e-5);

    if (k == 0) {
      for (const char* name :
           {"time_proj", "time_embedding", "conv_in", "down_blocks.0", "down_blocks.1", "mid_block",
            "up_blocks.0", "up_blocks.1", "conv_norm_out"}) {
        INFO("debug intermediate " << name);
        auto ref = golden->tensor(std::string("debug.t0.") + name);
        REQUIRE(taps.count(name) == 1);
        REQUIRE(taps[name].sizes() == ref.sizes());
        CHECK(relative_l2(taps[name], ref) <= 1e-5);
      }
    }
  }
}

TEST_CASE("UNet broadcasts one timestep over the batch like per-sample timesteps", "[unet]") {
  torch::NoGradGuard no_grad;
  auto golden = SafetensorsFile::open(tiny_sd1() / "golden" / "unet.safetensors");
  auto unet = load_unet(resolve_model(tiny_sd1().string()), torch::kCPU, torch::kFloat32);
  auto sample = golden->tensor("sample");
  auto context = golden->tensor("encoder_hidden_states");
  // Per-sample timesteps [999, 1]: row k must equal output.k's row k.
  auto out = unet->forward(sample, golden->tensor("timesteps"), context);
  CHECK(relative_l2(out[0], golden->tensor("output.0")[0]) <= 1e-5);
  CHECK(relative_l2(out[1], golden->tensor("output.1")[1]) <= 1e-5);
}

TEST_CASE("UNet loading names the config file of a missing key", "[unet][config]") {
  auto dir = std::filesystem::temp_directory_path() / "diffusiond_test_unet_missing_key";
  std::filesystem::create_directories(dir);
  auto config = read_json_file(tiny_sd1() / "unet" / "config.json");
  config.erase("block_out_channels");
  { std::ofstream(dir / "config.json") << config.dump(); }
  try {
    load_unet(dir / "config.json", tiny_sd1() / "unet" / "diffusion_pytorch_model.safetensors",
              torch::kCPU, torch::kFloat32);
    FAIL("expected ConfigError");
  } catch (const ConfigError& e) {
    const std::string what = e.what();
    CHECK(what.find("block_out_channels") != std::string::npos);
    CHECK(what.find("config.json") != std::string::npos);
  }
  remove_tree(dir);
}
