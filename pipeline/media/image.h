// A decoded 8-bit RGB image on the host: what the pipeline returns and the PNG encoder takes.
// Torch-free so that the PNG code, the daemon and HTTP code can use it without LibTorch.
// Value type; any thread.
#pragma once

#include <cstdint>
#include <vector>

namespace diffusiond {

struct RgbImage {
  int width = 0;
  int height = 0;
  std::vector<std::uint8_t> pixels;  // HWC, RGB, row-major: width * height * 3 bytes
};

}  // namespace diffusiond
