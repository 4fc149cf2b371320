// Shared helpers of the UNet/VAE tests.
#pragma once

#include <filesystem>
#include <string>

#include <torch/torch.h>

namespace diffusiond::test {

inline std::filesystem::path tiny_sd1() {
  return std::filesystem::path(DIFFUSIOND_FIXTURES) / "tiny-sd1";
}

// ||actual - expected|| / ||expected|| in float64.
inline double relative_l2(const torch::Tensor& actual, const torch::Tensor& expected) {
  auto a = actual.to(torch::kFloat64).cpu();
  auto e = expected.to(torch::kFloat64).cpu();
  return (a - e).norm().item<double>() / e.norm().item<double>();
}

}  // namespace diffusiond::test
