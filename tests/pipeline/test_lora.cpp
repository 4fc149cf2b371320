// LoRA (pipeline/lora.h) against tiny-sd1-extras/golden/lora.* (diffusers' own merge of the
// kohya and PEFT fixture files at 0.8, see golden/lora.json "merge"), against merges this test
// computes itself from the file tensors (two LoRAs, a negative weight, a LoCon conv layer, LDM
// names), the exact restore of the base weights, and `diffusiond generate --lora`.
#include <catch2/catch.hpp>

#include <openssl/sha.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <sstream>

#include <torch/torch.h>

#include "golden_pipeline.h"
#include "pipeline/clip_text_model.h"
#include "pipeline/lora.h"
#include "pipeline/media/config_util.h"
#include "pipeline/media/png.h"
#include "pipeline/model_folder.h"
#include "pipeline/safetensors.h"
#include "pipeline/txt2img.h"
#include "pipeline/unet.h"
#include "tests/golden_compare.h"

using namespace diffusiond;
namespace fs = std::filesystem;

using diffusiond::testing::max_pixel_difference;
using diffusiond::testing::read_png;
using diffusiond::testing::relative_l2;

namespace {

const fs::path kModel = fs::path(DIFFUSIOND_FIXTURES) / "tiny-sd1";
const fs::path kExtras = fs::path(DIFFUSIOND_FIXTURES) / "tiny-sd1-extras";
const fs::path kKohya = kExtras / "lora" / "style_kohya.safetensors";
const fs::path kPeft = kExtras / "lora" / "style_peft.safetensors";

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in.good());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

StableDiffusion& pipeline() {
  static std::unique_ptr<StableDiffusion> pipe =
      StableDiffusion::load(resolve_model(kModel.string()), torch::kCPU, torch::kFloat32);
  return *pipe;
}

struct TempDir {
  fs::path path =
      fs::temp_directory_path() / ("diffusiond_test_lora_" + std::to_string(::getpid()));
  TempDir() { fs::create_directories(path); }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

// The tiny model's weights as LoRA targets, loaded on their own (not the pipeline's).
struct Modules {
  UNet2DConditionModel unet{nullptr};
  ClipTextModel text_encoder{nullptr};
  Modules() {
    const ModelFolder folder = resolve_model(kModel.string());
    unet = load_unet(folder, torch::kCPU, torch::kFloat32);
    text_encoder =
        load_clip_text_model(folder.config_path("text_encoder"),
                             folder.weights_path("text_encoder"), torch::kCPU, torch::kFloat32);
  }
  std::vector<LoraTarget> targets() const {
    return {{"unet", unet.ptr()}, {"text_encoder", text_encoder.ptr()}};
  }
  // "unet", "down_blocks.0....to_q" -> its weight parameter.
  torch::Tensor weight(const std::string& component, const std::string& module) const {
    const torch::nn::Module& root =
        component == "unet" ? static_cast<const torch::nn::Module&>(*unet.ptr())
                            : static_cast<const torch::nn::Module&>(*text_encoder.ptr());
    const auto params = root.named_parameters();
    const auto* w = params.find(module + ".weight");
    REQUIRE(w != nullptr);
    return *w;
  }
  std::map<std::string, torch::Tensor> snapshot() const {  // deep copies
    std::map<std::string, torch::Tensor> all;
    for (const auto& p : unet->named_parameters()) all["unet." + p.key()] = p.value().clone();
    for (const auto& p : text_encoder->named_parameters()) all["te." + p.key()] = p.value().clone();
    return all;
  }
};

// The deltas of a file, computed here from its tensors: module ("unet:..." / "text_encoder:...")
// -> scale * up @ down, for the PEFT file (keys unet.<module>.lora_A.weight) and the kohya file
// (keys lora_unet_<module with '_'>, the module list from golden/lora.json).
std::map<std::string, torch::Tensor> expected_deltas(const fs::path& file, const Modules& modules) {
  const auto f = SafetensorsFile::open(file);
  std::map<std::string, torch::Tensor> deltas;
  auto delta = [&](const std::string& down_key, const std::string& up_key,
                   const std::string& alpha_key, const torch::Tensor& w) {
    auto down = f->tensor(down_key).to(torch::kFloat32);
    auto up = f->tensor(up_key).to(torch::kFloat32);
    const double r = static_cast<double>(down.size(0));
    const double scale =
        f->contains(alpha_key) ? f->tensor(alpha_key).to(torch::kFloat64).item<double>() / r : 1.0;
    return torch::mm(up.flatten(1), down.flatten(1)).reshape(w.sizes()) * scale;
  };
  const auto golden = read_json_file(kExtras / "golden" / "lora.json");
  for (const auto& entry : golden["lora_files"]["style_kohya.safetensors"]["module_paths"]
                               .get<std::vector<std::string>>()) {
    const bool te = entry.rfind("te:", 0) == 0;
    const std::string module = entry.substr(entry.find(':') + 1);
    const std::string component = te ? "text_encoder" : "unet";
    std::string flat = module;
    std::replace(flat.begin(), flat.end(), '.', '_');
    const std::string kohya = (te ? "lora_te_" : "lora_unet_") + flat;
    const std::string peft = component + "." + module;
    const auto w = modules.weight(component, module);
    if (f->contains(kohya + ".lora_down.weight"))
      deltas[component + ":" + module] =
          delta(kohya + ".lora_down.weight", kohya + ".lora_up.weight", kohya + ".alpha", w);
    else
      deltas[component + ":" + module] =
          delta(peft + ".lora_A.weight", peft + ".lora_B.weight", peft + ".alpha", w);
  }
  return deltas;
}

Txt2ImgParams golden_lora_params() {
  Txt2ImgParams p = testing::golden_pipeline_params(kModel);
  const auto golden = read_json_file(kExtras / "golden" / "lora.json");
  CHECK(p.prompts.front() == golden["prompt"].get<std::string>());
  CHECK(p.seed == golden["seed"].get<std::uint64_t>());
  return p;
}

std::string sha256_hex(const std::string& bytes) {
  unsigned char md[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(), md);
  std::ostringstream out;
  for (unsigned char c : md) out << std::hex << std::setw(2) << std::setfill('0') << int(c);
  return out.str();
}

}  // namespace

