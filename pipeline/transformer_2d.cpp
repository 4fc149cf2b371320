#include "pipeline/transformer_2d.h"

#include "pipeline/linear.h"

namespace diffusiond {
namespace nn = torch::nn;

GEGLUImpl::GEGLUImpl(int dim_in, int dim_out) {
  proj = register_module("proj", nn::Linear(dim_in, dim_out * 2));
}

torch::Tensor GEGLUImpl::forward(const torch::Tensor& x) {
  auto parts = apply_linear(proj, x).chunk(2, -1);  // hidden, gate: [.., dim_out] each
  return torch::gelu(parts[1]).mul_(parts[0]);  // hidden * gelu(gate), into the fresh gelu output
}

FeedForwardImpl::FeedForwardImpl(int dim, int mult) {
  const int inner = dim * mult;
  geglu = GEGLU(dim, inner);
  out = nn::Linear(inner, dim);
  net = register_module("net", nn::ModuleList(geglu, nn::Identity(), out));
}

torch::Tensor FeedForwardImpl::forward(const torch::Tensor& x) {
  return apply_linear(out, geglu(x));
}

BasicTransformerBlockImpl::BasicTransformerBlockImpl(int dim, const TransformerOptions& options)
    : only_cross_attention_(options.only_cross_attention) {
  auto layer_norm = [dim] {
    return nn::LayerNorm(nn::LayerNormOptions({dim}).eps(1e-5).elementwise_affine(true));
  };
  AttentionOptions self_attn;
  self_attn.query_dim = dim;
  self_attn.heads = options.heads;
  self_attn.dim_head = options.dim_head;
  self_attn.upcast_attention = options.upcast_attention;
  self_attn.cross_attention_dim = options.only_cross_attention ? options.cross_attention_dim : 0;
  AttentionOptions cross_attn = self_attn;
  cross_attn.cross_attention_dim = options.cross_attention_dim;

  norm1 = register_module("norm1", layer_norm());
  attn1 = register_module("attn1", Attention(self_attn));
  norm2 = register_module("norm2", layer_norm());
  attn2 = register_module("attn2", Attention(cross_attn));
  norm3 = register_module("norm3", layer_norm());
  ff = register_module("ff", FeedForward(dim));
}

torch::Tensor BasicTransformerBlockImpl::forward(const torch::Tensor& x,
                                                 const torch::Tensor& context) {
  // Residual sums into the fresh attention / feed-forward outputs (same bits as a + b).
  torch::Tensor h = attn1(norm1(x), only_cross_attention_ ? context : torch::Tensor()).add_(x);
  h = attn2(norm2(h), context).add_(h);
  return ff(norm3(h)).add_(h);
}

Transformer2DModelImpl::Transformer2DModelImpl(int in_channels, int num_layers, int norm_num_groups,
                                               bool use_linear_projection,
                                               const TransformerOptions& options)
    : linear_(use_linear_projection), inner_dim_(options.heads * options.dim_head) {
  norm = register_module(
      "norm", nn::GroupNorm(nn::GroupNormOptions(norm_num_groups, in_channels).eps(1e-6)));
  if (linear_) {
    proj_in_linear = register_module("proj_in", nn::Linear(in_channels, inner_dim_));
  } else {
    proj_in_conv =
        register_module("proj_in", PackedConv2d(nn::Conv2dOptions(in_channels, inner_dim_, 1)));
  }
  transformer_blocks = register_module("transformer_blocks", nn::ModuleList());
  for (int i = 0; i < num_layers; ++i) {
    blocks_.push_back(BasicTransformerBlock(inner_dim_, options));
    transformer_blocks->push_back(blocks_.back());
  }
  // out_channels = in_channels for the UNet's blocks.
  if (linear_) {
    proj_out_linear = register_module("proj_out", nn::Linear(inner_dim_, in_channels));
  } else {
    proj_out_conv =
        register_module("proj_out", PackedConv2d(nn::Conv2dOptions(inner_dim_, in_channels, 1)));
  }
}

torch::Tensor Transformer2DModelImpl::forward(const torch::Tensor& x,
                                              const torch::Tensor& context) {
  const int64_t b = x.size(0), h = x.size(2), w = x.size(3);
  torch::Tensor t = norm(x);
  if (linear_) {
    t = apply_linear(proj_in_linear,
                     t.permute({0, 2, 3, 1}).reshape({b, h * w, t.size(1)}));  // [B,HW,inner]
  } else {
    t = proj_in_conv(t);
    t = t.permute({0, 2, 3, 1}).reshape({b, h * w, inner_dim_});  // [B,HW,inner]
  }
  for (auto& block : blocks_) t = block(t, context);
  if (linear_) {
    t = apply_linear(proj_out_linear, t);  // [B,HW,C]
    t = t.reshape({b, h, w, t.size(2)}).permute({0, 3, 1, 2}).contiguous();
  } else {
    t = t.reshape({b, h, w, inner_dim_}).permute({0, 3, 1, 2}).contiguous();
    t = proj_out_conv(t);  // [B,C,H,W]
  }
  return t.add_(x);
}

}  // namespace diffusiond
