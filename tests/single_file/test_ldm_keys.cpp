// pipeline/ldm_keys: the LDM -> diffusers key map against diffusers' own conversion (the
// tiny-sd1 single file of tests/fixtures/tiny-sd1-extras, made by diffusers'
// convert_diffusers_to_original_stable_diffusion.py: see its golden/single_file.json) and against
// an independent inverse (ldm_inverse.h) for SD 2.x and SDXL; strays and unknown keys.
#include <catch2/catch.hpp>

#include <algorithm>
#include <map>
#include <set>

#include "ldm_inverse.h"
#include "pipeline/ldm_keys.h"
#include "pipeline/safetensors.h"

using namespace diffusiond;
namespace fs = std::filesystem;

namespace {

const fs::path kFixtures = DIFFUSIOND_FIXTURES;
const fs::path kTinySd1 = kFixtures / "tiny-sd1";
const fs::path kSingleFile = kFixtures / "tiny-sd1-extras" / "tiny-sd1.safetensors";

// name -> shape of a diffusers component file.
std::map<std::string, std::vector<int64_t>> component(const fs::path& file) {
  std::map<std::string, std::vector<int64_t>> out;
  const auto st = SafetensorsFile::open(file);  // alive for the loop (a temporary would not be)
  for (const auto& info : st->tensors()) out[info.name] = info.shape;
  return out;
}

// name -> shape of a mapped component of `index`.
std::map<std::string, std::vector<int64_t>> mapped(const LdmCheckpoint& ckpt,
                                                   const std::vector<StTensorInfo>& index,
                                                   const std::string& name) {
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const auto& i : index) shapes[i.name] = i.shape;
  std::map<std::string, std::vector<int64_t>> out;
  for (const auto& alias : ckpt.components.at(name))
    out[alias.name] = alias_shape(alias, shapes.at(alias.source));
  return out;
}

std::vector<StTensorInfo> index_of(const testing::StateDict& dict) {
  std::vector<StTensorInfo> out;
  for (const auto& [name, t] : dict) {
    StTensorInfo info;
    info.name = name;
    info.dtype = StDType::F32;
    info.shape = t.sizes().vec();
    out.push_back(info);
  }
  std::sort(out.begin(), out.end(),
            [](const StTensorInfo& a, const StTensorInfo& b) { return a.name < b.name; });
  return out;
}

StTensorInfo key(const std::string& name, std::vector<int64_t> shape = {1}) {
  StTensorInfo info;
  info.name = name;
  info.dtype = StDType::F32;
  info.shape = std::move(shape);
  return info;
}

}  // namespace

TEST_CASE("the tiny-sd1 single file maps onto exactly the folder's names and shapes",
          "[single_file]") {
  auto file = SafetensorsFile::open(kSingleFile);
  const LdmCheckpoint ckpt = map_ldm_checkpoint(file->tensors(), kSingleFile.string());
  CHECK(ckpt.layout == LdmLayout::kSD1);
  CHECK(ckpt.ignored.empty());
  CHECK(ckpt.components.size() == 3);
  CHECK(mapped(ckpt, file->tensors(), "unet") ==
        component(kTinySd1 / "unet" / "diffusion_pytorch_model.safetensors"));
  CHECK(mapped(ckpt, file->tensors(), "vae") ==
        component(kTinySd1 / "vae" / "diffusion_pytorch_model.safetensors"));
  CHECK(mapped(ckpt, file->tensors(), "text_encoder") ==
        component(kTinySd1 / "text_encoder" / "model.safetensors"));
}

TEST_CASE("the test's inverse map writes the keys diffusers' own conversion wrote",
          "[single_file]") {
  // The independent diffusers -> LDM helper agrees with diffusers' script on tiny-sd1, so the
  // round trips below (SD 2.x, SDXL) check ldm_keys against something real.
  std::map<std::string, std::vector<int64_t>> expected, ours;
  const auto file = SafetensorsFile::open(kSingleFile);
  for (const auto& info : file->tensors()) expected[info.name] = info.shape;
  for (const auto& [name, t] : testing::ldm_state_dict(kTinySd1, testing::LdmTarget::kSD1))
    ours[name] = t.sizes().vec();
  CHECK(ours == expected);
}

TEST_CASE("SDXL LDM keys map onto the tiny-sdxl folder's module names", "[single_file]") {
  const fs::path folder = kFixtures / "tiny-sdxl";
  const auto index = index_of(testing::ldm_state_dict(folder, testing::LdmTarget::kSDXL));
  const LdmCheckpoint ckpt = map_ldm_checkpoint(index, "sdxl.safetensors");
  CHECK(ckpt.layout == LdmLayout::kSDXL);
  for (const auto& [name, file] :
       std::map<std::string, std::string>{{"unet", "unet/diffusion_pytorch_model.safetensors"},
                                          {"vae", "vae/diffusion_pytorch_model.safetensors"},
                                          {"text_encoder", "text_encoder/model.safetensors"},
                                          {"text_encoder_2", "text_encoder_2/model.safetensors"}}) {
    INFO(name);
    CHECK(mapped(ckpt, index, name) == component(folder / file));
  }
  // The fused OpenCLIP projections split into q/k/v rows, text_projection transposed.
  const auto& te2 = ckpt.components.at("text_encoder_2");
  auto find = [&](const std::string& n) {
    auto it =
        std::find_if(te2.begin(), te2.end(), [&](const TensorAlias& a) { return a.name == n; });
    REQUIRE(it != te2.end());
    return *it;
  };
  const auto k = find("text_model.encoder.layers.1.self_attn.k_proj.weight");
  CHECK(k.source == "conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_weight");
  CHECK(k.op == TensorAlias::Op::kRows);
  CHECK(k.part == 1);
  CHECK(k.parts == 3);
  CHECK(find("text_projection.weight").op == TensorAlias::Op::kTransposed);
  // SDXL's UNet: label_emb -> add_embedding, the 2-layer transformer of down_blocks.1.
  const auto& unet = ckpt.components.at("unet");
  std::set<std::string> names;
  for (const auto& a : unet) names.insert(a.name + " <- " + a.source);
  CHECK(names.count("add_embedding.linear_1.weight <- model.diffusion_model.label_emb.0.0.weight"));
  CHECK(
      names.count("down_blocks.1.attentions.1.transformer_blocks.1.attn2.to_k.weight <- "
                  "model.diffusion_model.input_blocks.5.1.transformer_blocks.1.attn2.to_k.weight"));
}

