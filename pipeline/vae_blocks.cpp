#include "pipeline/vae_blocks.h"

namespace diffusiond {
namespace {

constexpr double kVaeEps = 1e-6;  // the VAE passes resnet_eps=1e-6 to every block

ResnetBlock2D vae_resnet(int in, int out, int groups, Activation act) {
  ResnetBlock2DOptions r;
  r.in_channels = in;
  r.out_channels = out;
  r.temb_channels = 0;
  r.groups = groups;
  r.eps = kVaeEps;
  r.act = act;
  return ResnetBlock2D(r);
}

// The block's "resnets" ModuleList: o.num_layers resnets, the first from in_channels.
std::vector<ResnetBlock2D> vae_resnet_stack(torch::nn::Module& block, const VaeBlockOptions& o) {
  auto list = block.register_module("resnets", torch::nn::ModuleList());
  std::vector<ResnetBlock2D> resnets;
  for (int i = 0; i < o.num_layers; ++i) {
    resnets.push_back(
        vae_resnet(i == 0 ? o.in_channels : o.out_channels, o.out_channels, o.groups, o.act));
    list->push_back(resnets.back());
  }
  return resnets;
}

}  // namespace

DownEncoderBlock2DImpl::DownEncoderBlock2DImpl(const VaeBlockOptions& o) {
  resnets_ = vae_resnet_stack(*this, o);
  if (o.add_sample_resize) {
    downsampler_ = Downsample2D(o.out_channels, o.out_channels, /*padding=*/0);
    register_module("downsamplers", torch::nn::ModuleList(downsampler_));
  }
}

torch::Tensor DownEncoderBlock2DImpl::forward(const torch::Tensor& x) {
  torch::Tensor h = x;
  for (auto& resnet : resnets_) h = resnet(h);
  return downsampler_ ? downsampler_(h) : h;
}

UpDecoderBlock2DImpl::UpDecoderBlock2DImpl(const VaeBlockOptions& o) {
  resnets_ = vae_resnet_stack(*this, o);
  if (o.add_sample_resize) {
    upsampler_ = Upsample2D(o.out_channels, o.out_channels);
    register_module("upsamplers", torch::nn::ModuleList(upsampler_));
  }
}

torch::Tensor UpDecoderBlock2DImpl::forward(const torch::Tensor& x) {
  torch::Tensor h = x;
  for (auto& resnet : resnets_) h = resnet(h);
  return upsampler_ ? upsampler_(h) : h;
}

VaeMidBlock2DImpl::VaeMidBlock2DImpl(int channels, int groups, Activation act, bool add_attention) {
  auto resnets = register_module("resnets", torch::nn::ModuleList());
  resnets_.push_back(vae_resnet(channels, channels, groups, act));
  resnets->push_back(resnets_.back());
  if (add_attention) {
    // attention_head_dim = channels: one head over all channels.
    AttentionOptions a;
    a.query_dim = channels;
    a.heads = 1;
    a.dim_head = channels;
    a.bias = true;
    a.upcast_softmax = true;
    a.norm_num_groups = groups;
    a.eps = kVaeEps;
    a.residual_connection = true;
    attention_ = Attention(a);
    register_module("attentions", torch::nn::ModuleList(attention_));
  }
  resnets_.push_back(vae_resnet(channels, channels, groups, act));
  resnets->push_back(resnets_.back());
}

torch::Tensor VaeMidBlock2DImpl::forward(const torch::Tensor& x) {
  torch::Tensor h = resnets_[0](x);
  if (attention_) h = attention_(h);
  return resnets_[1](h);
}

}  // namespace diffusiond
