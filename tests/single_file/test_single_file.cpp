// Single-file checkpoints end to end: the tiny-sd1 single file (fp32, fp16) against diffusers'
// goldens (tests/fixtures/tiny-sd1-extras/golden/single_file.json says how they were made), the
// same image as the diffusers folder (SD 1.x, and SD 2.x / SDXL through synthetic LDM files
// written by ldm_inverse.h), bf16 files, where the configs come from, bad files, the CLI and the
// daemon's refusal to start.
#include <catch2/catch.hpp>

#include <unistd.h>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "ldm_inverse.h"
#include "pipeline/clip_text_model.h"
#include "pipeline/media/config_util.h"
#include "pipeline/media/png.h"
#include "pipeline/model_family.h"
#include "pipeline/random_model.h"
#include "pipeline/safetensors.h"
#include "pipeline/single_file.h"
#include "pipeline/text/clip_tokenizer.h"
#include "pipeline/txt2img.h"
#include "pipeline/unet.h"
#include "pipeline/unet_config.h"
#include "pipeline/vae_config.h"
#include "pipeline/weights.h"
#include "tests/golden_compare.h"

using namespace diffusiond;
namespace fs = std::filesystem;

using diffusiond::testing::max_pixel_difference;
using diffusiond::testing::read_png;
using diffusiond::testing::relative_l2;

namespace {

const fs::path kFixtures = DIFFUSIOND_FIXTURES;
const fs::path kTinySd1 = kFixtures / "tiny-sd1";
const fs::path kExtras = kFixtures / "tiny-sd1-extras";
const fs::path kFile = kExtras / "tiny-sd1.safetensors";
const fs::path kFileFp16 = kExtras / "tiny-sd1.fp16.safetensors";

// A temp folder for one test case, removed when it ends.
struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& name)
      : path(fs::temp_directory_path() /
             ("diffusiond_single_file_" + name + "_" + std::to_string(::getpid()))) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in.good());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  REQUIRE(out.good());
}

// The parameters of golden/single_file.json's cases (the same for fp32 and fp16).
Txt2ImgParams golden_params() {
  const auto meta = read_json_file(kExtras / "golden" / "single_file.json").at("cases").at(0);
  Txt2ImgParams p;
  p.prompts = {meta.at("prompt").get<std::string>()};
  p.negative_prompt = meta.at("negative_prompt").get<std::string>();
  p.seed = meta.at("seed").get<std::uint64_t>();
  p.steps = meta.at("steps").get<int>();
  p.guidance_scale = meta.at("guidance_scale").get<double>();
  p.width = meta.at("width").get<int>();
  p.height = meta.at("height").get<int>();
  p.scheduler = meta.at("scheduler").get<std::string>();
  return p;
}

struct Run {
  RgbImage image;
  std::map<std::string, torch::Tensor> dumped;
};

Run generate(const ModelFolder& model, const Txt2ImgParams& params,
             torch::ScalarType dtype = torch::kFloat32) {
  auto pipe = StableDiffusion::load(model, torch::kCPU, dtype);
  Run run;
  run.image = pipe->generate(params, {}, [&](const std::string& name, const torch::Tensor& v) {
    run.dumped[name] = v.clone();
  })[0];
  return run;
}

Txt2ImgParams small_params(int steps = 3) {
  Txt2ImgParams p;
  p.prompts = {"a red cube on a table"};
  p.negative_prompt = "blurry";
  p.seed = 7;
  p.steps = steps;
  p.guidance_scale = 5.0;
  p.width = 64;
  p.height = 64;
  return p;
}

// A checkpoint of only the given keys (1-element tensors): enough to resolve its configs.
void write_keys(const fs::path& path, const std::vector<std::string>& keys) {
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (const auto& k : keys) tensors.emplace_back(k, torch::zeros({1}));
  write_safetensors(path, tensors);
}

const std::vector<std::string> kSd1Keys = {
    "model.diffusion_model.time_embed.0.weight", "first_stage_model.quant_conv.weight",
    "cond_stage_model.transformer.text_model.final_layer_norm.weight"};
const std::vector<std::string> kSd2Keys = {"model.diffusion_model.time_embed.0.weight",
                                           "first_stage_model.quant_conv.weight",
                                           "cond_stage_model.model.ln_final.weight"};
