#include "pipeline/embeddings.h"

#include <cmath>

namespace diffusiond {

torch::Tensor timestep_embedding(const torch::Tensor& timesteps, int dim, bool flip_sin_to_cos,
                                 double downscale_freq_shift, double max_period) {
  TORCH_CHECK(timesteps.dim() == 1, "timestep_embedding: timesteps must be 1-D, got ",
              timesteps.sizes());
  const int64_t half = dim / 2;
  // Same float32 operation order as diffusers so that the result matches bit for bit.
  auto exponent = torch::arange(0, half, torch::dtype(torch::kFloat32).device(timesteps.device())) *
                  (-std::log(max_period));
  exponent = exponent / (static_cast<double>(half) - downscale_freq_shift);
  auto freqs = torch::exp(exponent);                                            // [half]
  auto args = timesteps.unsqueeze(1).to(torch::kFloat32) * freqs.unsqueeze(0);  // [B,half]
  auto emb = torch::cat({torch::sin(args), torch::cos(args)}, -1);              // [B,2*half]
  if (flip_sin_to_cos) {
    emb = torch::cat({emb.slice(1, half), emb.slice(1, 0, half)}, -1);
  }
  if (dim % 2 == 1) {
    emb = torch::nn::functional::pad(emb, torch::nn::functional::PadFuncOptions({0, 1, 0, 0}));
  }
  return emb;
}

TimestepEmbeddingImpl::TimestepEmbeddingImpl(int in_channels, int time_embed_dim, Activation act)
    : act_(act) {
  linear_1 = register_module("linear_1", torch::nn::Linear(in_channels, time_embed_dim));
  linear_2 = register_module("linear_2", torch::nn::Linear(time_embed_dim, time_embed_dim));
}

torch::Tensor TimestepEmbeddingImpl::forward(const torch::Tensor& sample) {
  return linear_2(apply_activation(act_, linear_1(sample)));
}

}  // namespace diffusiond