TEST_CASE("SD 2.x OpenCLIP: in_proj split, the unused last block and text_projection skipped",
          "[single_file]") {
  std::vector<StTensorInfo> index;
  const std::string p = "cond_stage_model.model.";
  for (int block = 0; block < 3; ++block) {
    const std::string b = p + "transformer.resblocks." + std::to_string(block) + ".";
    index.push_back(key(b + "attn.in_proj_weight", {12, 4}));
    index.push_back(key(b + "attn.in_proj_bias", {12}));
    index.push_back(key(b + "ln_1.weight", {4}));
  }
  index.push_back(key(p + "text_projection", {4, 4}));
  index.push_back(key(p + "logit_scale", {}));
  index.push_back(key("model.diffusion_model.time_embed.0.weight", {8, 4}));
  index.push_back(key("first_stage_model.quant_conv.weight", {8, 8, 1, 1}));
  std::sort(index.begin(), index.end(),
            [](const StTensorInfo& a, const StTensorInfo& b) { return a.name < b.name; });
  const LdmCheckpoint ckpt = map_ldm_checkpoint(index, "sd2.safetensors");
  CHECK(ckpt.layout == LdmLayout::kSD2);
  const auto shapes = mapped(ckpt, index, "text_encoder");
  CHECK(shapes.at("text_model.encoder.layers.0.self_attn.q_proj.weight") ==
        std::vector<int64_t>{4, 4});
  CHECK(shapes.at("text_model.encoder.layers.1.self_attn.v_proj.bias") == std::vector<int64_t>{4});
  CHECK(shapes.count("text_model.encoder.layers.1.layer_norm1.weight"));
  CHECK_FALSE(shapes.count("text_model.encoder.layers.2.self_attn.q_proj.weight"));
  CHECK_FALSE(shapes.count("text_projection.weight"));
  const std::set<std::string> ignored(ckpt.ignored.begin(), ckpt.ignored.end());
  CHECK(ignored.count(p + "text_projection"));
  CHECK(ignored.count(p + "logit_scale"));
  CHECK(ignored.count(p + "transformer.resblocks.2.attn.in_proj_weight"));
}

TEST_CASE("known stray keys are ignored, an unknown key is an error naming it", "[single_file]") {
  auto file = SafetensorsFile::open(kSingleFile);
  std::vector<StTensorInfo> index = file->tensors();
  for (const char* stray :
       {"model_ema.decay", "model_ema.num_updates", "model_ema.diffusion_modelout0weight", "betas",
        "alphas_cumprod", "alphas_cumprod_prev", "posterior_mean_coef2", "logvar",
        "cond_stage_model.transformer.text_model.embeddings.position_ids"})
    index.push_back(key(stray));
  std::sort(index.begin(), index.end(),
            [](const StTensorInfo& a, const StTensorInfo& b) { return a.name < b.name; });
  const LdmCheckpoint ckpt = map_ldm_checkpoint(index, "strays.safetensors");
  CHECK(ckpt.ignored.size() == 9);
  CHECK(mapped(ckpt, index, "unet").size() == file->tensors().size() - 36 - 244);

  index.push_back(key("model.diffusion_model.input_blocks.1.7.weird"));
  index.push_back(key("something_else.weight"));
  CHECK_THROWS_MATCHES(map_ldm_checkpoint(index, "bad.safetensors"), LdmLayoutError,
                       Catch::Matchers::Predicate<LdmLayoutError>([](const LdmLayoutError& e) {
                         const std::string m = e.what();
                         return m.find("bad.safetensors") != std::string::npos &&
                                m.find("2 key(s)") != std::string::npos &&
                                m.find("model.diffusion_model.input_blocks.1.7.weird") !=
                                    std::string::npos &&
                                m.find("something_else.weight") != std::string::npos &&
                                m.find("SD 2.x cond_stage_model.model.*") != std::string::npos;
                       }));
}

TEST_CASE("files of no known layout are refused with what they look like", "[single_file]") {
  CHECK_THROWS_WITH(map_ldm_checkpoint({key("lora_unet_down_blocks_0.lora_down.weight")}, "l.st"),
                    Catch::Contains("looks like a LoRA") && Catch::Contains("layouts understood"));
  CHECK_THROWS_WITH(map_ldm_checkpoint({key("down_blocks.0.resnets.0.conv1.weight")}, "unet.st"),
                    Catch::Contains("one diffusers component"));
  CHECK_THROWS_WITH(map_ldm_checkpoint({key("cond_stage_model.transformer.text_model.x")}, "t.st"),
                    Catch::Contains("without a UNet"));
}
