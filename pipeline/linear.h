// A torch::nn::Linear applied through at::linear, as torch.nn.Linear does in Python.
// Ref: torch.nn.functional.linear. LibTorch's C++ functional linear fuses the bias into the
// GEMM (addmm) for 2-D input only: on the [B,S,C] activations of attention and feed-forward
// layers it runs matmul and then a separate bias pass over the whole output. at::linear also
// takes the fused path for contiguous 3-D input, as diffusers' layers do.
// Thread-safety: pure function; any thread.
#pragma once

#include <torch/torch.h>

namespace diffusiond {

// x [..., in] -> [..., out] with `layer`'s weight [out, in] and bias [out] (if any).
inline torch::Tensor apply_linear(const torch::nn::Linear& layer, const torch::Tensor& x) {
  return at::linear(x, layer->weight, layer->bias);
}

}  // namespace diffusiond
