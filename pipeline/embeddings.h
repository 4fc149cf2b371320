// Timestep embeddings of the UNet.
// Ref: diffusers v0.27.2 models/embeddings.py (get_timestep_embedding, Timesteps,
// TimestepEmbedding). Owner: UNet2DConditionModel; forward() on one thread at a time.
#pragma once

#include <torch/torch.h>

#include "pipeline/activation.h"

namespace diffusiond {

// Ref: get_timestep_embedding (scale 1, max_period 10000). timesteps [B] (any dtype, taken as
// float32) -> [B, dim] float32: the first half sin and the second half cos of t * freq_k with
// freq_k = exp(-ln(max_period) * k / (dim/2 - downscale_freq_shift)); halves swapped when
// flip_sin_to_cos; an odd dim gets one zero column.
torch::Tensor timestep_embedding(const torch::Tensor& timesteps, int dim, bool flip_sin_to_cos,
                                 double downscale_freq_shift, double max_period = 10000.0);

// Ref: TimestepEmbedding (no cond_proj, no post_act): linear_1 -> act -> linear_2.
// [B,in] -> [B,time_embed_dim]. Keys: linear_1, linear_2.
class TimestepEmbeddingImpl : public torch::nn::Module {
 public:
  TimestepEmbeddingImpl(int in_channels, int time_embed_dim, Activation act);
  torch::Tensor forward(const torch::Tensor& sample);

 private:
  Activation act_;
  torch::nn::Linear linear_1{nullptr}, linear_2{nullptr};
};
TORCH_MODULE(TimestepEmbedding);

}  // namespace diffusiond
