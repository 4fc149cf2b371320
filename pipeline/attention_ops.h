// Scaled dot-product attention shared by the CLIP text encoder and the UNet.
// Ref: torch.nn.functional.scaled_dot_product_attention (LibTorch >= 2.0) and, for LibTorch 1.13,
// the exact math of diffusers' AttnProcessor / transformers' CLIPAttention (scores = q·kᵀ·scale,
// masks, softmax, ·v). Never baddbmm over an uninitialised tensor (NaN on 1.13 CPU).
// Thread-safety: pure function; any thread.
#pragma once

#include <optional>

#include <torch/torch.h>

namespace diffusiond {

// q: [B, heads, Lq, d], k: [B, heads, Lk, d], v: [B, heads, Lk, dv] -> [B, heads, Lq, dv].
// mask: optional, broadcastable to [B, heads, Lq, Lk]; bool (true = attend) or additive float.
// causal: position i attends to j <= i only (Lq == Lk).
// upcast_fp32: compute scores and softmax in float32 (diffusers' upcast_attention /
//   upcast_softmax); the result has v's dtype. On LibTorch >= 2 the fused kernel is used as
//   diffusers' AttnProcessor2_0 does, which accumulates in float32 itself.
// scale: defaults to 1/sqrt(d).
// Not named scaled_dot_product_attention: on LibTorch >= 2 argument-dependent lookup also finds
// at::scaled_dot_product_attention for tensor arguments, and a call becomes ambiguous.
torch::Tensor dot_product_attention(const torch::Tensor& q, const torch::Tensor& k,
                                    const torch::Tensor& v,
                                    const std::optional<torch::Tensor>& mask = std::nullopt,
                                    bool causal = false, bool upcast_fp32 = false,
                                    std::optional<double> scale = std::nullopt);

// The 1.13 path, always available (tests compare it with the fused kernel on LibTorch >= 2).
torch::Tensor dot_product_attention_math(const torch::Tensor& q, const torch::Tensor& k,
                                         const torch::Tensor& v,
                                         const std::optional<torch::Tensor>& mask, bool causal,
                                         bool upcast_fp32, std::optional<double> scale);

// The float32 CPU path's scores, at most about this many bytes at a time (bands of query rows;
// the same bits). Process-wide; the default here is its one owner; tests lower it to reach the
// bands with small tensors. Thread-safety: set before attention runs, not while it does.
int64_t attention_scores_band_bytes();
void set_attention_scores_band_bytes(int64_t bytes);

}  // namespace diffusiond