TEST_CASE("kohya and PEFT LoRAs at 0.8 give diffusers' golden LoRA image", "[lora][golden]") {
  const auto golden = read_json_file(kExtras / "golden" / "lora.json");
  const RgbImage expected = read_png(kExtras / "golden" / "lora_style_kohya.png");
  const auto tensors = SafetensorsFile::open(kExtras / "golden" / "lora.safetensors");
  for (const fs::path& file : {kKohya, kPeft}) {
    INFO(file.string());
    Txt2ImgParams params = golden_lora_params();
    params.loras = {{file, 0.8}};
    std::map<std::string, torch::Tensor> dumped;
    const auto images = pipeline().generate(
        params, {}, [&](const std::string& n, const torch::Tensor& v) { dumped[n] = v; });
    REQUIRE(images.size() == 1);
    CHECK(max_pixel_difference(images[0], expected) <= 1);
    // The text encoder's deltas reach both halves of the embeddings (prompt and negative).
    const auto embeds = tensors->tensor("prompt_embeds");
    CHECK((dumped.at("prompt_embeds") - embeds).abs().max().item<double>() < 1e-4);
    CHECK((dumped.at("latents") - tensors->tensor("latents")).abs().max().item<double>() < 1e-3);
  }
  pipeline().apply_loras({});
}

TEST_CASE("LoRA merges match diffusers' merged weights", "[lora][golden]") {
  Modules modules;
  LoraState state(modules.targets());
  const auto tensors = SafetensorsFile::open(kExtras / "golden" / "lora.safetensors");
  for (const fs::path& file : {kKohya, kPeft}) {
    INFO(file.string());
    const auto report = state.apply({{file, 0.8}});
    CHECK(report.changed);
    CHECK(report.merged_weights == 84);  // golden: 72 UNet + 12 text encoder tensors
    CHECK(report.ignored.empty());
    int checked = 0;
    for (const auto& info : tensors->tensors()) {
      if (info.name.rfind("merged.", 0) != 0) continue;
      std::string rest = info.name.substr(7);
      const std::string component = rest.substr(0, rest.find('.'));
      std::string module = rest.substr(component.size() + 1);
      module = module.substr(0, module.size() - std::string(".weight").size());
      const auto w = modules.weight(component, module);
      CHECK((w - tensors->tensor(info.name)).abs().max().item<double>() <= 1e-6);
      ++checked;
    }
    CHECK(checked == 5);
  }
}

