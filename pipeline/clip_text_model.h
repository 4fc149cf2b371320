// CLIP text encoder as Stable Diffusion uses it (last_hidden_state after final_layer_norm).
// Ref: transformers v4.38.2 models/clip/modeling_clip.py: CLIPTextModel, CLIPTextTransformer,
// CLIPTextEmbeddings, CLIPEncoder, CLIPEncoderLayer, CLIPAttention, CLIPMLP. Module names mirror
// them so state-dict keys (text_model.encoder.layers.0.self_attn.q_proj.weight, ...) map 1:1.
// Owner: the StableDiffusion replica that loaded it; forward() from one thread at a time.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

namespace diffusiond {

// text_encoder/config.json. Sizes are required; the rest default as CLIPTextConfig does.
struct ClipTextConfig {
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_attention_heads = 0;
  int num_hidden_layers = 0;
  int max_position_embeddings = 77;
  int vocab_size = 49408;
  double layer_norm_eps = 1e-5;
  std::string hidden_act = "quick_gelu";  // quick_gelu | gelu (exact, erf) | gelu_new

  // Throws ConfigError naming `file` and the missing/bad key.
  static ClipTextConfig from_json(const nlohmann::json& j, const std::string& file);
  static ClipTextConfig from_file(const std::filesystem::path& config_json);
  nlohmann::json to_json() const;  // a transformers-compatible config.json
};

// Ref: CLIPAttention. [B, L, hidden] -> [B, L, hidden], causal.
class ClipAttentionImpl : public torch::nn::Module {
 public:
  explicit ClipAttentionImpl(const ClipTextConfig& config);
  torch::Tensor forward(const torch::Tensor& hidden_states);

 private:
  int heads_;
  torch::nn::Linear k_proj{nullptr}, v_proj{nullptr}, q_proj{nullptr}, out_proj{nullptr};
};
TORCH_MODULE(ClipAttention);

// Ref: CLIPMLP. fc1 -> activation -> fc2.
class ClipMlpImpl : public torch::nn::Module {
 public:
  explicit ClipMlpImpl(const ClipTextConfig& config);
  torch::Tensor forward(const torch::Tensor& hidden_states);

 private:
  std::string act_;
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(ClipMlp);

// Ref: CLIPEncoderLayer (pre-LN: x + attn(ln1(x)), then x + mlp(ln2(x))).
class ClipEncoderLayerImpl : public torch::nn::Module {
 public:
  explicit ClipEncoderLayerImpl(const ClipTextConfig& config);
  torch::Tensor forward(const torch::Tensor& hidden_states);

 private:
  ClipAttention self_attn{nullptr};
  torch::nn::LayerNorm layer_norm1{nullptr};
  ClipMlp mlp{nullptr};
  torch::nn::LayerNorm layer_norm2{nullptr};
};
TORCH_MODULE(ClipEncoderLayer);

// Ref: CLIPTextModel (holds "text_model", a CLIPTextTransformer, flattened in here through
// child modules named like transformers': text_model.embeddings / .encoder / .final_layer_norm).
class ClipTextModelImpl : public torch::nn::Module {
 public:
  explicit ClipTextModelImpl(const ClipTextConfig& config);
  const ClipTextConfig& config() const { return config_; }

  // input_ids: [B, L] int64 (L <= max_position_embeddings) -> last_hidden_state [B, L, hidden].
  torch::Tensor forward(const torch::Tensor& input_ids);
  // Same, also returning the residual stream after each encoder layer (before final LN).
  torch::Tensor forward_with_layers(const torch::Tensor& input_ids,
                                    std::vector<torch::Tensor>* layer_outputs);

 private:
  ClipTextConfig config_;
  std::shared_ptr<torch::nn::Module> text_model_, embeddings_, encoder_;
  torch::nn::Embedding token_embedding{nullptr}, position_embedding{nullptr};
  torch::nn::ModuleList layers{nullptr};
  std::vector<ClipEncoderLayer> layer_list_;
  torch::nn::LayerNorm final_layer_norm{nullptr};
};
TORCH_MODULE(ClipTextModel);

// Builds the model from text_encoder/config.json and loads weights strictly from `weights`
// (text_model.embeddings.position_ids is accepted whether present or not). Floating weights
// are cast to `dtype`. Throws ConfigError / WeightsError / SafetensorsError.
ClipTextModel load_clip_text_model(const std::filesystem::path& config_json,
                                   const std::filesystem::path& weights, torch::Device device,
                                   torch::ScalarType dtype);

}  // namespace diffusiond
