// JPEG encoding and decoding with libjpeg (Debian's libjpeg62-turbo), with an optional EXIF
// APP1 segment (pipeline/media/exif.h: the generation parameters as AUTOMATIC1111 writes them).
// Torch-free. Thread-safety: reentrant; any thread.
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

#include "pipeline/media/image.h"

namespace diffusiond {

class JpegError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Baseline 8-bit YCbCr JPEG (4:2:0 below quality 90, 4:4:4 from 90, as Pillow does), quality
// 1..100. `exif_tiff`, when given, is written as an APP1 "Exif\0\0" segment right after the JFIF
// header. Throws JpegError on a bad image or quality.
std::string encode_jpeg(const RgbImage& image, int quality, std::string_view exif_tiff = {});

// Decodes to 8-bit RGB; `exif_tiff` (optional) receives the first EXIF APP1 segment's TIFF bytes
// ("" when there is none). Throws JpegError with libjpeg's message.
RgbImage decode_jpeg(std::string_view bytes, std::string* exif_tiff = nullptr);

bool looks_like_jpeg(std::string_view bytes);

}  // namespace diffusiond
