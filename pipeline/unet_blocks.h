// The down, mid and up blocks of UNet2DConditionModel.
// Ref: diffusers v0.27.2 models/unets/unet_2d_blocks.py (CrossAttnDownBlock2D, DownBlock2D,
// UNetMidBlock2DCrossAttn, UpBlock2D, CrossAttnUpBlock2D). Owner: UNet2DConditionModel;
// forward() on one thread at a time.
#pragma once

#include <optional>
#include <vector>

#include <torch/torch.h>

#include "pipeline/resnet.h"
#include "pipeline/transformer_2d.h"

namespace diffusiond {

// Everything a block takes from the UNet config (one block's view of it).
struct UNetBlockOptions {
  int in_channels = 0;
  int out_channels = 0;
  int prev_output_channels = 0;  // up blocks: channels coming from the block below
  int temb_channels = 0;
  int num_layers = 1;
  std::vector<int> transformer_layers;  // per layer (cross-attention blocks only)
  double resnet_eps = 1e-5;
  int resnet_groups = 32;
  Activation act = Activation::kSiLU;
  std::string time_embedding_norm = "default";
  double output_scale_factor = 1.0;  // mid block: mid_block_scale_factor
  bool add_sample_resize = false;    // add_downsample / add_upsample
  int downsample_padding = 1;
  int num_attention_heads = 8;
  int cross_attention_dim = 0;
  bool use_linear_projection = false;
  bool only_cross_attention = false;
  bool upcast_attention = false;
};

// A down block: x [B,in,H,W] -> [B,out,H',W'], appending every output state (one per resnet,
// plus the downsampled one) to `res_samples`.
class UNetDownBlock : public torch::nn::Module {
 public:
  virtual torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& temb,
                                const torch::Tensor& context,
                                std::vector<torch::Tensor>& res_samples) = 0;
};

// An up block: consumes num_resnets() skip states from the back of `res_samples`.
// upsample_size: exact output size of the upsampler, or nullopt for x2.
class UNetUpBlock : public torch::nn::Module {
 public:
  virtual int num_resnets() const = 0;
  virtual torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& temb,
                                const torch::Tensor& context,
                                std::vector<torch::Tensor>& res_samples,
                                const std::optional<std::vector<int64_t>>& upsample_size) = 0;
};

// Ref: DownBlock2D and CrossAttnDownBlock2D (with_attention). Keys: resnets.N, attentions.N,
// downsamplers.0.
class DownBlock2DImpl : public UNetDownBlock {
 public:
  DownBlock2DImpl(const UNetBlockOptions& options, bool with_attention);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& temb,
                        const torch::Tensor& context,
                        std::vector<torch::Tensor>& res_samples) override;

 private:
  std::vector<ResnetBlock2D> resnets_;
  std::vector<Transformer2DModel> attentions_;
  Downsample2D downsampler_{nullptr};
};

// Ref: UpBlock2D and CrossAttnUpBlock2D (with_attention). Keys: resnets.N, attentions.N,
// upsamplers.0.
class UpBlock2DImpl : public UNetUpBlock {
 public:
  UpBlock2DImpl(const UNetBlockOptions& options, bool with_attention);
  int num_resnets() const override { return static_cast<int>(resnets_.size()); }
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& temb,
                        const torch::Tensor& context, std::vector<torch::Tensor>& res_samples,
                        const std::optional<std::vector<int64_t>>& upsample_size) override;

 private:
  std::vector<ResnetBlock2D> resnets_;
  std::vector<Transformer2DModel> attentions_;
  Upsample2D upsampler_{nullptr};
};

// Ref: UNetMidBlock2DCrossAttn. x [B,C,H,W] -> [B,C,H,W]. Keys: resnets.0..N, attentions.0..N-1.
class UNetMidBlock2DCrossAttnImpl : public torch::nn::Module {
 public:
  explicit UNetMidBlock2DCrossAttnImpl(const UNetBlockOptions& options);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& temb,
                        const torch::Tensor& context);

 private:
  std::vector<ResnetBlock2D> resnets_;
  std::vector<Transformer2DModel> attentions_;
};
TORCH_MODULE(UNetMidBlock2DCrossAttn);

}  // namespace diffusiond