const std::vector<std::string> kSdxlKeys = {
    "model.diffusion_model.time_embed.0.weight", "first_stage_model.quant_conv.weight",
    "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight",
    "conditioner.embedders.1.model.ln_final.weight"};

}  // namespace

TEST_CASE("the tiny-sd1 single file (fp32 and fp16) gives diffusers' golden image",
          "[single_file][golden]") {
  auto golden = SafetensorsFile::open(kExtras / "golden" / "single_file.safetensors");
  for (const auto& [file, name] :
       std::vector<std::pair<fs::path, std::string>>{{kFile, "fp32"}, {kFileFp16, "fp16"}}) {
    INFO(name);
    const ModelFolder model = resolve_model(file.string(), "", kTinySd1.string());
    CHECK(model.is_single_file());
    CHECK(model.location() == fs::absolute(file));
    const Run run = generate(model, golden_params());
    CHECK(relative_l2(run.dumped.at("latents"), golden->tensor(name + ".latents")) <= 1e-5);
    CHECK(relative_l2(run.dumped.at("prompt_embeds"), golden->tensor(name + ".prompt_embeds")) <=
          1e-5);
    const std::string png = name == "fp32" ? "single_file.png" : "single_file_fp16.png";
    CHECK(max_pixel_difference(run.image, decode_png(read_file(kExtras / "golden" / png))) <= 1);
  }
}

TEST_CASE("a single file and the diffusers folder it came from give the same image",
          "[single_file]") {
  const ModelFolder file = resolve_model(kFile.string(), "", kTinySd1.string());
  const ModelFolder folder = resolve_model(kTinySd1.string());
  const Run a = generate(file, small_params());
  const Run b = generate(folder, small_params());
  CHECK(a.image.pixels == b.image.pixels);
  CHECK(torch::equal(a.dumped.at("latents"), b.dumped.at("latents")));
  // The weights themselves are the folder's, bit for bit.
  auto ua = load_unet(file, torch::kCPU, torch::kFloat32);
  auto ub = load_unet(folder, torch::kCPU, torch::kFloat32);
  const auto pb = ub->named_parameters();
  for (const auto& p : ua->named_parameters()) CHECK(torch::equal(p.value(), pb[p.key()]));
}

TEST_CASE("SD 2.x single file: fused in_proj split, unused last block skipped, same image",
          "[single_file]") {
  TempDir tmp("sd2");
  const fs::path folder = tmp.path / "tiny-sd2";
  write_random_model("tiny-sd2", folder, kTinySd1 / "tokenizer", {11});
  auto dict = testing::ldm_state_dict(folder, testing::LdmTarget::kSD2);
  dict.emplace_back("model_ema.decay", torch::tensor(0.9999));
  dict.emplace_back("alphas_cumprod", torch::rand({1000}));
  write_safetensors(tmp.path / "tiny-sd2.safetensors", dict);
  const ModelFolder file =
      resolve_model((tmp.path / "tiny-sd2.safetensors").string(), "", folder.string());
  const Run a = generate(file, small_params());
  const Run b = generate(resolve_model(folder.string()), small_params());
  CHECK(torch::equal(a.dumped.at("prompt_embeds"), b.dumped.at("prompt_embeds")));
  CHECK(torch::equal(a.dumped.at("latents"), b.dumped.at("latents")));
  CHECK(a.image.pixels == b.image.pixels);
}

TEST_CASE("SDXL single file: both text encoders, the projection, the UNet: same image",
          "[single_file]") {
  TempDir tmp("sdxl");
  const fs::path folder = kFixtures / "tiny-sdxl";
  write_safetensors(tmp.path / "tiny-sdxl.safetensors",
                    testing::ldm_state_dict(folder, testing::LdmTarget::kSDXL));
  const ModelFolder file =
      resolve_model((tmp.path / "tiny-sdxl.safetensors").string(), "", folder.string());
  CHECK(is_sdxl(file));
  const Run a = generate(file, small_params(2));
  const Run b = generate(resolve_model(folder.string()), small_params(2));
  CHECK(torch::equal(a.dumped.at("add_text_embeds"), b.dumped.at("add_text_embeds")));
  CHECK(torch::equal(a.dumped.at("latents"), b.dumped.at("latents")));
  CHECK(a.image.pixels == b.image.pixels);
}

