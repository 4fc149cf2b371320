// UNet config semantics (diffusers' UNet2DConditionModel.__init__) and an SD 2-style model:
// linear projections, upcast attention, per-block head counts, several transformer layers.
#include <catch2/catch.hpp>

#include <algorithm>
#include <fstream>

#include "pipeline/media/config_util.h"
#include "pipeline/media/posix_fs.h"
#include "pipeline/safetensors.h"
#include "pipeline/unet.h"
#include "pipeline/weights.h"
#include "test_util.h"

using namespace diffusiond;
using diffusiond::test::tiny_sd1;
using nlohmann::json;

namespace {

// Tiny SD 2.x-style config (SD 2.1 has attention_head_dim [5,10,20,20], use_linear_projection
// and upcast_attention true).
json sd2_style_config() {
  return json::parse(R"({
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": [2, 4, 8],
    "block_out_channels": [32, 64, 64],
    "center_input_sample": false,
    "cross_attention_dim": 32,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": false,
    "flip_sin_to_cos": true,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 1,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 16,
    "num_class_embeds": null,
    "only_cross_attention": false,
    "out_channels": 4,
    "sample_size": 12,
    "transformer_layers_per_block": [1, 2, 3],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "upcast_attention": true,
    "use_linear_projection": true
  })");
}

std::shared_ptr<AttentionImpl> find_attention(torch::nn::Module& model, const std::string& name) {
  for (const auto& item : model.named_modules()) {
    if (item.key() == name) return std::dynamic_pointer_cast<AttentionImpl>(item.value());
  }
  return nullptr;
}

