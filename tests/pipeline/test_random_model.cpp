// make-random-model: the written folders load strictly (keys right by construction), carry the
// architecture's configs, and run end to end.
#include <catch2/catch.hpp>

#include <unistd.h>
#include <filesystem>

#include <torch/torch.h>

#include "pipeline/clip_text_model.h"
#include "pipeline/media/config_util.h"
#include "pipeline/media/posix_fs.h"
#include "pipeline/model_folder.h"
#include "pipeline/random_model.h"
#include "pipeline/safetensors.h"
#include "pipeline/text/clip_tokenizer.h"
#include "pipeline/txt2img.h"
#include "pipeline/unet_config.h"
#include "pipeline/vae_config.h"

using namespace diffusiond;
namespace fs = std::filesystem;

namespace {
const fs::path kTokenizer = fs::path(DIFFUSIOND_FIXTURES) / "tiny-sd1" / "tokenizer";

// One 64x64 image of `folder` in 2 steps, on the CPU in fp32.
RgbImage image_of(const fs::path& folder, std::uint64_t seed) {
  Txt2ImgParams params;
  params.prompts = {"a cat!"};
  params.steps = 2;
  params.width = params.height = 64;
  params.seed = seed;
  auto images = StableDiffusion::load(resolve_model(folder.string()), torch::kCPU, torch::kFloat32)
                    ->generate(params);
  REQUIRE(images.size() == 1);
  return std::move(images.front());
}
}  // namespace

TEST_CASE("architecture configs are those SD 1.5 and SD 2.1 ship", "[random_model]") {
  auto sd15 = random_model_configs("sd15");
  auto te = ClipTextConfig::from_json(sd15.text_encoder, "te");
  CHECK(te.hidden_size == 768);
  CHECK(te.num_hidden_layers == 12);
  CHECK(te.hidden_act == "quick_gelu");
  auto unet = UNetConfig::from_json(sd15.unet, "unet");
  CHECK(unet.block_out_channels == std::vector<int>{320, 640, 1280, 1280});
  CHECK(unet.sample_size == 64);
  CHECK(sd15.unet["attention_head_dim"] == 8);
  CHECK(sd15.unet["cross_attention_dim"] == 768);
  auto vae = VaeConfig::from_json(sd15.vae, "vae");
  CHECK(vae.block_out_channels == std::vector<int>{128, 256, 512, 512});
  CHECK(sd15.scheduler["_class_name"] == "PNDMScheduler");
  CHECK(sd15.scheduler["skip_prk_steps"] == true);

  auto sd21 = random_model_configs("sd21");
  CHECK(sd21.text_encoder["hidden_act"] == "gelu");
  CHECK(sd21.text_encoder["num_hidden_layers"] == 23);
  CHECK(sd21.unet["attention_head_dim"] == nlohmann::json({5, 10, 20, 20}));
  CHECK(sd21.unet["use_linear_projection"] == true);
  CHECK(sd21.unet["upcast_attention"] == true);
  CHECK(sd21.unet["cross_attention_dim"] == 1024);
  CHECK(sd21.unet["sample_size"] == 96);
  CHECK(sd21.scheduler["prediction_type"] == "v_prediction");
  CHECK(sd21.pad_token == "!");
  CHECK_THROWS_WITH(random_model_configs("sd3"), Catch::Contains("sd3") && Catch::Contains("sdxl"));
}

TEST_CASE("the sdxl architecture configs are those SDXL base 1.0 ships", "[random_model][sdxl]") {
  // Writing one needs ~14 GB (fp32): the folder itself is for benchmarks; here the configs.
  auto c = random_model_configs("sdxl");
  CHECK(c.model_index["_class_name"] == "StableDiffusionXLPipeline");
  CHECK(c.model_index["force_zeros_for_empty_prompt"] == true);
  auto te2 = ClipTextConfig::from_json(c.text_encoder_2, "te2");
  CHECK(te2.hidden_size == 1280);
  CHECK(te2.num_hidden_layers == 32);
  CHECK(te2.projection_dim == 1280);
  CHECK(te2.hidden_act == "gelu");
  auto unet = UNetConfig::from_json(c.unet, "unet");
  CHECK(unet.block_out_channels == std::vector<int>{320, 640, 1280});
  CHECK(unet.sample_size == 128);
  CHECK(unet.num_attention_heads == std::vector<int>{5, 10, 20});
  CHECK(unet.down_transformer_layers.back() == std::vector<int>{10, 10});
  CHECK(unet.mid_transformer_layers == 10);
  CHECK(unet.addition_embed_type == "text_time");
  // projection input = pooled (1280) + 6 time ids x addition_time_embed_dim (256)
  CHECK(unet.projection_class_embeddings_input_dim == te2.projection_dim + 6 * 256);
  CHECK(c.vae["scaling_factor"] == 0.13025);
  CHECK(c.scheduler["_class_name"] == "EulerDiscreteScheduler");
  CHECK(c.pad_token_2 == "!");
}

