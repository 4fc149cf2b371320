#include "pipeline/unet_blocks.h"

#include <string>

namespace diffusiond {
namespace {

ResnetBlock2D make_resnet(const UNetBlockOptions& o, int in_channels, int out_channels) {
  ResnetBlock2DOptions r;
  r.in_channels = in_channels;
  r.out_channels = out_channels;
  r.temb_channels = o.temb_channels;
  r.groups = o.resnet_groups;
  r.eps = o.resnet_eps;
  r.act = o.act;
  r.time_embedding_norm = o.time_embedding_norm;
  r.output_scale_factor = o.output_scale_factor;
  return ResnetBlock2D(r);
}

// Ref: the Transformer2DModel(num_attention_heads, channels // num_attention_heads, ...) that
// every cross-attention block builds; the GroupNorm groups are the block's resnet groups.
Transformer2DModel make_transformer(const UNetBlockOptions& o, int channels, int num_layers,
                                    bool only_cross_attention) {
  TransformerOptions t;
  t.heads = o.num_attention_heads;
  t.dim_head = channels / o.num_attention_heads;
  t.cross_attention_dim = o.cross_attention_dim;
  t.only_cross_attention = only_cross_attention;
  t.upcast_attention = o.upcast_attention;
  return Transformer2DModel(channels, num_layers, o.resnet_groups, o.use_linear_projection, t);
}

}  // namespace

DownBlock2DImpl::DownBlock2DImpl(const UNetBlockOptions& o, bool with_attention) {
  auto resnets = register_module("resnets", torch::nn::ModuleList());
  torch::nn::ModuleList attentions{nullptr};
  if (with_attention) attentions = register_module("attentions", torch::nn::ModuleList());
  for (int i = 0; i < o.num_layers; ++i) {
    resnets_.push_back(make_resnet(o, i == 0 ? o.in_channels : o.out_channels, o.out_channels));
    resnets->push_back(resnets_.back());
    if (with_attention) {
      attentions_.push_back(
          make_transformer(o, o.out_channels, o.transformer_layers.at(i), o.only_cross_attention));
      attentions->push_back(attentions_.back());
    }
  }
  if (o.add_sample_resize) {
    downsampler_ = Downsample2D(o.out_channels, o.out_channels, o.downsample_padding);
    register_module("downsamplers", torch::nn::ModuleList(downsampler_));
  }
}

torch::Tensor DownBlock2DImpl::forward(const torch::Tensor& x, const torch::Tensor& temb,
                                       const torch::Tensor& context,
                                       std::vector<torch::Tensor>& res_samples) {
  torch::Tensor h = x;
  for (std::size_t i = 0; i < resnets_.size(); ++i) {
    h = resnets_[i](h, temb);  // [B,out,H,W]
    if (!attentions_.empty()) h = attentions_[i](h, context);
    res_samples.push_back(h);
  }
  if (downsampler_) {
    h = downsampler_(h);  // [B,out,H/2,W/2]
    res_samples.push_back(h);
  }
  return h;
}

UpBlock2DImpl::UpBlock2DImpl(const UNetBlockOptions& o, bool with_attention) {
  auto resnets = register_module("resnets", torch::nn::ModuleList());
  torch::nn::ModuleList attentions{nullptr};
  if (with_attention) attentions = register_module("attentions", torch::nn::ModuleList());
  for (int i = 0; i < o.num_layers; ++i) {
    // The last resnet takes the skip state from the block's own input level (in_channels).
    const int skip_channels = i == o.num_layers - 1 ? o.in_channels : o.out_channels;
    const int resnet_in = i == 0 ? o.prev_output_channels : o.out_channels;
    resnets_.push_back(make_resnet(o, resnet_in + skip_channels, o.out_channels));
    resnets->push_back(resnets_.back());
    if (with_attention) {
      attentions_.push_back(
          make_transformer(o, o.out_channels, o.transformer_layers.at(i), o.only_cross_attention));
      attentions->push_back(attentions_.back());
    }
  }
  if (o.add_sample_resize) {
    upsampler_ = Upsample2D(o.out_channels, o.out_channels);
    register_module("upsamplers", torch::nn::ModuleList(upsampler_));
  }
}

torch::Tensor UpBlock2DImpl::forward(const torch::Tensor& x, const torch::Tensor& temb,
                                     const torch::Tensor& context,
                                     std::vector<torch::Tensor>& res_samples,
                                     const std::optional<std::vector<int64_t>>& upsample_size) {
  torch::Tensor h = x;
  for (std::size_t i = 0; i < resnets_.size(); ++i) {
    TORCH_CHECK(!res_samples.empty(), "UpBlock2D: ran out of skip states");
    torch::Tensor skip = res_samples.back();
    res_samples.pop_back();
    h = torch::cat({h, skip}, 1);  // [B,C_h+C_skip,H,W]
    h = resnets_[i](h, temb);      // [B,out,H,W]
    if (!attentions_.empty()) h = attentions_[i](h, context);
  }
  if (upsampler_) {
    h = upsample_size ? upsampler_(h, *upsample_size) : upsampler_(h);  // [B,out,2H,2W]
  }
  return h;
}

UNetMidBlock2DCrossAttnImpl::UNetMidBlock2DCrossAttnImpl(const UNetBlockOptions& o) {
  auto resnets = register_module("resnets", torch::nn::ModuleList());
  auto attentions = register_module("attentions", torch::nn::ModuleList());
  resnets_.push_back(make_resnet(o, o.in_channels, o.in_channels));
  resnets->push_back(resnets_.back());
  for (int i = 0; i < o.num_layers; ++i) {
    attentions_.push_back(make_transformer(o, o.in_channels, o.transformer_layers.at(i), false));
    attentions->push_back(attentions_.back());
    resnets_.push_back(make_resnet(o, o.in_channels, o.in_channels));
    resnets->push_back(resnets_.back());
  }
}

torch::Tensor UNetMidBlock2DCrossAttnImpl::forward(const torch::Tensor& x,
                                                   const torch::Tensor& temb,
                                                   const torch::Tensor& context) {
  torch::Tensor h = resnets_[0](x, temb);
  for (std::size_t i = 0; i < attentions_.size(); ++i) {
    h = attentions_[i](h, context);
    h = resnets_[i + 1](h, temb);
  }
  return h;
}

}  // namespace diffusiond
