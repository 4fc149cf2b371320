// ResNet building blocks shared by the UNet and the VAE.
// Ref: diffusers v0.27.2 models/resnet.py (ResnetBlock2D, Downsample2D, Upsample2D).
// Owner: the model that registers them; forward() may run on one thread at a time.
#pragma once

#include <string>

#include <torch/torch.h>

#include "pipeline/activation.h"
#include "pipeline/packed_conv.h"

namespace diffusiond {

struct ResnetBlock2DOptions {
  int in_channels = 0;
  int out_channels = 0;   // 0 = in_channels
  int temb_channels = 0;  // 0 = no time embedding (VAE)
  int groups = 32;        // GroupNorm groups of norm1 and norm2
  double eps = 1e-6;      // GroupNorm eps
  Activation act = Activation::kSiLU;
  std::string time_embedding_norm = "default";  // "default" (add) | "scale_shift"
  double output_scale_factor = 1.0;
};

// Ref: ResnetBlock2D. x [B,in,H,W], temb [B,temb_channels] (undefined when temb_channels == 0)
// -> [B,out,H,W]. Keys: norm1, conv1, time_emb_proj, norm2, conv2, conv_shortcut (1x1, only when
// in != out).
class ResnetBlock2DImpl : public torch::nn::Module {
 public:
  explicit ResnetBlock2DImpl(const ResnetBlock2DOptions& options);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& temb = {});

 private:
  ResnetBlock2DOptions options_;
  torch::nn::GroupNorm norm1{nullptr}, norm2{nullptr};
  PackedConv2d conv1{nullptr}, conv2{nullptr}, conv_shortcut{nullptr};
  torch::nn::Linear time_emb_proj{nullptr};
};
TORCH_MODULE(ResnetBlock2D);

// Ref: Downsample2D with use_conv=True: 3x3 conv, stride 2. padding 0 pads (0,1,0,1) first, as
// diffusers does for the VAE encoder. [B,C,H,W] -> [B,out,H/2,W/2]. Key: conv.
class Downsample2DImpl : public torch::nn::Module {
 public:
  Downsample2DImpl(int channels, int out_channels, int padding);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  int padding_;
  PackedConv2d conv{nullptr};
};
TORCH_MODULE(Downsample2D);

// Ref: Upsample2D with use_conv=True: nearest x2 (or to output_size) then 3x3 conv.
// [B,C,H,W] -> [B,out,2H,2W]. Key: conv.
class Upsample2DImpl : public torch::nn::Module {
 public:
  Upsample2DImpl(int channels, int out_channels);
  // output_size: {} for a factor of 2, else the exact {H, W} to interpolate to.
  torch::Tensor forward(const torch::Tensor& x,
                        c10::optional<std::vector<int64_t>> output_size = {});

 private:
  PackedConv2d conv{nullptr};
};
TORCH_MODULE(Upsample2D);

}  // namespace diffusiond