TEST_CASE("two LoRAs at once and a negative weight merge as the math says", "[lora]") {
  Modules modules;
  const auto base = modules.snapshot();
  const auto kohya = expected_deltas(kKohya, modules);
  const auto peft = expected_deltas(kPeft, modules);
  REQUIRE(kohya.size() == 84);
  LoraState state(modules.targets());
  state.apply({{kKohya, 0.8}, {kPeft, -0.3}});
  for (const auto& [target, d1] : kohya) {
    const std::string component = target.substr(0, target.find(':'));
    const std::string module = target.substr(target.find(':') + 1);
    const auto w0 = base.at((component == "unet" ? "unet." : "te.") + module + ".weight");
    const auto expected = w0 + d1 * 0.8 + peft.at(target) * -0.3;
    INFO(target);
    CHECK((modules.weight(component, module) - expected).abs().max().item<double>() <= 1e-6);
  }
  // The same set again changes nothing; another order is another set.
  CHECK_FALSE(state.apply({{kKohya, 0.8}, {kPeft, -0.3}}).changed);
  CHECK(state.apply({{kPeft, -0.3}, {kKohya, 0.8}}).changed);
  // A weight the set does not touch is untouched (bit for bit).
  CHECK(torch::equal(modules.weight("unet", "conv_in"), base.at("unet.conv_in.weight")));
}

TEST_CASE("removing a LoRA restores the exact original tensors", "[lora]") {
  Modules modules;
  const auto base = modules.snapshot();
  const auto to_q =
      modules.weight("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q");
  const void* original_storage = to_q.data_ptr();
  LoraState state(modules.targets());
  state.apply({{kKohya, 0.8}});
  CHECK(to_q.data_ptr() != original_storage);  // a new tensor, swapped in
  CHECK_FALSE(torch::equal(
      to_q, base.at("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight")));
  state.apply({{kPeft, 1.5}, {kKohya, -2.0}});
  CHECK(state.apply({}).changed);
  CHECK(to_q.data_ptr() == original_storage);  // the original storage itself, not W + d - d
  for (const auto& p : modules.unet->named_parameters())
    CHECK(torch::equal(p.value(), base.at("unet." + p.key())));
  for (const auto& p : modules.text_encoder->named_parameters())
    CHECK(torch::equal(p.value(), base.at("te." + p.key())));
}

TEST_CASE("the base image is bit-identical before and after a LoRA", "[lora]") {
  Txt2ImgParams base = golden_lora_params();
  std::map<std::string, torch::Tensor> before, after;
  const auto image_before = pipeline().generate(
      base, {}, [&](const std::string& n, const torch::Tensor& v) { before[n] = v; });
  Txt2ImgParams with = base;
  with.loras = {{kKohya, 0.8}};
  const auto image_with = pipeline().generate(with);
  CHECK(max_pixel_difference(image_with[0], image_before[0]) > 10);  // the LoRA does something
  const auto image_after = pipeline().generate(
      base, {}, [&](const std::string& n, const torch::Tensor& v) { after[n] = v; });
  CHECK(image_after[0].pixels == image_before[0].pixels);
  CHECK(torch::equal(after.at("prompt_embeds"), before.at("prompt_embeds")));
  CHECK(torch::equal(after.at("latents"), before.at("latents")));
  CHECK(max_pixel_difference(image_before[0], testing::golden_pipeline_image(kModel)) <= 1);
}