TEST_CASE("the sdxl-turbo architecture is SDXL's networks with the Turbo scheduler",
          "[random_model][sdxl]") {
  const auto base = random_model_configs("sdxl");
  const auto turbo = random_model_configs("sdxl-turbo");
  CHECK(turbo.model_index["_class_name"] == "StableDiffusionXLPipeline");
  CHECK(turbo.model_index["scheduler"] ==
        nlohmann::json({"diffusers", "EulerAncestralDiscreteScheduler"}));
  CHECK(turbo.scheduler["_class_name"] == "EulerAncestralDiscreteScheduler");
  CHECK(turbo.scheduler["timestep_spacing"] == "trailing");
  CHECK(turbo.unet["sample_size"] == 64);  // 512x512
  auto unet = turbo.unet;
  unet["sample_size"] = base.unet["sample_size"];
  CHECK(unet == base.unet);
  CHECK(turbo.text_encoder == base.text_encoder);
  CHECK(turbo.text_encoder_2 == base.text_encoder_2);
  CHECK(turbo.vae == base.vae);
}

TEST_CASE("a random tiny-sd2 folder loads strictly and generates", "[random_model]") {
  const fs::path out =
      fs::temp_directory_path() / ("diffusiond_random_" + std::to_string(::getpid()));
  remove_tree(out);
  write_random_model("tiny-sd2", out, kTokenizer, {5});
  for (const char* file :
       {"model_index.json", "scheduler/scheduler_config.json", "tokenizer/vocab.json",
        "text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors"}) {
    INFO(file);
    CHECK(fs::is_regular_file(out / file));
  }
  CHECK(ClipTokenizer::load(out / "tokenizer").pad_token() == "!");
  // Weight scale: matrices ~ N(0, 0.02), norm scales 1, biases 0.
  auto te = SafetensorsFile::open(out / "text_encoder" / "model.safetensors");
  auto w = te->tensor("text_model.encoder.layers.0.mlp.fc1.weight");
  CHECK(w.std().item<double>() == Approx(0.02).epsilon(0.2));
  CHECK(torch::equal(te->tensor("text_model.final_layer_norm.weight"), torch::ones({32})));
  CHECK(torch::equal(te->tensor("text_model.final_layer_norm.bias"), torch::zeros({32})));

  auto pipe = StableDiffusion::load(resolve_model(out.string()), torch::kCPU, torch::kFloat32);
  CHECK(pipe->default_scheduler() == "ddim");
  Txt2ImgParams params;
  params.prompts = {"a cat!"};
  params.steps = 2;
  params.width = params.height = 64;
  auto images = pipe->generate(params);
  REQUIRE(images.size() == 1);
  CHECK(images[0].pixels.size() == 64u * 64u * 3u);
  remove_tree(out);
}

TEST_CASE("a random folder written in fp16 holds half-precision weights and generates",
          "[random_model]") {
  const fs::path base =
      fs::temp_directory_path() / ("diffusiond_random_" + std::to_string(::getpid()));
  const fs::path f32 = base.string() + "-fp32", f16 = base.string() + "-fp16";
  remove_tree(f32);
  remove_tree(f16);
  write_random_model("tiny-sd2", f32, kTokenizer, {5});
  RandomModelOptions half;
  half.seed = 5;
  half.dtype = RandomWeightsDtype::kFloat16;
  write_random_model("tiny-sd2", f16, kTokenizer, half);
  const auto unet32 = SafetensorsFile::open(f32 / "unet" / "diffusion_pytorch_model.safetensors");
  const auto unet16 = SafetensorsFile::open(f16 / "unet" / "diffusion_pytorch_model.safetensors");
  const auto w32 = unet32->tensor("conv_in.weight");
  const auto w16 = unet16->tensor("conv_in.weight");
  CHECK(w32.scalar_type() == torch::kFloat32);
  CHECK(w16.scalar_type() == torch::kFloat16);
  CHECK(torch::equal(w16, w32.to(torch::kFloat16)));  // the same draw, rounded
  CHECK(fs::file_size(f16 / "unet" / "diffusion_pytorch_model.safetensors") <
        fs::file_size(f32 / "unet" / "diffusion_pytorch_model.safetensors") * 6 / 10);

  // Loaded in fp32, the rounded weights give nearly the fp32 folder's image.
  const RgbImage a = image_of(f32, 3), b = image_of(f16, 3);
  REQUIRE(a.pixels.size() == b.pixels.size());
  double total = 0;
  for (std::size_t i = 0; i < a.pixels.size(); ++i)
    total += std::abs(int(a.pixels[i]) - int(b.pixels[i]));
  CHECK(total / double(a.pixels.size()) < 2.0);  // mean absolute difference, of 255
  remove_tree(f32);
  remove_tree(f16);
}

TEST_CASE("weights_from links another folder's weights of the same networks", "[random_model]") {
  const fs::path base =
      fs::temp_directory_path() / ("diffusiond_random_" + std::to_string(::getpid()) + "-links");
  const fs::path source = base / "source", linked = base / "linked", other = base / "other";
  remove_tree(base);
  write_random_model("tiny-sd2", source, kTokenizer, {7});
  RandomModelOptions options;
  options.weights_from = source;
  write_random_model("tiny-sd2", linked, kTokenizer, options);
  for (const char* file :
       {"text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors"}) {
    INFO(file);
    CHECK(fs::is_symlink(linked / file));
    CHECK(fs::equivalent(linked / file, source / file));
  }
  CHECK(image_of(source, 1).pixels == image_of(linked, 1).pixels);

  // Other networks (small-sd1's text encoder is not tiny-sd2's): refused, naming the config.
  options.weights_from = source;
  CHECK_THROWS_WITH(write_random_model("small-sd1", other, kTokenizer, options),
                    Catch::Contains((source / "text_encoder" / "config.json").string()) &&
                        Catch::Contains("other weights"));
  remove_tree(base);
}
