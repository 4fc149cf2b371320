// The blocks of the VAE's encoder and decoder.
// Ref: diffusers v0.27.2 models/unets/unet_2d_blocks.py (DownEncoderBlock2D, UpDecoderBlock2D,
// UNetMidBlock2D with its Attention). Owner: Encoder / Decoder; forward() on one thread at a time.
#pragma once

#include <vector>

#include <torch/torch.h>

#include "pipeline/attention_block.h"
#include "pipeline/resnet.h"

namespace diffusiond {

// What every VAE block shares: no time embedding, GroupNorm eps 1e-6.
struct VaeBlockOptions {
  int in_channels = 0;
  int out_channels = 0;
  int num_layers = 1;
  int groups = 32;
  Activation act = Activation::kSiLU;
  bool add_sample_resize = false;  // add_downsample / add_upsample
};

// Ref: DownEncoderBlock2D (downsample padding 0). [B,in,H,W] -> [B,out,H/2,W/2] (or H,W without
// downsampler). Keys: resnets.N, downsamplers.0.conv.
class DownEncoderBlock2DImpl : public torch::nn::Module {
 public:
  explicit DownEncoderBlock2DImpl(const VaeBlockOptions& options);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  std::vector<ResnetBlock2D> resnets_;
  Downsample2D downsampler_{nullptr};
};
TORCH_MODULE(DownEncoderBlock2D);

// Ref: UpDecoderBlock2D. [B,in,H,W] -> [B,out,2H,2W] (or H,W without upsampler).
// Keys: resnets.N, upsamplers.0.conv.
class UpDecoderBlock2DImpl : public torch::nn::Module {
 public:
  explicit UpDecoderBlock2DImpl(const VaeBlockOptions& options);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  std::vector<ResnetBlock2D> resnets_;
  Upsample2D upsampler_{nullptr};
};
TORCH_MODULE(UpDecoderBlock2D);

// Ref: UNetMidBlock2D as the VAE builds it (temb None, one single-head self-attention with
// GroupNorm, residual and float32 softmax). [B,C,H,W] -> [B,C,H,W].
// Keys: resnets.0, attentions.0 (group_norm, to_q, to_k, to_v, to_out.0), resnets.1.
class VaeMidBlock2DImpl : public torch::nn::Module {
 public:
  VaeMidBlock2DImpl(int channels, int groups, Activation act, bool add_attention);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  std::vector<ResnetBlock2D> resnets_;
  Attention attention_{nullptr};
};
TORCH_MODULE(VaeMidBlock2D);

}  // namespace diffusiond
