// The cheap latent preview: A1111's cheap_approximation (rgb = sum_l latent[l] * coefs[l][r])
// then (x + 1) / 2 clamped, * 255, rounded — checked against values computed by hand here.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>

#include "pipeline/latent_preview.h"

using namespace diffusiond;

TEST_CASE("cheap latent preview maps the 4 latent channels to RGB as A1111 does", "[preview]") {
  // Two pixels (h = 1, w = 2): a unit vector on channel 0, and channel 3 at -1.
  torch::Tensor latents = torch::zeros({1, 4, 1, 2});
  latents[0][0][0][0] = 1.0;
  latents[0][3][0][1] = -1.0;
  auto expect = [](double v) {
    return static_cast<int>(std::nearbyint(std::clamp((v + 1) / 2, 0.0, 1.0) * 255));
  };
  const RgbImage sd = cheap_latent_preview(latents, false);
  REQUIRE(sd.width == 2);
  REQUIRE(sd.height == 1);
  CHECK(sd.pixels[0] == expect(0.298));  // channel 0 row of the SD 1.x coefficients
  CHECK(sd.pixels[1] == expect(0.207));
  CHECK(sd.pixels[2] == expect(0.208));
  CHECK(sd.pixels[3] == expect(0.184));  // -1 * row 3 (-0.184, -0.271, -0.473)
  CHECK(sd.pixels[4] == expect(0.271));
  CHECK(sd.pixels[5] == expect(0.473));
  const RgbImage xl = cheap_latent_preview(latents[0].to(torch::kFloat16), true);
  CHECK(xl.pixels[0] == expect(0.3448));  // SDXL's own coefficients
  CHECK(xl.pixels[2] == expect(0.4395));
  CHECK(xl.pixels[5] == expect(0.2088));
  CHECK_THROWS_AS(cheap_latent_preview(torch::zeros({3, 2, 2}), false), std::invalid_argument);
}
