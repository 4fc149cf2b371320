#include "pipeline/media/image_formats.h"

#include <stdexcept>

#include "pipeline/media/exif.h"
#include "pipeline/media/jpeg.h"
#include "pipeline/media/webp.h"

namespace diffusiond {
namespace {

constexpr std::string_view kPngSignature{"\x89PNG\r\n\x1a\n", 8};

void add_exif_comment(PngTextList& out, const std::string& exif) {
  if (exif.empty()) return;
  if (auto comment = exif_user_comment(exif)) out.emplace_back("parameters", *comment);
}

}  // namespace

std::optional<ImageFileFormat> sniff_image_format(std::string_view b) {
  if (b.substr(0, kPngSignature.size()) == kPngSignature) return ImageFileFormat::png;
  if (looks_like_jpeg(b)) return ImageFileFormat::jpeg;
  if (looks_like_webp(b)) return ImageFileFormat::webp;
  return std::nullopt;
}

std::string transcode_png(std::string_view png, ImageFileFormat format, int quality) {
  if (format == ImageFileFormat::png) return std::string(png);
  std::string parameters;
  for (const auto& chunk : read_png_text_chunks(png))
    if (chunk.keyword == "parameters") parameters = chunk.text;
  const RgbImage image = decode_png(png);
  const std::string exif = parameters.empty() ? std::string() : exif_with_user_comment(parameters);
  return format == ImageFileFormat::jpeg ? encode_jpeg(image, quality, exif)
                                         : encode_webp(image, quality, exif);
}

PngTextList image_text_metadata(std::string_view bytes) {
  const auto format = sniff_image_format(bytes);
  if (!format) throw std::invalid_argument("the data is not a PNG, JPEG or WebP image");
  PngTextList out;
  std::string exif;
  switch (*format) {
    case ImageFileFormat::png:
      for (auto& chunk : read_png_text_chunks(bytes)) out.emplace_back(chunk.keyword, chunk.text);
      break;
    case ImageFileFormat::jpeg:
      decode_jpeg(bytes, &exif);
      add_exif_comment(out, exif);
      break;
    case ImageFileFormat::webp:
      decode_webp(bytes, &exif);
      add_exif_comment(out, exif);
      break;
  }
  return out;
}

}  // namespace diffusiond