TEST_CASE("LoCon conv layers and LDM-named UNet keys", "[lora]") {
  TempDir dir;
  Modules modules;
  const auto base = modules.snapshot();
  torch::manual_seed(7);
  // down_blocks.0.resnets.0.conv1 is LDM input_blocks.1.0.in_layers.2; a 3x3 LoCon layer:
  // down [r, in, 3, 3], up [out, r, 1, 1], alpha 2 (scale 2 / r).
  const auto w = modules.weight("unet", "down_blocks.0.resnets.0.conv1");
  REQUIRE(w.dim() == 4);
  const int64_t r = 3;
  const auto down = torch::randn({r, w.size(1), 3, 3}) * 0.1;
  const auto up = torch::randn({w.size(0), r, 1, 1}) * 0.1;
  // up_blocks.0.upsamplers.0.conv: LDM output_blocks.2.1.conv (up block 0 has no attention).
  const auto wu = modules.weight("unet", "up_blocks.0.upsamplers.0.conv");
  const auto down_u = torch::randn({2, wu.size(1), 3, 3}) * 0.1;
  const auto up_u = torch::randn({wu.size(0), 2, 1, 1}) * 0.1;
  const fs::path file = dir.path / "locon.safetensors";
  write_safetensors(file, {{"lora_unet_input_blocks_1_0_in_layers_2.lora_down.weight", down},
                           {"lora_unet_input_blocks_1_0_in_layers_2.lora_up.weight", up},
                           {"lora_unet_input_blocks_1_0_in_layers_2.alpha", torch::tensor(2.0)},
                           {"lora_unet_output_blocks_2_1_conv.lora_down.weight", down_u},
                           {"lora_unet_output_blocks_2_1_conv.lora_up.weight", up_u},
                           {"lora_unet_not_a_layer.lora_down.weight", torch::zeros({1, 1})},
                           {"lora_unet_not_a_layer.lora_up.weight", torch::zeros({1, 1})}});
  LoraState state(modules.targets());
  const auto report = state.apply({{file, -0.5}});
  CHECK(report.merged_weights == 2);
  REQUIRE(report.ignored.size() == 1);  // the unknown layer: ignored (and logged by callers)
  CHECK(report.ignored[0].second.size() == 2);
  // Independent: the conv delta as a sum over the rank of up[o, k] * down[k, i, y, x].
  const auto expected = base.at("unet.down_blocks.0.resnets.0.conv1.weight") +
                        torch::einsum("ok,kiyx->oiyx", {up.flatten(1), down}) * (2.0 / 3.0) * -0.5;
  CHECK((modules.weight("unet", "down_blocks.0.resnets.0.conv1") - expected)
            .abs()
            .max()
            .item<double>() <= 1e-6);
  const auto expected_u = base.at("unet.up_blocks.0.upsamplers.0.conv.weight") +
                          torch::einsum("ok,kiyx->oiyx", {up_u.flatten(1), down_u}) * -0.5;
  CHECK((modules.weight("unet", "up_blocks.0.upsamplers.0.conv") - expected_u)
            .abs()
            .max()
            .item<double>() <= 1e-6);
}

TEST_CASE("LoRA files that do not fit the model are clear errors", "[lora]") {
  TempDir dir;
  Modules modules;
  const auto base = modules.snapshot();
  LoraState state(modules.targets());
  state.apply({{kKohya, 0.8}});
  const auto merged = modules.snapshot();
  auto expect_error = [&](const fs::path& file, const std::string& words) {
    INFO(file.string());
    try {
      state.apply({{kPeft, 1.0}, {file, 1.0}});
      FAIL("no error");
    } catch (const LoraError& e) {
      CHECK_THAT(e.what(), Catch::Contains(file.string()));
      CHECK_THAT(e.what(), Catch::Contains(words));
    }
    // A failed set leaves the weights as they were (the kohya set).
    for (const auto& p : modules.unet->named_parameters())
      REQUIRE(torch::equal(p.value(), merged.at("unet." + p.key())));
  };
  // Nothing matched: a model file, not a LoRA.
  expect_error(resolve_model(kModel.string()).weights_path("unet"), "no key of this LoRA");
  // A layer whose shapes do not fit (a LoRA for another model).
  const fs::path wrong = dir.path / "wrong.safetensors";
  write_safetensors(wrong, {{"lora_unet_conv_in.lora_down.weight", torch::zeros({4, 7, 3, 3})},
                            {"lora_unet_conv_in.lora_up.weight", torch::zeros({32, 4, 1, 1})}});
  expect_error(wrong, "does not fit");
  const fs::path half = dir.path / "half.safetensors";
  write_safetensors(half, {{"lora_unet_conv_in.lora_down.weight", torch::zeros({4, 4, 3, 3})}});
  expect_error(half, "no up");
  expect_error(dir.path / "missing.safetensors", "no such LoRA file");
  state.apply({});
  for (const auto& p : modules.unet->named_parameters())
    CHECK(torch::equal(p.value(), base.at("unet." + p.key())));
}

