// Multi-head attention with diffusers' parameter names, used by the UNet's transformer blocks
// and by the VAE mid block.
// Ref: diffusers v0.27.2 models/attention_processor.py (Attention with AttnProcessor /
// AttnProcessor2_0). Owner: the block that registers it; forward() on one thread at a time.
#pragma once

#include <utility>
#include <vector>

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
//
// Cross-attention on the CPU keeps the keys and values it computed from a context: every
// denoising step passes the same prompt embeddings (the same tensor), so the steps after the
// first reuse them instead of running to_k and to_v again (the same bits: the same GEMMs, once).
// A kept entry is used only for the very tensor it was computed from (held, so its address
// cannot be reused), unchanged since (version), and for unchanged to_k/to_v weights (their
// storages held and versioned: a LoRA merge's set_data or an in-place change misses). Two
// entries: the UNet batch may hold two prompt lengths. Not on CUDA, where a captured graph
// replays its launches on new inputs copied into the same buffers.
class AttentionImpl : public torch::nn::Module {
 public:
  explicit AttentionImpl(const AttentionOptions& options);
  torch::Tensor forward(const torch::Tensor& hidden_states,
                        const torch::Tensor& encoder_hidden_states = {});
  const AttentionOptions& options() const { return options_; }
  // Forgets every kept context's keys and values (the tensors they hold are released).
  void drop_cached_keys_values() { kv_cache_.clear(); }

 private:
  // The keys and values of `context` ([B,S_kv,heads*dim_head] each), cached as described above.
  struct ContextKeysValues {
    torch::Tensor context;           // the tensor they were computed from (held)
    int64_t context_version = 0;     // its version then (0 for an inference tensor)
    std::vector<c10::Storage> used;  // to_k/to_v weight and bias storages (held)
    std::vector<int64_t> versions;   // and their versions then
    torch::Tensor k, v;
  };
  // to_k(context), to_v(context): from the cache where it holds them, else computed (and kept
  // when `context` is a CPU tensor outside autograd).
  std::pair<torch::Tensor, torch::Tensor> context_keys_values(const torch::Tensor& context);
  std::vector<torch::Tensor> kv_parameters() const;  // to_k.weight, to_v.weight, biases

  AttentionOptions options_;
  double scale_;
  std::vector<ContextKeysValues> kv_cache_;  // most recent first, at most 2
  torch::nn::Linear to_q{nullptr}, to_k{nullptr}, to_v{nullptr};
  torch::nn::ModuleList to_out{nullptr};  // [0] Linear (dropout [1] is the identity: not stored)
  torch::nn::Linear out_proj{nullptr};    // = to_out[0]
  torch::nn::GroupNorm group_norm{nullptr};
};
TORCH_MODULE(Attention);

}  // namespace diffusiond
