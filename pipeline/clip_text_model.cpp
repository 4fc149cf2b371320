#include "pipeline/clip_text_model.h"

#include "pipeline/attention_ops.h"
#include "pipeline/media/config_util.h"
#include "pipeline/safetensors.h"
#include "pipeline/skip_init.h"
#include "pipeline/weights.h"

namespace diffusiond {

ClipTextConfig ClipTextConfig::from_json(const nlohmann::json& j, const std::string& file) {
  ClipTextConfig c;
  c.hidden_size = require_key<int>(j, "hidden_size", file);
  c.intermediate_size = require_key<int>(j, "intermediate_size", file);
  c.num_attention_heads = require_key<int>(j, "num_attention_heads", file);
  c.num_hidden_layers = require_key<int>(j, "num_hidden_layers", file);
  c.max_position_embeddings = key_or<int>(j, "max_position_embeddings", 77, file);
  c.vocab_size = key_or<int>(j, "vocab_size", 49408, file);
  c.layer_norm_eps = key_or<double>(j, "layer_norm_eps", 1e-5, file);
  c.hidden_act = key_or<std::string>(j, "hidden_act", "quick_gelu", file);
  c.projection_dim = key_or<int>(j, "projection_dim", 512, file);
  c.eos_token_id = key_or<int64_t>(j, "eos_token_id", 49407, file);
  if (c.hidden_act != "quick_gelu" && c.hidden_act != "gelu" && c.hidden_act != "gelu_new" &&
      c.hidden_act != "gelu_pytorch_tanh") {
    throw ConfigError(file + ": unsupported hidden_act '" + c.hidden_act +
                      "' (expected quick_gelu, gelu, gelu_new or gelu_pytorch_tanh)");
  }
  if (c.hidden_size <= 0 || c.num_attention_heads <= 0 ||
      c.hidden_size % c.num_attention_heads != 0) {
    throw ConfigError(file + ": hidden_size (" + std::to_string(c.hidden_size) +
                      ") must be a positive multiple of num_attention_heads (" +
                      std::to_string(c.num_attention_heads) + ")");
  }
  if (c.intermediate_size <= 0 || c.num_hidden_layers <= 0 || c.max_position_embeddings <= 0 ||
      c.vocab_size <= 0 || c.projection_dim <= 0) {
    throw ConfigError(file +
                      ": intermediate_size, num_hidden_layers, max_position_embeddings, "
                      "vocab_size and projection_dim must be positive");
  }
  return c;
}

ClipTextConfig ClipTextConfig::from_file(const std::filesystem::path& config_json) {
  return from_json(read_json_file(config_json), config_json.string());
}

nlohmann::json ClipTextConfig::to_json() const {
  return {{"architectures", {"CLIPTextModel"}},
          {"attention_dropout", 0.0},
          {"bos_token_id", 0},
          {"dropout", 0.0},
          {"eos_token_id", 2},
          {"hidden_act", hidden_act},
          {"hidden_size", hidden_size},
          {"initializer_factor", 1.0},
          {"initializer_range", 0.02},
          {"intermediate_size", intermediate_size},
          {"layer_norm_eps", layer_norm_eps},
          {"max_position_embeddings", max_position_embeddings},
          {"model_type", "clip_text_model"},
          {"num_attention_heads", num_attention_heads},
          {"num_hidden_layers", num_hidden_layers},
          {"pad_token_id", 1},
          {"projection_dim", projection_dim},
          {"torch_dtype", "float32"},
          {"vocab_size", vocab_size}};
}

ClipAttentionImpl::ClipAttentionImpl(const ClipTextConfig& config)
    : heads_(config.num_attention_heads) {
  const int h = config.hidden_size;
  k_proj = register_module("k_proj", torch::nn::Linear(h, h));
  v_proj = register_module("v_proj", torch::nn::Linear(h, h));
  q_proj = register_module("q_proj", torch::nn::Linear(h, h));
  out_proj = register_module("out_proj", torch::nn::Linear(h, h));
}

torch::Tensor ClipAttentionImpl::forward(const torch::Tensor& hidden_states) {
  const auto b = hidden_states.size(0), l = hidden_states.size(1), h = hidden_states.size(2);
  // [B, L, hidden] -> [B, heads, L, head_dim]
  auto split = [&](const torch::Tensor& x) {
    return x.view({b, l, heads_, h / heads_}).transpose(1, 2);
  };
  auto q = split(q_proj(hidden_states));
  auto k = split(k_proj(hidden_states));
  auto v = split(v_proj(hidden_states));
  auto out = dot_product_attention(q, k, v, std::nullopt, /*causal=*/true);
  return out_proj(out.transpose(1, 2).reshape({b, l, h}));
}

ClipMlpImpl::ClipMlpImpl(const ClipTextConfig& config) : act_(config.hidden_act) {
  fc1 = register_module("fc1", torch::nn::Linear(config.hidden_size, config.intermediate_size));
  fc2 = register_module("fc2", torch::nn::Linear(config.intermediate_size, config.hidden_size));
}

torch::Tensor ClipMlpImpl::forward(const torch::Tensor& hidden_states) {
  auto x = fc1(hidden_states);
  if (act_ == "quick_gelu") {
    x = x * torch::sigmoid(1.702 * x);
  } else if (act_ == "gelu") {
    x = torch::gelu(x);  // exact (erf) form
  } else {
    x = torch::gelu(x, "tanh");  // gelu_new / gelu_pytorch_tanh
  }
  return fc2(x);
}

ClipEncoderLayerImpl::ClipEncoderLayerImpl(const ClipTextConfig& config) {
  auto ln = [&] {
    return torch::nn::LayerNorm(
        torch::nn::LayerNormOptions({config.hidden_size}).eps(config.layer_norm_eps));
  };
  self_attn = register_module("self_attn", ClipAttention(config));
  layer_norm1 = register_module("layer_norm1", ln());
  mlp = register_module("mlp", ClipMlp(config));
  layer_norm2 = register_module("layer_norm2", ln());
}

torch::Tensor ClipEncoderLayerImpl::forward(const torch::Tensor& hidden_states) {
  auto x = hidden_states + self_attn(layer_norm1(hidden_states));
  return x + mlp(layer_norm2(x));
}

ClipTextModelImpl::ClipTextModelImpl(const ClipTextConfig& config, bool with_projection)
    : config_(config) {
  text_model_ = register_module("text_model", std::make_shared<torch::nn::Module>());
  embeddings_ = text_model_->register_module("embeddings", std::make_shared<torch::nn::Module>());
  token_embedding = embeddings_->register_module(
      "token_embedding", torch::nn::Embedding(config.vocab_size, config.hidden_size));
  position_embedding = embeddings_->register_module(
      "position_embedding",
      torch::nn::Embedding(config.max_position_embeddings, config.hidden_size));
  encoder_ = text_model_->register_module("encoder", std::make_shared<torch::nn::Module>());
  layers = encoder_->register_module("layers", torch::nn::ModuleList());
  for (int i = 0; i < config.num_hidden_layers; ++i) {
    layer_list_.push_back(ClipEncoderLayer(config));
    layers->push_back(layer_list_.back());
  }
  final_layer_norm = text_model_->register_module(
      "final_layer_norm",
      torch::nn::LayerNorm(
          torch::nn::LayerNormOptions({config.hidden_size}).eps(config.layer_norm_eps)));
  if (with_projection) {
    text_projection = register_module(
        "text_projection",
        torch::nn::Linear(
            torch::nn::LinearOptions(config.hidden_size, config.projection_dim).bias(false)));
  }
}

ClipTextOutput ClipTextModelImpl::encode(const torch::Tensor& input_ids) {
  ClipTextOutput out;
  // hidden_states: the embedding output, then each layer's (transformers' order).
  out.last_hidden_state = run(input_ids, &out.hidden_states, /*with_embeddings=*/true);
  auto ids = input_ids.to(token_embedding->weight.device(), torch::kInt64);
  // Ref: CLIPTextTransformer.forward's pooling (legacy argmax when eos_token_id == 2).
  torch::Tensor eos = config_.eos_token_id == 2
                          ? ids.to(torch::kInt32).argmax(-1)
                          : (ids == config_.eos_token_id).to(torch::kInt32).argmax(-1);  // [B]
  auto rows = torch::arange(ids.size(0), ids.options());
  out.pooler_output = out.last_hidden_state.index({rows, eos.to(torch::kInt64)});  // [B, hidden]
  if (text_projection) out.text_embeds = text_projection(out.pooler_output);
  return out;
}

torch::Tensor ClipTextModelImpl::forward(const torch::Tensor& input_ids) {
  return forward_with_layers(input_ids, nullptr);
}

torch::Tensor ClipTextModelImpl::forward_with_layers(const torch::Tensor& input_ids,
                                                     std::vector<torch::Tensor>* layer_outputs) {
  return run(input_ids, layer_outputs, /*with_embeddings=*/false);
}

torch::Tensor ClipTextModelImpl::run(const torch::Tensor& input_ids,
                                     std::vector<torch::Tensor>* states, bool with_embeddings) {
  TORCH_CHECK(input_ids.dim() == 2, "CLIP text model: input_ids must be [B, L], got ",
              input_ids.sizes());
  const auto length = input_ids.size(1);
  TORCH_CHECK(length <= config_.max_position_embeddings, "CLIP text model: ", length,
              " tokens exceed max_position_embeddings ", config_.max_position_embeddings);
  auto ids = input_ids.to(token_embedding->weight.device(), torch::kInt64);
  auto positions = torch::arange(length, ids.options()).unsqueeze(0);  // [1, L]
  auto hidden = token_embedding(ids) + position_embedding(positions);  // [B, L, hidden]
  if (states && with_embeddings) states->push_back(hidden);
  for (auto& layer : layer_list_) {
    hidden = layer(hidden);
    if (states) states->push_back(hidden);
  }
  return final_layer_norm(hidden);
}

ClipTextModel load_clip_text_model(const std::filesystem::path& config_json,
                                   const SafetensorsFile& weights, torch::Device device,
                                   torch::ScalarType dtype, bool with_projection) {
  const ClipTextConfig config = ClipTextConfig::from_file(config_json);
  ClipTextModel model = [&] {
    SkipRandomInit file_replaces_every_parameter;
    return ClipTextModel(config, with_projection);
  }();
  model->eval();
  load_weights(*model, weights, device, dtype,
               [](const std::string& key) { return key == "text_model.embeddings.position_ids"; });
  return model;
}

ClipTextModel load_clip_text_model(const std::filesystem::path& config_json,
                                   const std::filesystem::path& weights, torch::Device device,
                                   torch::ScalarType dtype, bool with_projection) {
  return load_clip_text_model(config_json, *SafetensorsFile::open(weights), device, dtype,
                              with_projection);
}

}  // namespace diffusiond
