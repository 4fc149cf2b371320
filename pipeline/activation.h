// Activation functions named as in diffusers' config files ("silu", "swish", "mish", "gelu",
// "relu"). Ref: diffusers v0.27.2 models/activations.py (get_activation).
// Thread-safety: pure functions.
#pragma once

#include <string>

#include <torch/torch.h>

namespace diffusiond {

enum class Activation { kSiLU, kMish, kGELU, kReLU };

// Throws std::invalid_argument naming the unknown name.
Activation parse_activation(const std::string& name);

torch::Tensor apply_activation(Activation act, const torch::Tensor& x);

// In place, for a fresh temporary nobody else holds (a norm's or a conv's output): the same
// values as apply_activation without allocating a second tensor of the same size. Returns x.
torch::Tensor& apply_activation_(Activation act, torch::Tensor& x);

}  // namespace diffusiond
