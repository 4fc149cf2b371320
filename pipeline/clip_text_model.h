// CLIP text encoder as Stable Diffusion uses it: SD 1.x/2.x take last_hidden_state (after
// final_layer_norm); SDXL takes the penultimate hidden state of both encoders and the projected
// pooled output of the second (CLIPTextModelWithProjection).
// Ref: transformers v4.38.2 models/clip/modeling_clip.py: CLIPTextModel,
// CLIPTextModelWithProjection, CLIPTextTransformer, CLIPTextEmbeddings, CLIPEncoder,
// CLIPEncoderLayer, CLIPAttention, CLIPMLP. Module names mirror them so state-dict keys
// (text_model.encoder.layers.0.self_attn.q_proj.weight, text_projection.weight, ...) map 1:1.
// Owner: the StableDiffusion replica that loaded it; forward() from one thread at a time.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <torch/torch.h>

#include <nlohmann/json.hpp>
#include "pipeline/safetensors.h"

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
  int projection_dim = 512;               // text_projection's output (WithProjection only)
  // Pooling position: eos_token_id 2 (the value openai's configs carry) keeps transformers'
  // legacy rule, the argmax of the ids (CLIP's eot is the largest id); any other value pools
  // at the first position holding that id.
  int64_t eos_token_id = 49407;

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

// What one forward pass gives (transformers' output_hidden_states=True).
struct ClipTextOutput {
  torch::Tensor last_hidden_state;           // [B, L, hidden], after final_layer_norm
  std::vector<torch::Tensor> hidden_states;  // embeddings, then each layer's output: [B, L, hidden]
  torch::Tensor pooler_output;               // [B, hidden]: last_hidden_state at the eos position
  torch::Tensor text_embeds;                 // [B, projection_dim] (WithProjection), else undefined
};

// Ref: CLIPTextModel, and CLIPTextModelWithProjection when with_projection (a bias-free
// text_projection Linear at the top level). Holds "text_model", a CLIPTextTransformer, flattened
// in here through child modules named like transformers': text_model.embeddings / .encoder /
// .final_layer_norm.
class ClipTextModelImpl : public torch::nn::Module {
 public:
  explicit ClipTextModelImpl(const ClipTextConfig& config, bool with_projection = false);
  const ClipTextConfig& config() const { return config_; }
  bool with_projection() const { return static_cast<bool>(text_projection); }

  // input_ids: [B, L] int64 -> every output (pooled and projected included).
  ClipTextOutput encode(const torch::Tensor& input_ids);

  // input_ids: [B, L] int64 (L <= max_position_embeddings) -> last_hidden_state [B, L, hidden].
  torch::Tensor forward(const torch::Tensor& input_ids);
  // Same, also returning the residual stream after each encoder layer (before final LN).
  torch::Tensor forward_with_layers(const torch::Tensor& input_ids,
                                    std::vector<torch::Tensor>* layer_outputs);

 private:
  // The encoder stack; appends the embedding output (with_embeddings) and each layer's output
  // to `states` when given. Returns last_hidden_state.
  torch::Tensor run(const torch::Tensor& input_ids, std::vector<torch::Tensor>* states,
                    bool with_embeddings);

  ClipTextConfig config_;
  std::shared_ptr<torch::nn::Module> text_model_, embeddings_, encoder_;
  torch::nn::Embedding token_embedding{nullptr}, position_embedding{nullptr};
  torch::nn::ModuleList layers{nullptr};
  std::vector<ClipEncoderLayer> layer_list_;
  torch::nn::LayerNorm final_layer_norm{nullptr};
  torch::nn::Linear text_projection{nullptr};
};
TORCH_MODULE(ClipTextModel);

// Builds the model from text_encoder/config.json and loads weights strictly from `weights`
// (text_model.embeddings.position_ids is accepted whether present or not). Floating weights
// are cast to `dtype`. with_projection: a CLIPTextModelWithProjection (text_projection.weight
// required). Throws ConfigError / WeightsError / SafetensorsError.
ClipTextModel load_clip_text_model(const std::filesystem::path& config_json,
                                   const std::filesystem::path& weights, torch::Device device,
                                   torch::ScalarType dtype, bool with_projection = false);
ClipTextModel load_clip_text_model(const std::filesystem::path& config_json,
                                   const SafetensorsFile& weights, torch::Device device,
                                   torch::ScalarType dtype, bool with_projection = false);

}  // namespace diffusiond
