// AutoencoderKL configuration (vae/config.json).
// Ref: diffusers v0.27.2 models/autoencoders/autoencoder_kl.py (AutoencoderKL.__init__).
// Owner: whoever loads the VAE; a plain value type, safe to copy and read from any thread.
// No LibTorch here on purpose.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace diffusiond {

struct VaeConfig {
  int in_channels = 3;
  int out_channels = 3;
  int latent_channels = 4;
  std::vector<std::string> down_block_types;  // each "DownEncoderBlock2D"
  std::vector<std::string> up_block_types;    // each "UpDecoderBlock2D"
  std::vector<int> block_out_channels;
  int layers_per_block = 1;
  std::string act_fn = "silu";
  int norm_num_groups = 32;
  int sample_size = 32;  // image size the VAE was trained at (pixels)
  // Latents are multiplied by this after encoding and divided by it before decoding.
  double scaling_factor = 0.18215;
  // The pipeline runs the VAE in float32 when the model is in float16 and this is set.
  bool force_upcast = true;
  bool mid_block_add_attention = true;  // later diffusers key; absent = true as in diffusers
  bool use_quant_conv = true;           // later diffusers key; absent = true
  bool use_post_quant_conv = true;      // later diffusers key; absent = true

  // Image pixels per latent pixel: 2 ** (len(block_out_channels) - 1), as the SD pipelines compute.
  int scale_factor() const { return 1 << (block_out_channels.size() - 1); }

  // Throws ConfigError naming the missing or bad key; `file` names the source.
  static VaeConfig from_json(const nlohmann::json& j, const std::string& file);
};

}  // namespace diffusiond
