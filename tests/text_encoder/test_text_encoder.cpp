// CLIP text encoder against golden/text_encoder.safetensors (written by the reference
// implementation, see golden/text_encoder.json), plus strict-loading errors.
#include <catch2/catch.hpp>

#include <unistd.h>
#include <filesystem>
#include <string>

#include <torch/torch.h>

#include "pipeline/attention_ops.h"
#include "pipeline/clip_text_model.h"
#include "pipeline/media/config_util.h"
#include "pipeline/model_folder.h"
#include "pipeline/prompt_encoder.h"
#include "pipeline/safetensors.h"
#include "pipeline/weights.h"
#include "tests/support/process_temp_dir.h"

using namespace diffusiond;
namespace fs = std::filesystem;

namespace {

const fs::path kModel = fs::path(DIFFUSIOND_FIXTURES) / "tiny-sd1";

double relative_l2(const torch::Tensor& actual, const torch::Tensor& expected) {
  auto a = actual.to(torch::kFloat64), e = expected.to(torch::kFloat64);
  return ((a - e).norm() / e.norm()).item<double>();
}

torch::Tensor golden_input_ids() {
  auto meta = read_json_file(kModel / "golden" / "text_encoder.json");
  std::vector<std::int64_t> flat;
  std::int64_t rows = 0;
  for (const auto& row : meta.at("input_ids")) {
    for (const auto& id : row) flat.push_back(id.get<std::int64_t>());
    ++rows;
  }
  return torch::tensor(flat, torch::kInt64).view({rows, -1});
}

fs::path temp_dir() {
  return diffusiond::testing::process_temp_dir("test_text_encoder");
}

// Writes the fixture weights with `edit` applied and returns the load error message ("" if none).
std::string load_error_after(
    const std::string& name,
    const std::function<void(std::vector<std::pair<std::string, torch::Tensor>>&)>& edit) {
  auto source = SafetensorsFile::open(kModel / "text_encoder" / "model.safetensors");
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (const auto& info : source->tensors())
    tensors.emplace_back(info.name, source->tensor(info.name));
  edit(tensors);
  auto path = temp_dir() / name;
  write_safetensors(path, tensors);
  try {
    load_clip_text_model(kModel / "text_encoder" / "config.json", path, torch::kCPU,
                         torch::kFloat32);
  } catch (const WeightsError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("CLIP text encoder matches the golden last_hidden_state", "[text_encoder][golden]") {
  torch::NoGradGuard no_grad;
  auto model = load_clip_text_model(kModel / "text_encoder" / "config.json",
                                    kModel / "text_encoder" / "model.safetensors", torch::kCPU,
                                    torch::kFloat32);
  auto golden = SafetensorsFile::open(kModel / "golden" / "text_encoder.safetensors");
  auto ids = golden_input_ids();
  REQUIRE(ids.sizes() == torch::IntArrayRef({5, 77}));

  std::vector<torch::Tensor> layers;
  auto out = model->forward_with_layers(ids, &layers);
  REQUIRE(out.sizes() == golden->tensor("last_hidden_state").sizes());
  for (std::size_t i = 0; i < layers.size(); ++i) {
    INFO("encoder layer " << i);
    CHECK(relative_l2(layers[i], golden->tensor("encoder_layer_output." + std::to_string(i))) <=
          1e-5);
  }
  // Each prompt on its own, too: the batch must not leak between rows.
  for (int p = 0; p < ids.size(0); ++p) {
    INFO("prompt " << p);
    auto row = model->forward(ids.slice(0, p, p + 1));
    CHECK(relative_l2(row, golden->tensor("last_hidden_state").slice(0, p, p + 1)) <= 1e-5);
  }
  CHECK(relative_l2(out, golden->tensor("last_hidden_state")) <= 1e-5);
}

TEST_CASE("CLIP config: missing required keys are named", "[text_encoder]") {
  auto config = read_json_file(kModel / "text_encoder" / "config.json");
  auto parsed = ClipTextConfig::from_json(config, "config.json");
  CHECK(parsed.hidden_size == 32);
  CHECK(parsed.hidden_act == "quick_gelu");
  config.erase("num_hidden_layers");
  CHECK_THROWS_WITH(ClipTextConfig::from_json(config, "te/config.json"),
                    Catch::Contains("te/config.json") && Catch::Contains("num_hidden_layers"));
  config = read_json_file(kModel / "text_encoder" / "config.json");
  config["hidden_act"] = "relu6";
  CHECK_THROWS_WITH(ClipTextConfig::from_json(config, "c.json"), Catch::Contains("relu6"));
}

TEST_CASE("CLIP text encoder loading names missing, unexpected and mis-shaped keys",
          "[text_encoder]") {
  auto missing = load_error_after("missing.safetensors", [](auto& t) {
    std::erase_if(t,
                  [](auto& kv) { return kv.first == "text_model.encoder.layers.1.mlp.fc2.bias"; });
  });
  CHECK_THAT(missing,
             Catch::Contains("missing.safetensors") &&
                 Catch::Contains("missing key(s): text_model.encoder.layers.1.mlp.fc2.bias"));

  auto unexpected = load_error_after("unexpected.safetensors", [](auto& t) {
    t.emplace_back("text_model.encoder.layers.2.mlp.fc2.bias", torch::zeros({32}));
  });
  CHECK_THAT(unexpected,
             Catch::Contains("unexpected key(s): text_model.encoder.layers.2.mlp.fc2.bias"));

  auto misshaped = load_error_after("misshaped.safetensors", [](auto& t) {
    for (auto& kv : t) {
      if (kv.first == "text_model.final_layer_norm.weight") kv.second = torch::ones({31});
    }
  });
  CHECK_THAT(misshaped,
             Catch::Contains("text_model.final_layer_norm.weight (file [31], model [32])"));

  // position_ids may be present (older exports) or absent (the fixture).
  auto with_position_ids = load_error_after("position_ids.safetensors", [](auto& t) {
    t.emplace_back("text_model.embeddings.position_ids",
                   torch::arange(77, torch::kInt64).unsqueeze(0));
  });
  CHECK(with_position_ids.empty());
}

TEST_CASE("attention fallback equals explicit softmax attention", "[text_encoder][attention]") {
  torch::manual_seed(3);
  auto q = torch::randn({2, 3, 5, 4}), k = torch::randn({2, 3, 5, 4}),
       v = torch::randn({2, 3, 5, 6});
  // Independent reference: loops over rows with an explicit causal softmax.
  auto expected = torch::zeros({2, 3, 5, 6});
  for (int i = 0; i < 5; ++i) {
    auto scores = (q.select(2, i).unsqueeze(2) * k.slice(2, 0, i + 1)).sum(-1) / 2.0;  // [2,3,i+1]
    auto w = torch::exp(scores - std::get<0>(scores.max(-1, true)));
    w = w / w.sum(-1, true);
    expected.select(2, i).copy_((w.unsqueeze(-1) * v.slice(2, 0, i + 1)).sum(2));
  }
  CHECK(torch::allclose(dot_product_attention(q, k, v, std::nullopt, true), expected, 1e-5, 1e-6));
  CHECK(torch::allclose(dot_product_attention_math(q, k, v, std::nullopt, true, true, {}), expected,
                        1e-5, 1e-6));
  // A boolean mask equal to the causal one gives the same result as causal=true.
  auto mask = torch::ones({5, 5}, torch::kBool).tril();
  CHECK(torch::allclose(dot_product_attention(q, k, v, mask, false), expected, 1e-5, 1e-6));
  // Cross-attention shape (Lq != Lk), no mask.
  auto k2 = torch::randn({2, 3, 7, 4}), v2 = torch::randn({2, 3, 7, 6});
  auto full = torch::softmax(torch::matmul(q, k2.transpose(-1, -2)) / 2.0, -1).matmul(v2);
  CHECK(torch::allclose(dot_product_attention(q, k2, v2), full, 1e-5, 1e-6));
}

TEST_CASE("A CPU prompt encoder lets its mapped weights go between generations",
          "[text_encoder][memory]") {
  torch::NoGradGuard no_grad;
  const ModelFolder folder = resolve_model(kModel.string());
  PromptEncoder encoder(folder, /*xl=*/false, torch::kCPU, torch::kFloat32);
  const torch::Tensor first = encoder.encode("a photograph of an astronaut").embeds.clone();
  // Every parameter of tiny-sd1's fp32 text encoder is used in place from its file: all of
  // them are released (their whole pages; the count is of the tensors' bytes).
  std::size_t parameter_bytes = 0;
  auto file = SafetensorsFile::open(kModel / "text_encoder" / "model.safetensors");
  for (const auto& info : file->tensors()) parameter_bytes += info.end - info.begin;
  CHECK(encoder.release_resident_weights() == parameter_bytes);
  // The next encode reads them again from the file: the same bits (the cache cleared, so it
  // runs the model).
  encoder.clear_cache();
  CHECK(torch::equal(encoder.encode("a photograph of an astronaut").embeds, first));
  // Weights not mapped from the file (converted to another dtype at load) are left alone.
  PromptEncoder converted(folder, /*xl=*/false, torch::kCPU, torch::kBFloat16);
  converted.encode("a photograph of an astronaut");
  CHECK(converted.release_resident_weights() == 0);
}
