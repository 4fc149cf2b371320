#include "pipeline/attention_ops.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>

#include <torch/version.h>

namespace diffusiond {

namespace {

// [Lq,Lk], true where key j comes after query i (causal attention blocks it).
torch::Tensor causal_blocked(int64_t lq, int64_t lk, const torch::TensorOptions& options) {
  return torch::ones({lq, lk}, options.dtype(torch::kBool)).triu(1);
}

// In place on fresh scores: -inf where `blocked` (if defined) and where a bool mask is false; a
// float mask is added. Both broadcast to the scores.
void mask_scores_(torch::Tensor& scores, const torch::Tensor& blocked,
                  const std::optional<torch::Tensor>& mask) {
  const float ninf = -std::numeric_limits<float>::infinity();
  if (blocked.defined()) scores.masked_fill_(blocked, ninf);
  if (!mask) return;
  if (mask->scalar_type() == torch::kBool) {
    scores.masked_fill_(mask->logical_not(), ninf);
  } else {
    scores.add_(mask->to(scores.scalar_type()));
  }
}

std::atomic<int64_t> scores_band_bytes{16 << 20};

// The same math for float32 CPU tensors, one batch element at a time, on the strided views the
// callers pass (q, k, v are [B,L,heads,d] transposed): each product is a bmm over the heads of
// one batch element with the heads' stride as leading dimension, so nothing is copied
// contiguous first (torch::matmul on 4-D views does), the scores are [heads,Lq,Lk] for one
// element at a time, and the result is written in [B,Lq,heads,dv] order, whose
// transpose(1,2).reshape at the caller is free. The same BLAS calls per matrix: the same bits.
// Scores larger than attention_scores_band_bytes() are computed in bands of query rows of
// equal height: a row's scores, softmax and output read that row of q alone, and BLAS computes
// each element of a product the same way whatever the number of rows (tested), so a 512² SD
// 1.5 self-attention (8 heads x 4096 x 4096 scores: 512 MiB) holds one band's 16 MiB.
torch::Tensor attention_cpu_by_batch(const torch::Tensor& q, const torch::Tensor& k,
                                     const torch::Tensor& v,
                                     const std::optional<torch::Tensor>& mask, bool causal,
                                     double s) {
  const auto b = q.size(0), heads = q.size(1), lq = q.size(2), lk = k.size(2);
  const int64_t row_bytes = heads * lk * static_cast<int64_t>(q.element_size());
  const int64_t budget = scores_band_bytes.load();
  const int64_t total = row_bytes * lq;
  const int64_t bands =
      total <= budget ? 1 : std::clamp<int64_t>(total / budget + (total % budget != 0), 1, lq);
  const int64_t band = (lq + bands - 1) / bands;
  // out [B,Lq,heads,dv]; returned as its [B,heads,Lq,dv] view.
  torch::Tensor out = torch::empty({b, lq, heads, v.size(3)}, v.options());
  torch::Tensor scores_buffer = torch::empty({heads, band, lk}, q.options());
  const torch::Tensor blocked = causal ? causal_blocked(lq, lk, q.options()) : torch::Tensor();
  std::optional<torch::Tensor> full_mask;
  if (mask) full_mask = mask->expand({b, heads, lq, lk});
  for (int64_t i = 0; i < b; ++i) {
    const torch::Tensor out_i = out[i].transpose(0, 1);  // [heads,Lq,dv] view
    for (int64_t r0 = 0; r0 < lq; r0 += band) {
      const int64_t rows = std::min(band, lq - r0);
      torch::Tensor scores =
          rows == band ? scores_buffer : torch::empty({heads, rows, lk}, q.options());
      at::bmm_out(scores, q[i].narrow(1, r0, rows), k[i].transpose(-1, -2)).mul_(s);
      mask_scores_(scores, blocked.defined() ? blocked.narrow(0, r0, rows) : blocked,
                   full_mask ? std::optional<torch::Tensor>((*full_mask)[i].narrow(1, r0, rows))
                             : std::nullopt);
      at::_softmax_out(scores, scores, -1, /*half_to_float=*/false);
      torch::Tensor out_rows = out_i.narrow(1, r0, rows);
      at::bmm_out(out_rows, scores, v[i]);
    }
  }
  return out.transpose(1, 2);
}

}  // namespace

int64_t attention_scores_band_bytes() {
  return scores_band_bytes.load();
}

void set_attention_scores_band_bytes(int64_t bytes) {
  scores_band_bytes = std::max<int64_t>(1, bytes);
}

torch::Tensor dot_product_attention_math(const torch::Tensor& q, const torch::Tensor& k,
                                         const torch::Tensor& v,
                                         const std::optional<torch::Tensor>& mask, bool causal,
                                         bool upcast_fp32, std::optional<double> scale) {
  const double s = scale.value_or(1.0 / std::sqrt(static_cast<double>(q.size(-1))));
  const auto f32 = torch::kFloat32;
  if (q.dim() == 4 && q.device().is_cpu() && q.scalar_type() == f32 && k.scalar_type() == f32 &&
      v.scalar_type() == f32 && k.dim() == 4 && v.dim() == 4) {
    return attention_cpu_by_batch(q, k, v, mask, causal, s);
  }
  torch::Tensor query = upcast_fp32 ? q.to(torch::kFloat32) : q;
  torch::Tensor key = upcast_fp32 ? k.to(torch::kFloat32) : k;
  // [B, heads, Lq, Lk]; the scale multiplies the product, as baddbmm(alpha=scale) does.
  // Scaled in place: the scores are the largest temporary ([B,heads,Lq,Lk]), one allocation.
  torch::Tensor scores = torch::matmul(query, key.transpose(-1, -2)).mul_(s);
  mask_scores_(
      scores,
      causal ? causal_blocked(scores.size(-2), scores.size(-1), scores.options()) : torch::Tensor(),
      mask);
  torch::Tensor probs;
  if (!upcast_fp32 || scores.scalar_type() == torch::kFloat32) {
    // Softmax into the scores' own memory (the kernel reads each row before writing it).
    probs = at::_softmax_out(scores, scores, -1, /*half_to_float=*/false);
  } else {
    probs = torch::softmax(scores, -1, torch::kFloat32);
  }
  return torch::matmul(probs.to(v.scalar_type()), v);
}

torch::Tensor dot_product_attention(const torch::Tensor& q, const torch::Tensor& k,
                                    const torch::Tensor& v,
                                    const std::optional<torch::Tensor>& mask, bool causal,
                                    bool upcast_fp32, std::optional<double> scale) {
#if TORCH_VERSION_MAJOR >= 2
  (void)upcast_fp32;  // the fused kernels accumulate in float32 (diffusers' AttnProcessor2_0)
  std::optional<torch::Tensor> attn_mask = mask;
  if (attn_mask && attn_mask->scalar_type() != torch::kBool) {
    attn_mask = attn_mask->to(q.scalar_type());
  }
  bool is_causal = causal;
  if (causal && attn_mask) {  // the fused API rejects mask + is_causal together: merge them
    const auto lq = q.size(-2), lk = k.size(-2);
    auto allowed = torch::ones({lq, lk}, q.options().dtype(torch::kBool)).tril();
    if (attn_mask->scalar_type() == torch::kBool) {
      attn_mask = attn_mask->logical_and(allowed);
    } else {
      attn_mask =
          attn_mask->masked_fill(allowed.logical_not(), -std::numeric_limits<float>::infinity());
    }
    is_causal = false;
  }
  // c10::optional and std::optional differ before LibTorch 2.3: convert explicitly.
  const c10::optional<at::Tensor> fused_mask =
      attn_mask ? c10::optional<at::Tensor>(*attn_mask) : c10::nullopt;
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1)
  const c10::optional<double> fused_scale = scale ? c10::optional<double>(*scale) : c10::nullopt;
  return at::scaled_dot_product_attention(q, k, v, fused_mask, 0.0, is_causal, fused_scale);
#else
  if (!scale) return at::scaled_dot_product_attention(q, k, v, fused_mask, 0.0, is_causal);
  return dot_product_attention_math(q, k, v, mask, causal, upcast_fp32, scale);
#endif
#else
  return dot_product_attention_math(q, k, v, mask, causal, upcast_fp32, scale);
#endif
}

}  // namespace diffusiond
