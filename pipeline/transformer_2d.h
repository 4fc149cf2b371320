// The spatial transformer of the UNet's cross-attention blocks.
// Ref: diffusers v0.27.2 models/transformers/transformer_2d.py (Transformer2DModel, continuous
// input), models/attention.py (BasicTransformerBlock with norm_type "layer_norm", FeedForward,
// GEGLU in models/activations.py). Owner: the UNet block that registers it; forward() on one
// thread at a time.
#pragma once

#include <torch/torch.h>

#include "pipeline/attention_block.h"
#include "pipeline/packed_conv.h"

namespace diffusiond {

// Ref: GEGLU. [.., dim_in] -> [.., dim_out]: proj to 2*dim_out, first half * gelu(second half).
class GEGLUImpl : public torch::nn::Module {
 public:
  GEGLUImpl(int dim_in, int dim_out);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  torch::nn::Linear proj{nullptr};
};
TORCH_MODULE(GEGLU);

// Ref: FeedForward(activation_fn="geglu", mult=4). [.., dim] -> [.., dim].
// Keys: net.0.proj (GEGLU), net.2 (Linear); net.1 is the (identity) dropout.
class FeedForwardImpl : public torch::nn::Module {
 public:
  explicit FeedForwardImpl(int dim, int mult = 4);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  torch::nn::ModuleList net{nullptr};
  GEGLU geglu{nullptr};
  torch::nn::Linear out{nullptr};
};
TORCH_MODULE(FeedForward);

struct TransformerOptions {
  int heads = 8;
  int dim_head = 64;
  int cross_attention_dim = 0;
  bool only_cross_attention = false;  // attn1 attends to the encoder states too
  bool upcast_attention = false;
};

// Ref: BasicTransformerBlock. x [B,S,dim], context [B,S_kv,cross_dim] -> [B,S,dim].
// Keys: norm1, attn1, norm2, attn2, norm3, ff (LayerNorms with eps 1e-5).
class BasicTransformerBlockImpl : public torch::nn::Module {
 public:
  BasicTransformerBlockImpl(int dim, const TransformerOptions& options);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& context);

 private:
  bool only_cross_attention_;
  torch::nn::LayerNorm norm1{nullptr}, norm2{nullptr}, norm3{nullptr};
  Attention attn1{nullptr}, attn2{nullptr};
  FeedForward ff{nullptr};
};
TORCH_MODULE(BasicTransformerBlock);

// Ref: Transformer2DModel (continuous input). x [B,C,H,W], context [B,S_kv,cross_dim] ->
// [B,C,H,W] (residual added). Keys: norm (GroupNorm eps 1e-6), proj_in (1x1 conv, or Linear with
// use_linear_projection), transformer_blocks.N, proj_out.
class Transformer2DModelImpl : public torch::nn::Module {
 public:
  Transformer2DModelImpl(int in_channels, int num_layers, int norm_num_groups,
                         bool use_linear_projection, const TransformerOptions& options);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& context);

 private:
  bool linear_;
  int inner_dim_;
  torch::nn::GroupNorm norm{nullptr};
  PackedConv2d proj_in_conv{nullptr}, proj_out_conv{nullptr};
  torch::nn::Linear proj_in_linear{nullptr}, proj_out_linear{nullptr};
  std::vector<BasicTransformerBlock> blocks_;
  torch::nn::ModuleList transformer_blocks{nullptr};
};
TORCH_MODULE(Transformer2DModel);

}  // namespace diffusiond