TEST_CASE("diffusiond generate --lora gives the golden LoRA image", "[lora][cli]") {
  const char* bin = std::getenv("DIFFUSIOND_BIN");
  REQUIRE(bin != nullptr);
  TempDir dir;
  const auto golden = read_json_file(kExtras / "golden" / "lora.json");
  const RgbImage expected = read_png(kExtras / "golden" / "lora_style_kohya.png");
  const std::string common = std::string(bin) + " generate --model " + kModel.string() +
                             " --seed 42 --steps 8 --width 64 --height 64 ";
  auto run = [&](const std::string& args, const std::string& out) {
    const std::string command = common + args + " -o " + (dir.path / out).string() + " > " +
                                (dir.path / (out + ".log")).string() + " 2>&1";
    INFO(command);
    return std::system(command.c_str());
  };
  const std::string prompt = golden["prompt"].get<std::string>();
  REQUIRE(run("--prompt \"" + prompt + "\" --lora " + kKohya.string() + ":0.8", "kohya.png") == 0);
  REQUIRE(run("--prompt \"" + prompt + "\" --lora " + kPeft.string() + ":0.8", "peft.png") == 0);
  // The A1111 tag in the prompt, resolved in --lora-dir: the same image.
  REQUIRE(run("--prompt \"" + golden["cases"][0]["a1111_prompt"].get<std::string>() +
                  "\" --lora-dir " + (kExtras / "lora").string(),
              "tag.png") == 0);
  for (const char* out : {"kohya.png", "peft.png", "tag.png"}) {
    INFO(out);
    CHECK(max_pixel_difference(read_png(dir.path / out), expected) <= 1);
  }
  // PNG metadata: A1111's Lora hashes (shorthash = sha256 of the bytes after the safetensors
  // header, as A1111's addnet hash) and the LoRAs in the JSON chunk.
  const std::string bytes = read_file(kKohya);
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
  const std::string short_hash = sha256_hex(bytes.substr(8 + n)).substr(0, 12);
  const auto chunks = read_png_text_chunks(read_file(dir.path / "kohya.png"));
  REQUIRE(chunks.size() == 2);
  CHECK_THAT(chunks[0].text, Catch::Contains(", Lora hashes: \"style_kohya: " + short_hash + "\""));
  const auto meta = nlohmann::json::parse(chunks[1].text);
  REQUIRE(meta["loras"].size() == 1);
  CHECK(meta["loras"][0]["name"] == "style_kohya");
  CHECK(meta["loras"][0]["weight"] == 0.8);
  CHECK(meta["loras"][0]["sha256"] ==
        golden["lora_files"]["style_kohya.safetensors"]["sha256"].get<std::string>());
  CHECK(meta["loras"][0]["short_hash"] == short_hash);
  const auto tag_meta =
      nlohmann::json::parse(read_png_text_chunks(read_file(dir.path / "tag.png"))[1].text);
  CHECK(tag_meta["prompt"] == golden["cases"][0]["a1111_parse"]["after_tag_removal"]);

  // Errors: a missing file, a file that is no LoRA, a tag without --lora-dir.
  CHECK(run("--prompt x --lora " + (dir.path / "none.safetensors").string() + ":0.5", "e1.png") !=
        0);
  CHECK_THAT(read_file(dir.path / "e1.png.log"), Catch::Contains("no such LoRA file"));
  const auto unet = resolve_model(kModel.string()).weights_path("unet");
  CHECK(run("--prompt x --lora " + unet.string(), "e2.png") != 0);
  CHECK_THAT(read_file(dir.path / "e2.png.log"), Catch::Contains("no key of this LoRA"));
  CHECK(run("--prompt \"x <lora:style_kohya:1>\"", "e3.png") != 0);
  CHECK_THAT(read_file(dir.path / "e3.png.log"), Catch::Contains("unknown LoRA 'style_kohya'"));
  CHECK(run("--prompt \"x <lora:../lora/style_kohya:1>\" --lora-dir " + (kExtras / "lora").string(),
            "e4.png") != 0);
  CHECK_THAT(read_file(dir.path / "e4.png.log"), Catch::Contains("must be a name, not a path"));
}