TEST_CASE("fp16 and bf16 files load, converted to the requested dtype", "[single_file]") {
  TempDir tmp("bf16");
  auto fp32 = SafetensorsFile::open(kFile);
  std::vector<std::pair<std::string, torch::Tensor>> bf16;
  for (const auto& info : fp32->tensors())
    bf16.emplace_back(info.name, fp32->tensor(info.name).to(torch::kBFloat16));
  write_safetensors(tmp.path / "tiny-bf16.safetensors", bf16);
  const auto folder = resolve_model(kTinySd1.string());
  auto reference = load_unet(folder, torch::kCPU, torch::kFloat32)->named_parameters();
  for (const auto& [file, rounded] : std::vector<std::pair<fs::path, torch::ScalarType>>{
           {tmp.path / "tiny-bf16.safetensors", torch::kBFloat16}, {kFileFp16, torch::kFloat16}}) {
    INFO(file.string());
    const auto model = resolve_model(file.string(), "", kTinySd1.string());
    auto unet = load_unet(model, torch::kCPU, torch::kFloat32);
    for (const auto& p : unet->named_parameters()) {
      CHECK(p.value().scalar_type() == torch::kFloat32);
      CHECK(torch::equal(p.value(), reference[p.key()].to(rounded).to(torch::kFloat32)));
    }
    CHECK(load_unet(model, torch::kCPU, torch::kBFloat16)->parameters()[0].scalar_type() ==
          torch::kBFloat16);
  }
}

TEST_CASE("a file that is not a checkpoint diffusiond understands is a clear error",
          "[single_file]") {
  TempDir tmp("bad");
  write_text(tmp.path / "notes.safetensors", "this is not a safetensors file at all\n");
  CHECK_THROWS_AS(resolve_model((tmp.path / "notes.safetensors").string()), SafetensorsError);
  const std::string bytes = read_file(kFile);
  write_text(tmp.path / "truncated.safetensors", bytes.substr(0, bytes.size() / 2));
  CHECK_THROWS_WITH(resolve_model((tmp.path / "truncated.safetensors").string()),
                    Catch::Contains("truncated.safetensors"));
  CHECK_THROWS_WITH(resolve_model((kExtras / "lora" / "style_kohya.safetensors").string()),
                    Catch::Contains("looks like a LoRA"));
  CHECK_THROWS_WITH(
      resolve_model((kTinySd1 / "unet" / "diffusion_pytorch_model.safetensors").string()),
      Catch::Contains("one diffusers component"));
  write_keys(tmp.path / "refiner.safetensors",
             {"model.diffusion_model.time_embed.0.weight", "first_stage_model.quant_conv.weight",
              "conditioner.embedders.0.model.ln_final.weight"});
  CHECK_THROWS_WITH(resolve_model((tmp.path / "refiner.safetensors").string()),
                    Catch::Contains("SDXL refiner") && Catch::Contains("img2img"));
  CHECK_THROWS_WITH(resolve_model(kTinySd1.string(), "", kTinySd1.string()),
                    Catch::Contains("applies to single-file checkpoints"));
}

TEST_CASE("a mis-shaped key names the diffusers key and the file's key", "[single_file]") {
  TempDir tmp("shape");
  fs::copy(kTinySd1, tmp.path / "config", fs::copy_options::recursive);
  auto unet = read_json_file(tmp.path / "config" / "unet" / "config.json");
  unet["cross_attention_dim"] = 40;
  write_text(tmp.path / "config" / "unet" / "config.json", unet.dump());
  const auto model = resolve_model(kFile.string(), "", (tmp.path / "config").string());
  CHECK_THROWS_WITH(load_unet(model, torch::kCPU, torch::kFloat32),
                    Catch::Contains("tiny-sd1.safetensors (unet, LDM keys mapped)") &&
                        Catch::Contains("mis-shaped") &&
                        Catch::Contains("down_blocks.0.attentions.0.transformer_blocks.0.attn2."
                                        "to_k.weight from model.diffusion_model.input_blocks.1.1."
                                        "transformer_blocks.0.attn2.to_k.weight"));
}

