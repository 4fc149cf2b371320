// The tiny-sdxl fixture's two text encoders against golden/text_encoder*.safetensors (written
// by the reference CLIP implementation and cross-checked with transformers, see
// golden/text_encoder*.json): every hidden state, the penultimate one SDXL uses, the pooled
// output at the eos position (transformers' legacy argmax rule for eos_token_id 2) and
// CLIPTextModelWithProjection's text_embeds.
#include <catch2/catch.hpp>

#include <filesystem>

#include <torch/torch.h>

#include "pipeline/clip_text_model.h"
#include "pipeline/media/config_util.h"
#include "pipeline/safetensors.h"
#include "pipeline/weights.h"

using namespace diffusiond;
namespace fs = std::filesystem;

namespace {

const fs::path kModel = fs::path(DIFFUSIOND_FIXTURES) / "tiny-sdxl";

double relative_l2(const torch::Tensor& actual, const torch::Tensor& expected) {
  auto a = actual.to(torch::kFloat64), e = expected.to(torch::kFloat64);
  return ((a - e).norm() / e.norm()).item<double>();
}

torch::Tensor input_ids(const nlohmann::json& meta) {
  std::vector<std::int64_t> flat;
  std::int64_t rows = 0;
  for (const auto& row : meta.at("input_ids")) {
    for (const auto& id : row) flat.push_back(id.get<std::int64_t>());
    ++rows;
  }
  return torch::tensor(flat, torch::kInt64).view({rows, -1});
}

void check_encoder(const std::string& name, bool with_projection) {
  torch::NoGradGuard no_grad;
  auto model =
      load_clip_text_model(kModel / name / "config.json", kModel / name / "model.safetensors",
                           torch::kCPU, torch::kFloat32, with_projection);
  const auto meta = read_json_file(kModel / "golden" / (name + ".json"));
  auto golden = SafetensorsFile::open(kModel / "golden" / (name + ".safetensors"));
  auto ids = input_ids(meta);
  REQUIRE(ids.size(0) == 6);

  const auto out = model->encode(ids);
  const auto layers = model->config().num_hidden_layers;
  REQUIRE(out.hidden_states.size() == static_cast<std::size_t>(layers + 1));
  for (int i = 0; i <= layers; ++i) {
    INFO(name << " hidden_states." << i);
    CHECK(relative_l2(out.hidden_states[i], golden->tensor("hidden_states." + std::to_string(i))) <=
          1e-5);
  }
  CHECK(relative_l2(out.hidden_states[layers - 1], golden->tensor("penultimate_hidden_state")) <=
        1e-5);
  CHECK(relative_l2(out.last_hidden_state, golden->tensor("last_hidden_state")) <= 1e-5);
  CHECK(relative_l2(out.pooler_output, golden->tensor("pooler_output")) <= 1e-5);
  if (with_projection) {
    REQUIRE(out.text_embeds.defined());
    CHECK(relative_l2(out.text_embeds, golden->tensor("text_embeds")) <= 1e-5);
  } else {
    CHECK_FALSE(out.text_embeds.defined());
  }

  // The golden eos positions include "a photo of <|endoftext|> a cat" (the first eos, 4) and
  // the 77-token truncated prompt (76): the pooled row is exactly that row of last_hidden_state.
  const auto eos = meta.at("eos_index").get<std::vector<int64_t>>();
  for (std::size_t r = 0; r < eos.size(); ++r) {
    INFO(name << " prompt " << r << " eos " << eos[r]);
    CHECK(torch::equal(out.pooler_output[r], out.last_hidden_state[r][eos[r]]));
  }
}

}  // namespace

TEST_CASE("SDXL text_encoder (CLIPTextModel) matches the golden states", "[text_encoder][sdxl]") {
  check_encoder("text_encoder", false);
}

TEST_CASE("SDXL text_encoder_2 (CLIPTextModelWithProjection) matches the golden states",
          "[text_encoder][sdxl]") {
  check_encoder("text_encoder_2", true);
}

TEST_CASE("CLIP pooling: eos_token_id 2 takes the argmax id, another id its first position",
          "[text_encoder][sdxl]") {
  torch::NoGradGuard no_grad;
  auto config = ClipTextConfig::from_file(kModel / "text_encoder_2" / "config.json");
  CHECK(config.eos_token_id == 2);
  CHECK(config.projection_dim == 40);
  // Legacy rule: the first position of the largest id (49407 at 3). With eos_token_id 500 the
  // first 500 (position 2) is pooled instead.
  auto ids = torch::tensor({49406, 320, 500, 49407, 500, 49407}, torch::kInt64).unsqueeze(0);
  ClipTextModel legacy(config, true);
  auto a = legacy->encode(ids);
  CHECK(torch::equal(a.pooler_output[0], a.last_hidden_state[0][3]));
  config.eos_token_id = 500;
  ClipTextModel by_id(config, true);
  // Same weights: copy the parameters across.
  auto src = legacy->named_parameters();
  for (auto& p : by_id->named_parameters()) p.value().copy_(src[p.key()]);
  auto b = by_id->encode(ids);
  CHECK(torch::equal(b.pooler_output[0], b.last_hidden_state[0][2]));
  CHECK_FALSE(torch::equal(b.pooler_output[0], a.pooler_output[0]));
}

TEST_CASE("CLIPTextModelWithProjection needs text_projection.weight", "[text_encoder][sdxl]") {
  // text_encoder/ (a CLIPTextModel) has no projection: loading it as one names the key.
  CHECK_THROWS_WITH(load_clip_text_model(kModel / "text_encoder" / "config.json",
                                         kModel / "text_encoder" / "model.safetensors", torch::kCPU,
                                         torch::kFloat32, true),
                    Catch::Contains("text_projection.weight"));
}
