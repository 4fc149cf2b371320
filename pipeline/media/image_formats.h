// The three output formats side by side: PNG (the files the daemon writes), JPEG and WebP made
// from them on request, each carrying the generation parameters (PNG: the "parameters" text
// chunk; JPEG/WebP: the EXIF UserComment, as AUTOMATIC1111 writes it). Torch-free.
// Thread-safety: pure functions; any thread.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "pipeline/media/png.h"

namespace diffusiond {

enum class ImageFileFormat { png, jpeg, webp };

std::optional<ImageFileFormat> sniff_image_format(std::string_view bytes);

// `png` (as encode_png_with_metadata writes it) in `format`: png as it is; jpeg and webp decoded
// and encoded again at `quality` (1..100) with the PNG's "parameters" text as EXIF UserComment.
// Throws PngError/JpegError/WebpError.
std::string transcode_png(std::string_view png, ImageFileFormat format, int quality);

// The text metadata of a PNG (every text chunk, in file order), JPEG or WebP ("parameters" = the
// EXIF UserComment, when there is one). Throws std::invalid_argument when the bytes are none of
// the three formats, PngError/JpegError/WebpError/ExifError when the file is malformed.
PngTextList image_text_metadata(std::string_view bytes);

}  // namespace diffusiond