TEST_CASE("configs: --model-config, else a sibling yaml, else the recognised family",
          "[single_file]") {
  TempDir tmp("configs");
  auto family_of = [](const ModelFolder& m) { return m.root.filename().string(); };
  write_keys(tmp.path / "sd1.safetensors", kSd1Keys);
  write_keys(tmp.path / "sd2.safetensors", kSd2Keys);
  write_keys(tmp.path / "sd2b.safetensors", kSd2Keys);
  write_keys(tmp.path / "sd2v.safetensors", kSd2Keys);
  write_keys(tmp.path / "sd_turbo.safetensors", kSd2Keys);
  write_keys(tmp.path / "xl.safetensors", kSdxlKeys);
  write_keys(tmp.path / "sd_xl_Turbo_1.0.safetensors", kSdxlKeys);
  auto resolve = [&](const std::string& name) {
    return resolve_single_file(tmp.path / (name + ".safetensors"));
  };
  CHECK(family_of(resolve("sd1")) == "sd15");
  const ModelFolder sd2 = resolve("sd2");
  CHECK(family_of(sd2) == "sd21");  // 768-v, as diffusers' from_single_file defaults
  CHECK(sd2.scheduler_config().at("prediction_type") == "v_prediction");
  CHECK_THAT(sd2.config_source, Catch::Contains("768-v"));
  CHECK(family_of(resolve("sd_turbo")) == "sd-turbo");
  CHECK(model_family(resolve("sd_turbo")) == ModelFamily::kSDTurbo);
  CHECK(family_of(resolve("xl")) == "sdxl-base");
  CHECK(model_family(resolve("sd_xl_Turbo_1.0")) == ModelFamily::kSDXLTurbo);

  // Sibling yaml files as A1111 reads them: v2-inference.yaml (512, epsilon) and
  // v2-inference-v.yaml; a v-prediction SD 1.x; one for the wrong family.
  const std::string v2 =
      "model:\n  base_learning_rate: 1.0e-4\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n"
      "  params:\n    linear_start: 0.00085 # comment\n    PARAMETERIZATION\n"
      "    unet_config:\n      target: ldm.modules.diffusionmodules.openaimodel.UNetModel\n"
      "      params:\n        attention_resolutions: [ 4, 2, 1 ]\n        channel_mult: [ 1, 2, 4, "
      "4 ]\n"
      "        context_dim: CONTEXT\n        use_linear_in_transformer: True\n"
      "    cond_stage_config:\n      target: ldm.modules.encoders.modules.COND\n"
      "      params:\n        freeze: True\n        layer: \"penultimate\"\n";
  auto yaml = [&](const std::string& p, const std::string& ctx, const std::string& cond) {
    std::string s = v2;
    s.replace(s.find("PARAMETERIZATION"), 16, p.empty() ? "use_ema: False" : p);
    s.replace(s.find("CONTEXT"), 7, ctx);
    s.replace(s.find("COND"), 4, cond);
    return s;
  };
  write_text(tmp.path / "sd2b.yaml", yaml("", "1024", "FrozenOpenCLIPEmbedder"));
  write_text(tmp.path / "sd2v.yaml",
             yaml("parameterization: \"v\"", "1024", "FrozenOpenCLIPEmbedder"));
  const ModelFolder base = resolve("sd2b");
  CHECK(family_of(base) == "sd21-base");
  CHECK(base.scheduler_config().at("prediction_type") == "epsilon");
  CHECK_THAT(base.config_source, Catch::Contains("sd2b.yaml"));
  CHECK(family_of(resolve("sd2v")) == "sd21");
  write_text(tmp.path / "sd1.yaml", yaml("parameterization: v", "768", "FrozenCLIPEmbedder"));
  const ModelFolder sd1v = resolve("sd1");
  CHECK(family_of(sd1v) == "sd15");
  CHECK(sd1v.scheduler_config().at("prediction_type") == "v_prediction");
  write_text(tmp.path / "xl.yaml", yaml("", "768", "FrozenCLIPEmbedder"));
  CHECK_THROWS_WITH(resolve("xl"), Catch::Contains("xl.yaml describes an SD 1.x model") &&
                                       Catch::Contains("SDXL checkpoint"));

  // --model-config wins over the yaml, and must be the right kind of model.
  CHECK(resolve_single_file(tmp.path / "xl.safetensors", (kFixtures / "tiny-sdxl").string()).root ==
        fs::absolute(kFixtures / "tiny-sdxl"));
  CHECK_THROWS_WITH(
      resolve_single_file(tmp.path / "sd1.safetensors", (kFixtures / "tiny-sdxl").string()),
      Catch::Contains("an SD 1.x checkpoint but --model-config"));
}

