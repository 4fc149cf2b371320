#include "pipeline/attention_block.h"

#include <cmath>

#include "pipeline/attention_ops.h"
#include "pipeline/linear.h"

namespace diffusiond {
namespace nn = torch::nn;

AttentionImpl::AttentionImpl(const AttentionOptions& options) : options_(options) {
  const int inner = options_.heads * options_.dim_head;
  const int kv_dim =
      options_.cross_attention_dim > 0 ? options_.cross_attention_dim : options_.query_dim;
  scale_ = std::pow(static_cast<double>(options_.dim_head), -0.5);  // dim_head**-0.5
  if (options_.norm_num_groups > 0) {
    group_norm = register_module(
        "group_norm",
        nn::GroupNorm(
            nn::GroupNormOptions(options_.norm_num_groups, options_.query_dim).eps(options_.eps)));
  }
  to_q = register_module(
      "to_q", nn::Linear(nn::LinearOptions(options_.query_dim, inner).bias(options_.bias)));
  to_k = register_module("to_k", nn::Linear(nn::LinearOptions(kv_dim, inner).bias(options_.bias)));
  to_v = register_module("to_v", nn::Linear(nn::LinearOptions(kv_dim, inner).bias(options_.bias)));
  out_proj = nn::Linear(nn::LinearOptions(inner, options_.query_dim).bias(options_.out_bias));
  to_out = register_module("to_out", nn::ModuleList(out_proj));
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& hidden_states,
                                     const torch::Tensor& encoder_hidden_states) {
  const torch::Tensor& residual = hidden_states;
  torch::Tensor x = hidden_states;
  const bool spatial = x.dim() == 4;
  int64_t b = x.size(0), c = 0, h = 0, w = 0;
  if (spatial) {
    c = x.size(1), h = x.size(2), w = x.size(3);
    x = x.reshape({b, c, h * w}).transpose(1, 2);  // [B,HW,C]
  }
  if (group_norm) x = group_norm(x.transpose(1, 2)).transpose(1, 2);

  const torch::Tensor& context = encoder_hidden_states.defined() ? encoder_hidden_states : x;
  torch::Tensor q = apply_linear(to_q, x);        // [B,Sq,heads*dim_head]
  torch::Tensor k = apply_linear(to_k, context);  // [B,Sk,heads*dim_head]
  torch::Tensor v = apply_linear(to_v, context);

  const int64_t heads = options_.heads, dh = options_.dim_head;
  auto split = [&](const torch::Tensor& t) {  // [B,S,H*D] -> [B,H,S,D]
    return t.view({b, t.size(1), heads, dh}).transpose(1, 2);
  };
  // upcast_attention (scores + softmax) and upcast_softmax both map to float32 scores and
  // softmax: the same as diffusers in float32, at least as precise in half precision.
  torch::Tensor out = dot_product_attention(
      split(q), split(k), split(v), std::nullopt, /*causal=*/false,
      /*upcast_fp32=*/options_.upcast_attention || options_.upcast_softmax, scale_);
  out = out.transpose(1, 2).reshape({b, -1, heads * dh}).to(q.scalar_type());  // [B,Sq,H*D]
  out = apply_linear(out_proj, out);                                           // [B,Sq,query_dim]

  if (spatial) out = out.transpose(-1, -2).reshape({b, c, h, w});
  // out is fresh (out_proj's output, or its NCHW copy): the residual and rescale run in place.
  if (options_.residual_connection) out.add_(residual);
  if (options_.rescale_output_factor != 1.0) out.div_(options_.rescale_output_factor);
  return out;
}

}  // namespace diffusiond
