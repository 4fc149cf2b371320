// WebP (lossy) encoding and decoding with libwebp, with an optional EXIF chunk (the generation
// parameters as AUTOMATIC1111 writes them, pipeline/media/exif.h) added through libwebpmux.
// Torch-free. Thread-safety: reentrant; any thread.
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

#include "pipeline/media/image.h"

namespace diffusiond {

class WebpError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Lossy WebP at `quality` 1..100 (libwebp's quality factor). `exif_tiff`, when given, becomes the
// file's EXIF chunk (extended format, VP8X). Throws WebpError.
std::string encode_webp(const RgbImage& image, int quality, std::string_view exif_tiff = {});

// Decodes to 8-bit RGB; `exif_tiff` (optional) receives the EXIF chunk ("" when none).
RgbImage decode_webp(std::string_view bytes, std::string* exif_tiff = nullptr);

bool looks_like_webp(std::string_view bytes);

}  // namespace diffusiond
