// How the golden tests compare with diffusers' references: the worst per-pixel difference of two
// images (the 1/255 rule), the relative L2 error of a tensor, and reading a golden PNG.
// Header-only (Catch2 and LibTorch); free functions, any thread the test runs on.
#pragma once

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <torch/torch.h>

#include "pipeline/media/png.h"

namespace diffusiond::testing {

inline int max_pixel_difference(const RgbImage& a, const RgbImage& b) {
  REQUIRE(a.width == b.width);
  REQUIRE(a.height == b.height);
  REQUIRE(a.pixels.size() == b.pixels.size());
  int worst = 0;
  for (std::size_t i = 0; i < a.pixels.size(); ++i)
    worst = std::max(worst, std::abs(int(a.pixels[i]) - int(b.pixels[i])));
  return worst;
}

// ||actual - expected|| / ||expected||, in float64.
inline double relative_l2(const torch::Tensor& actual, const torch::Tensor& expected) {
  auto a = actual.to(torch::kFloat64), e = expected.to(torch::kFloat64);
  return ((a - e).norm() / e.norm()).item<double>();
}

inline RgbImage read_png(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in.good());
  std::stringstream ss;
  ss << in.rdbuf();
  return decode_png(ss.str());
}

}  // namespace diffusiond::testing