TEST_CASE("the shipped family configs parse and say their family and size", "[single_file]") {
  const std::map<std::string, std::pair<ModelFamily, int>> expected = {
      {"sd15", {ModelFamily::kSD, 512}},         {"sd21", {ModelFamily::kSD, 768}},
      {"sd21-base", {ModelFamily::kSD, 512}},    {"sd-turbo", {ModelFamily::kSDTurbo, 512}},
      {"sdxl-base", {ModelFamily::kSDXL, 1024}}, {"sdxl-turbo", {ModelFamily::kSDXLTurbo, 512}}};
  REQUIRE(known_families().size() == expected.size());
  // Every family shares CLIP's BPE vocabulary (its pad token differs: compare up to the EOS).
  auto first4 = [](std::vector<int64_t> ids) {
    return std::vector<int64_t>(ids.begin(), ids.begin() + 4);
  };
  const auto tiny_ids = first4(ClipTokenizer::load(kTinySd1 / "tokenizer").encode("a photograph"));
  for (const auto& family : known_families()) {
    INFO(family);
    const ModelFolder m = resolve_model(family_config_dir(family).string());
    CHECK(model_family(m) == expected.at(family).first);
    const auto unet = UNetConfig::from_json(read_json_file(m.config_path("unet")), "unet");
    const auto vae = VaeConfig::from_json(read_json_file(m.config_path("vae")), "vae");
    CHECK(unet.sample_size * vae.scale_factor() == expected.at(family).second);
    ClipTextConfig::from_file(m.config_path("text_encoder"));
    CHECK(first4(ClipTokenizer::load(m.root / "tokenizer").encode("a photograph")) == tiny_ids);
    if (is_sdxl(m)) {
      CHECK(ClipTextConfig::from_file(m.config_path("text_encoder_2")).projection_dim == 1280);
      ClipTokenizer::load(m.root / "tokenizer_2");
    }
  }
}

TEST_CASE("diffusiond generate --model FILE --model-config DIR writes the folder's PNG",
          "[single_file][cli]") {
  const char* bin = std::getenv("DIFFUSIOND_BIN");
  REQUIRE(bin != nullptr);
  TempDir tmp("cli");
  auto run = [&](const std::string& model, const std::string& out) {
    const std::string command = std::string(bin) + " generate --model " + model +
                                " --prompt \"a red cube\" --seed 5 --steps 4 --width 64 --height "
                                "64 -o " +
                                (tmp.path / out).string() + " > " +
                                (tmp.path / (out + ".log")).string() + " 2>&1";
    INFO(command);
    return std::system(command.c_str());
  };
  REQUIRE(run(kFile.string() + " --model-config " + kTinySd1.string(), "file.png") == 0);
  REQUIRE(run(kTinySd1.string(), "folder.png") == 0);
  const std::string file_png = read_file(tmp.path / "file.png");
  CHECK(decode_png(file_png).pixels == decode_png(read_file(tmp.path / "folder.png")).pixels);
  CHECK_THAT(read_png_text_chunks(file_png).at(0).text, Catch::Contains("Model: tiny-sd1"));

  write_text(tmp.path / "broken.safetensors", "not a checkpoint");
  CHECK(run((tmp.path / "broken.safetensors").string(), "broken.png") != 0);
  CHECK_THAT(read_file(tmp.path / "broken.png.log"),
             Catch::Contains("diffusiond: error:") && Catch::Contains("broken.safetensors"));
  CHECK_FALSE(fs::exists(tmp.path / "broken.png"));
}

TEST_CASE("diffusiond serve refuses to start on a bad single file, saying why",
          "[single_file][cli]") {
  const char* bin = std::getenv("DIFFUSIOND_BIN");
  REQUIRE(bin != nullptr);
  TempDir tmp("serve");
  write_keys(tmp.path / "odd.safetensors",
             {"model.diffusion_model.time_embed.0.weight", "first_stage_model.quant_conv.weight",
              "cond_stage_model.transformer.text_model.final_layer_norm.weight",
              "model.diffusion_model.mystery.weight"});
  const std::string command =
      std::string(bin) + " serve --model " + (tmp.path / "odd.safetensors").string() +
      " --data-dir " + (tmp.path / "data").string() + " --listen 127.0.0.1:7999 --devices cpu > " +
      (tmp.path / "serve.log").string() + " 2>&1";
  INFO(command);
  CHECK(std::system(command.c_str()) != 0);
  CHECK_THAT(read_file(tmp.path / "serve.log"),
             Catch::Contains("model.diffusion_model.mystery.weight") &&
                 Catch::Contains("layouts understood"));
}
