#include "pipeline/activation.h"

#include <stdexcept>

namespace diffusiond {

Activation parse_activation(const std::string& name) {
  if (name == "silu" || name == "swish") return Activation::kSiLU;
  if (name == "mish") return Activation::kMish;
  if (name == "gelu") return Activation::kGELU;
  if (name == "relu") return Activation::kReLU;
  throw std::invalid_argument("unknown activation '" + name +
                              "' (expected silu, swish, mish, gelu or relu)");
}

torch::Tensor apply_activation(Activation act, const torch::Tensor& x) {
  switch (act) {
    case Activation::kSiLU:
      return torch::silu(x);
    case Activation::kMish:
      return torch::mish(x);
    case Activation::kGELU:
      return torch::gelu(x);  // exact (erf) GELU, as nn.GELU()
    case Activation::kReLU:
      return torch::relu(x);
  }
  return x;
}

torch::Tensor& apply_activation_(Activation act, torch::Tensor& x) {
  switch (act) {
    case Activation::kSiLU:
      return torch::silu_(x);
    case Activation::kMish:
      return torch::mish_(x);
    case Activation::kGELU:
      x = torch::gelu(x);  // no in-place exact GELU on every LibTorch this builds against
      return x;
    case Activation::kReLU:
      return torch::relu_(x);
  }
  return x;
}

}  // namespace diffusiond
