// UNet2DConditionModel configuration (unet/config.json), parsed and validated into per-block
// values exactly as diffusers' UNet2DConditionModel.__init__ derives them.
// Ref: diffusers v0.27.2 models/unets/unet_2d_condition.py (UNet2DConditionModel.__init__,
// _set_add_embedding).
// Owner: whoever loads the model; a plain value type, safe to copy and read from any thread.
// No LibTorch here on purpose.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace diffusiond {

struct UNetConfig {
  int sample_size = 0;  // latent height/width the model was trained at (image size / 8)
  int in_channels = 4;
  int out_channels = 4;
  bool center_input_sample = false;  // sample = 2 * sample - 1 before conv_in
  bool flip_sin_to_cos = true;
  double freq_shift = 0;  // downscale_freq_shift of the sinusoidal timestep embedding

  // Block layout. Down lists are per down block; up lists per up block (already reversed the way
  // diffusers reverses them).
  std::vector<std::string> down_block_types;  // "CrossAttnDownBlock2D" | "DownBlock2D"
  std::string mid_block_type;                 // "UNetMidBlock2DCrossAttn" or "" (no mid block)
  std::vector<std::string> up_block_types;    // "UpBlock2D" | "CrossAttnUpBlock2D"
  std::vector<int> block_out_channels;
  std::vector<int> layers_per_block;  // per down block; up block i has reversed[i] + 1 layers
  int downsample_padding = 1;
  double mid_block_scale_factor = 1.0;
  std::string act_fn = "silu";
  int norm_num_groups = 32;
  double norm_eps = 1e-5;

  // Attention. num_attention_heads is the resolved head count per down block: the config's
  // num_attention_heads if set, else its attention_head_dim (which historically means heads).
  std::vector<int> num_attention_heads;         // per down block
  std::vector<int> cross_attention_dim;         // per down block
  std::vector<bool> only_cross_attention;       // per down block
  bool mid_block_only_cross_attention = false;  // unused by UNetMidBlock2DCrossAttn, kept for info
  bool use_linear_projection = false;
  bool upcast_attention = false;
  // Transformer layers per resnet layer: down[i][j] for layer j of down block i, up[i][j] for
  // layer j of up block i (from reverse_transformer_layers_per_block when given), mid the count of
  // the mid block's single attention.
  std::vector<std::vector<int>> down_transformer_layers;
  std::vector<std::vector<int>> up_transformer_layers;
  int mid_transformer_layers = 1;

  std::string resnet_time_scale_shift = "default";  // "default" | "scale_shift"
  int time_embedding_dim = 0;                       // resolved: config value or 4 * channels[0]
  int conv_in_kernel = 3;
  int conv_out_kernel = 3;

  // SDXL's added conditioning (addition_embed_type "text_time"; "" = none): the pooled text
  // embedding and the micro-conditioning ids, each id embedded sinusoidally in
  // addition_time_embed_dim features, concatenated (projection_class_embeddings_input_dim in all)
  // and projected to the time embedding by add_embedding.
  std::string addition_embed_type;
  int addition_time_embed_dim = 0;
  int projection_class_embeddings_input_dim = 0;

  // Derived helpers.
  std::size_t num_blocks() const { return block_out_channels.size(); }
  int up_num_attention_heads(std::size_t up_index) const;  // reversed list, as diffusers
  int up_cross_attention_dim(std::size_t up_index) const;
  bool up_only_cross_attention(std::size_t up_index) const;
  int up_layers(std::size_t up_index) const;  // reversed layers_per_block[i] + 1

  // Parses config.json content; `file` names the source in errors. Throws ConfigError naming the
  // missing or bad key, or the unsupported feature (class embeddings, dual cross attention, ...).
  static UNetConfig from_json(const nlohmann::json& j, const std::string& file);
};

}  // namespace diffusiond
