// Multi-head attention with diffusers' parameter names, used by the UNet's transformer blocks
// and by the VAE mid block.
// Ref: diffusers v0.27.2 models/attention_processor.py (Attention with AttnProcessor /
// AttnProcessor2_0). Owner: the block that registers it; forward() on one thread at a time.
#pragma once

#include <torch/torch.h>

namespace diffusiond {

struct AttentionOptions {
  int query_dim = 0;
  int cross_attention_dim = 0;  // 0 = self-attention (keys/values from query_dim features)
  int heads = 8;
  int dim_head = 64;
  bool bias = false;              // bias of to_q/to_k/to_v
  bool out_bias = true;           // bias of to_out.0
  bool upcast_attention = false;  // scores and softmax in float32 (SD 2.x)
  bool upcast_softmax = false;    // softmax in float32 (VAE)
  int norm_num_groups = 0;        // > 0: GroupNorm "group_norm" over channels before to_q (VAE)
  double eps = 1e-5;              // eps of that GroupNorm
  bool residual_connection = false;
  double rescale_output_factor = 1.0;
};

// Ref: Attention. hidden_states [B,S,query_dim] or [B,C,H,W] (then S = H*W, C = query_dim);
// encoder_hidden_states [B,S_kv,cross_attention_dim] or undefined for self-attention.
// Returns the same shape as hidden_states. Keys: to_q, to_k, to_v, to_out.0, [group_norm].
class AttentionImpl : public torch::nn::Module {
 public:
  explicit AttentionImpl(const AttentionOptions& options);
  torch::Tensor forward(const torch::Tensor& hidden_states,
                        const torch::Tensor& encoder_hidden_states = {});
  const AttentionOptions& options() const { return options_; }

 private:
  AttentionOptions options_;
  double scale_;
  torch::nn::Linear to_q{nullptr}, to_k{nullptr}, to_v{nullptr};
  torch::nn::ModuleList to_out{nullptr};  // [0] Linear (dropout [1] is the identity: not stored)
  torch::nn::Linear out_proj{nullptr};    // = to_out[0]
  torch::nn::GroupNorm group_norm{nullptr};
};
TORCH_MODULE(Attention);

}  // namespace diffusiond
