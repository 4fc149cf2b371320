// The Stable Diffusion VAE (AutoencoderKL): latents <-> images.
// Ref: diffusers v0.27.2 models/autoencoders/autoencoder_kl.py (AutoencoderKL) and
// models/autoencoders/vae.py (Encoder, Decoder, DiagonalGaussianDistribution).
// Owner: one device worker owns one replica; calls must not run concurrently on it.
#pragma once

#include <filesystem>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "pipeline/model_folder.h"
#include "pipeline/packed_conv.h"
#include "pipeline/safetensors.h"
#include "pipeline/vae_blocks.h"
#include "pipeline/vae_config.h"

namespace diffusiond {

// Receives named intermediates ("post_quant_conv", "decoder.conv_in", "decoder.mid_block",
// "decoder.up_blocks.N", ...) for debugging parity.
using VaeTap = std::function<void(const std::string& name, const torch::Tensor& value)>;

// Ref: Encoder (double_z). [B,in_channels,H,W] -> [B,2*latent_channels,H/f,W/f].
// Keys: conv_in, down_blocks.N, mid_block, conv_norm_out, conv_out.
class EncoderImpl : public torch::nn::Module {
 public:
  explicit EncoderImpl(const VaeConfig& config);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  Activation act_;
  PackedConv2d conv_in{nullptr}, conv_out{nullptr};
  std::vector<DownEncoderBlock2D> down_blocks_;
  VaeMidBlock2D mid_block{nullptr};
  torch::nn::GroupNorm conv_norm_out{nullptr};
};
TORCH_MODULE(Encoder);

// Ref: Decoder. [B,latent_channels,h,w] -> [B,out_channels,h*f,w*f].
// Keys: conv_in, mid_block, up_blocks.N, conv_norm_out, conv_out.
class DecoderImpl : public torch::nn::Module {
 public:
  explicit DecoderImpl(const VaeConfig& config);
  torch::Tensor forward(const torch::Tensor& z, const VaeTap& tap = {});

 private:
  Activation act_;
  PackedConv2d conv_in{nullptr}, conv_out{nullptr};
  VaeMidBlock2D mid_block{nullptr};
  std::vector<UpDecoderBlock2D> up_blocks_;
  torch::nn::GroupNorm conv_norm_out{nullptr};
};
TORCH_MODULE(Decoder);

// Ref: AutoencoderKL. Keys: encoder, decoder, quant_conv, post_quant_conv.
class AutoencoderKLImpl : public torch::nn::Module {
 public:
  explicit AutoencoderKLImpl(const VaeConfig& config);

  const VaeConfig& config() const { return config_; }

  // z [B,latent,h,w], already divided by scaling_factor -> image [B,out,8h,8w] in about [-1,1].
  torch::Tensor decode(const torch::Tensor& z, const VaeTap& tap = {});
  // x [B,in,H,W] in [-1,1] -> (mean, logvar) [B,latent,H/8,W/8] of the latent Gaussian
  // (logvar clamped to [-30, 20] as DiagonalGaussianDistribution does). Not scaled.
  std::pair<torch::Tensor, torch::Tensor> encode(const torch::Tensor& x);
  // The posterior mean (mode) of encode().
  torch::Tensor encode_mean(const torch::Tensor& x);
  // Packs decode()'s CPU convolutions now (packed_conv.h); load_vae calls it. The encoder's
  // stay lazy: text-to-image never runs them.
  void prepack_decode();

 private:
  VaeConfig config_;
  Encoder encoder{nullptr};
  Decoder decoder{nullptr};
  PackedConv2d quant_conv{nullptr}, post_quant_conv{nullptr};
};
TORCH_MODULE(AutoencoderKL);

// Builds the VAE from folder.config_path("vae") and loads its weights (component_weights.h)
// strictly,
// on `device` in `dtype`, in eval mode. Throws ConfigError / WeightsError / SafetensorsError.
AutoencoderKL load_vae(const ModelFolder& folder, torch::Device device, torch::ScalarType dtype);
AutoencoderKL load_vae(const std::filesystem::path& config_json,
                       const std::filesystem::path& weights, torch::Device device,
                       torch::ScalarType dtype);
AutoencoderKL load_vae(const std::filesystem::path& config_json, const SafetensorsFile& weights,
                       torch::Device device, torch::ScalarType dtype);

}  // namespace diffusiond