TEST_CASE("SDXL LoRAs: lora_te1_/lora_te2_, text_encoder_2.* and SGM UNet names", "[lora][sdxl]") {
  TempDir dir;
  const ModelFolder folder = resolve_model((fs::path(DIFFUSIOND_FIXTURES) / "tiny-sdxl").string());
  auto unet = load_unet(folder, torch::kCPU, torch::kFloat32);
  auto te1 =
      load_clip_text_model(folder.config_path("text_encoder"), folder.weights_path("text_encoder"),
                           torch::kCPU, torch::kFloat32);
  auto te2 = load_clip_text_model(folder.config_path("text_encoder_2"),
                                  folder.weights_path("text_encoder_2"), torch::kCPU,
                                  torch::kFloat32, /*with_projection=*/true);
  auto weight = [](const torch::nn::Module& m, const std::string& module) {
    const auto params = m.named_parameters();
    const auto* w = params.find(module + ".weight");
    REQUIRE(w != nullptr);
    return *w;
  };
  // key stem -> (module tree, diffusers module path). The SGM names as kohya writes them for
  // SDXL (tiny-sdxl: down blocks [Down, CrossAttn], up blocks [CrossAttn, Up], 2 layers each).
  struct Layer {
    std::string stem;
    const torch::nn::Module* root;
    std::string module;
    bool peft;
  };
  const std::vector<Layer> layers = {
      {"lora_te1_text_model_encoder_layers_0_self_attn_q_proj", te1.ptr().get(),
       "text_model.encoder.layers.0.self_attn.q_proj", false},
      {"lora_te2_text_model_encoder_layers_0_mlp_fc1", te2.ptr().get(),
       "text_model.encoder.layers.0.mlp.fc1", false},
      {"text_encoder_2.text_model.encoder.layers.1.self_attn.out_proj", te2.ptr().get(),
       "text_model.encoder.layers.1.self_attn.out_proj", true},
      {"lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k", unet.ptr().get(),
       "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k", false},
      {"lora_unet_middle_block_1_proj_in", unet.ptr().get(), "mid_block.attentions.0.proj_in",
       false},
      {"lora_unet_output_blocks_2_2_conv", unet.ptr().get(), "up_blocks.0.upsamplers.0.conv",
       false},
      {"lora_unet_output_blocks_3_0_skip_connection", unet.ptr().get(),
       "up_blocks.1.resnets.0.conv_shortcut", false},
      {"lora_unet_label_emb_0_0", unet.ptr().get(), "add_embedding.linear_1", false},
  };
  torch::manual_seed(11);
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  std::vector<torch::Tensor> base, deltas;
  for (const Layer& l : layers) {
    const auto w = weight(*l.root, l.module);
    base.push_back(w.clone());
    const int64_t r = 2;
    std::vector<int64_t> down_shape = {r, w.size(1)}, up_shape = {w.size(0), r};
    if (w.dim() == 4) {
      down_shape = {r, w.size(1), w.size(2), w.size(3)};
      up_shape = {w.size(0), r, 1, 1};
    }
    const auto down = torch::randn(down_shape) * 0.1, up = torch::randn(up_shape) * 0.1;
    tensors.emplace_back(l.stem + (l.peft ? ".lora_A.weight" : ".lora_down.weight"), down);
    tensors.emplace_back(l.stem + (l.peft ? ".lora_B.weight" : ".lora_up.weight"), up);
    deltas.push_back(torch::mm(up.flatten(1), down.flatten(1)).reshape(w.sizes()));
  }
  const fs::path file = dir.path / "xl.safetensors";
  write_safetensors(file, tensors);
  LoraState state(
      {{"text_encoder", te1.ptr()}, {"text_encoder_2", te2.ptr()}, {"unet", unet.ptr()}});
  const auto report = state.apply({{file, 0.7}});
  CHECK(report.merged_weights == static_cast<int>(layers.size()));
  CHECK(report.ignored.empty());
  for (std::size_t i = 0; i < layers.size(); ++i) {
    INFO(layers[i].stem);
    const auto w = weight(*layers[i].root, layers[i].module);
    CHECK((w - (base[i] + deltas[i] * 0.7)).abs().max().item<double>() <= 1e-6);
  }
  state.apply({});
  for (std::size_t i = 0; i < layers.size(); ++i)
    CHECK(torch::equal(weight(*layers[i].root, layers[i].module), base[i]));
}