std::string config_error(const json& config) {
  try {
    UNetConfig::from_json(config, "unet/config.json");
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("UNet config resolves per-block values like diffusers", "[unet][config]") {
  SECTION("tiny-sd1: attention_head_dim is the number of heads") {
    auto c = UNetConfig::from_json(read_json_file(tiny_sd1() / "unet" / "config.json"), "cfg");
    CHECK(c.num_attention_heads == std::vector<int>{8, 8});
    CHECK(c.layers_per_block == std::vector<int>{2, 2});
    CHECK(c.up_layers(0) == 3);
    CHECK(c.time_embedding_dim == 128);
    CHECK(c.mid_block_type == "UNetMidBlock2DCrossAttn");
    CHECK_FALSE(c.use_linear_projection);
  }
  SECTION("SD 2-style: lists follow the down blocks and reverse for the up blocks") {
    auto c = UNetConfig::from_json(sd2_style_config(), "cfg");
    CHECK(c.num_attention_heads == std::vector<int>{2, 4, 8});
    CHECK(c.up_num_attention_heads(0) == 8);
    CHECK(c.up_num_attention_heads(2) == 2);
    CHECK(c.down_transformer_layers == std::vector<std::vector<int>>{{1}, {2}, {3}});
    CHECK(c.up_transformer_layers == std::vector<std::vector<int>>{{3, 3}, {2, 2}, {1, 1}});
    CHECK(c.mid_transformer_layers == 3);
    CHECK(c.use_linear_projection);
    CHECK(c.upcast_attention);
  }
  SECTION("num_attention_heads, when given, is the head count") {
    auto j = sd2_style_config();
    j["num_attention_heads"] = 4;
    CHECK(UNetConfig::from_json(j, "cfg").num_attention_heads == std::vector<int>{4, 4, 4});
  }
}

TEST_CASE("UNet config errors name the key or the unsupported feature", "[unet][config]") {
  for (const char* key : {"block_out_channels", "down_block_types", "cross_attention_dim",
                          "sample_size", "layers_per_block", "attention_head_dim"}) {
    auto j = sd2_style_config();
    j.erase(key);
    const auto what = config_error(j);
    INFO(what);
    CHECK(what.find(std::string("'") + key + "'") != std::string::npos);
    CHECK(what.find("unet/config.json") != std::string::npos);
  }
  auto j = sd2_style_config();
  j["dual_cross_attention"] = true;
  CHECK(config_error(j).find("dual_cross_attention") != std::string::npos);
  j = sd2_style_config();
  j["class_embed_type"] = "timestep";
  CHECK(config_error(j).find("class_embed_type") != std::string::npos);
  j = sd2_style_config();
  j["addition_embed_type"] = "image";  // Kandinsky-style: refused by name
  CHECK(config_error(j).find("addition_embed_type") != std::string::npos);
  j = sd2_style_config();
  j["addition_embed_type"] = "text_time";  // SDXL's, but without its sizes
  CHECK(config_error(j).find("addition_time_embed_dim") != std::string::npos);
  j = sd2_style_config();
  j["time_embedding_type"] = "fourier";
  CHECK(config_error(j).find("time_embedding_type") != std::string::npos);
  j = sd2_style_config();
  j["attention_head_dim"] = json::array({2, 4});
  CHECK(config_error(j).find("attention_head_dim") != std::string::npos);
  j = sd2_style_config();
  j["down_block_types"][0] = "SimpleCrossAttnDownBlock2D";
  CHECK(config_error(j).find("SimpleCrossAttnDownBlock2D") != std::string::npos);
}

TEST_CASE("SD 2-style UNet builds, saves, loads strictly and runs", "[unet][sd2]") {
  torch::NoGradGuard no_grad;
  torch::manual_seed(0);
  const auto config = UNetConfig::from_json(sd2_style_config(), "sd2");
  UNet2DConditionModel model(config);
  model->eval();

  // Head counts and attention flags reach every attention module.
  struct Expect {
    const char* name;
    int heads;
  };
  for (const Expect& e : {Expect{"down_blocks.0.attentions.0.transformer_blocks.0.attn1", 2},
                          Expect{"down_blocks.1.attentions.0.transformer_blocks.1.attn2", 4},
                          Expect{"mid_block.attentions.0.transformer_blocks.2.attn1", 8},
                          Expect{"up_blocks.1.attentions.1.transformer_blocks.1.attn1", 4},
                          Expect{"up_blocks.2.attentions.0.transformer_blocks.0.attn2", 2}}) {
    INFO(e.name);
    auto attn = find_attention(*model, e.name);
    REQUIRE(attn != nullptr);
    CHECK(attn->options().heads == e.heads);
    CHECK(attn->options().heads * attn->options().dim_head ==
          attn->named_parameters()["to_q.weight"].size(0));
    CHECK(attn->options().upcast_attention);
  }

  auto dir = std::filesystem::temp_directory_path() / "diffusiond_test_sd2_unet";
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "config.json") << sd2_style_config().dump(2);
  auto tensors = state_dict(*model);
  write_safetensors(dir / "diffusion_pytorch_model.safetensors", tensors);

  // Key layout of an SD 2 checkpoint: linear proj_in/proj_out, per-block transformer depth.
  auto file = SafetensorsFile::open(dir / "diffusion_pytorch_model.safetensors");
  REQUIRE(file->find("down_blocks.0.attentions.0.proj_in.weight") != nullptr);
  CHECK(file->find("down_blocks.0.attentions.0.proj_in.weight")->shape ==
        std::vector<int64_t>{32, 32});
  CHECK(file->find("down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k.weight")->shape ==
        std::vector<int64_t>{64, 32});
  CHECK(file->contains("mid_block.attentions.0.transformer_blocks.2.ff.net.2.weight"));
  CHECK_FALSE(file->contains("mid_block.attentions.0.transformer_blocks.3.norm1.weight"));
  CHECK(file->contains("up_blocks.0.resnets.1.conv_shortcut.weight"));  // layers_per_block + 1
  CHECK_FALSE(file->contains("up_blocks.0.resnets.2.norm1.weight"));
  CHECK_FALSE(file->contains("up_blocks.0.attentions.0.norm.weight"));
  CHECK_FALSE(file->contains("down_blocks.2.downsamplers.0.conv.weight"));

  auto loaded = load_unet(dir / "config.json", dir / "diffusion_pytorch_model.safetensors",
                          torch::kCPU, torch::kFloat32);

  for (int64_t size : {8, 10}) {  // 10: not a multiple of 4, upsample sizes are forwarded
    INFO("latent size " << size);
    auto sample = torch::randn({2, 4, size, size});
    auto context = torch::randn({2, 77, 32});
    auto out = loaded->forward(sample, 981.0, context);
    CHECK(out.sizes() == torch::IntArrayRef({2, 4, size, size}));
    CHECK(torch::isfinite(out).all().item<bool>());
    CHECK(torch::equal(out, model->forward(sample, 981.0, context)));
  }

  // Strict loading: a missing tensor is named.
  file.reset();  // unmap before the file is rewritten
  tensors.erase(std::remove_if(tensors.begin(), tensors.end(),
                               [](const auto& kv) {
                                 return kv.first == "mid_block.attentions.0.proj_out.bias";
                               }),
                tensors.end());
  write_safetensors(dir / "diffusion_pytorch_model.safetensors", tensors);
  try {
    load_unet(dir / "config.json", dir / "diffusion_pytorch_model.safetensors", torch::kCPU,
              torch::kFloat32);
    FAIL("expected WeightsError");
  } catch (const WeightsError& e) {
    CHECK(std::string(e.what()).find("mid_block.attentions.0.proj_out.bias") != std::string::npos);
  }
  remove_tree(dir);
}
