// JPEG and WebP output: each file decodes again with libjpeg / libwebp to the right size and
// close pixels, and carries the generation parameters as an EXIF UserComment laid out as piexif
// writes it (big-endian TIFF, "UNICODE\0" + UTF-16BE), read back independently of our reader.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdlib>
#include <string>

#include "pipeline/media/exif.h"
#include "pipeline/media/image_formats.h"
#include "pipeline/media/jpeg.h"
#include "pipeline/media/png.h"
#include "pipeline/media/webp.h"

using namespace diffusiond;

namespace {

// A smooth image (lossy codecs keep it close): gradients per channel.
RgbImage smooth_image(int w, int h) {
  RgbImage img;
  img.width = w;
  img.height = h;
  img.pixels.resize(static_cast<std::size_t>(w) * h * 3);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      auto* p = &img.pixels[(static_cast<std::size_t>(y) * w + x) * 3];
      p[0] = static_cast<std::uint8_t>(x * 255 / (w - 1));
      p[1] = static_cast<std::uint8_t>(y * 255 / (h - 1));
      p[2] = static_cast<std::uint8_t>((x + y) * 127 / (w + h - 2) + 64);
    }
  return img;
}

double mean_abs_diff(const RgbImage& a, const RgbImage& b) {
  REQUIRE(a.pixels.size() == b.pixels.size());
  double sum = 0;
  for (std::size_t i = 0; i < a.pixels.size(); ++i)
    sum += std::abs(int(a.pixels[i]) - int(b.pixels[i]));
  return sum / static_cast<double>(a.pixels.size());
}

const std::string kParameters =
    "a cat on a mat, (masterpiece:1.2), \xe7\x8c\xab \xf0\x9f\x90\xb1\n"
    "Negative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 64x48";

// The UTF-16BE text after "UNICODE\0", decoded by hand (independent of exif_user_comment).
std::string utf16be_tail_as_utf8_ascii_only(const std::string& blob, std::size_t at,
                                            std::size_t n) {
  std::string out;
  for (std::size_t i = at; i + 1 < at + n; i += 2) {
    const int hi = static_cast<unsigned char>(blob[i]),
              lo = static_cast<unsigned char>(blob[i + 1]);
    out += hi == 0 && lo < 0x80 ? static_cast<char>(lo) : '?';
  }
  return out;
}

}  // namespace

TEST_CASE("EXIF UserComment is a big-endian TIFF with a UNICODE UTF-16BE comment",
          "[image_formats]") {
  const std::string tiff = exif_with_user_comment("Steps: 20, Seed: 1");
  REQUIRE(tiff.substr(0, 4) == std::string("MM\0*", 4));
  const auto pos = tiff.find(std::string("UNICODE\0", 8));
  REQUIRE(pos != std::string::npos);
  CHECK(utf16be_tail_as_utf8_ascii_only(tiff, pos + 8, tiff.size() - pos - 8) ==
        "Steps: 20, Seed: 1");
  CHECK(exif_user_comment(tiff) == "Steps: 20, Seed: 1");
  CHECK(exif_user_comment(std::string("Exif\0\0", 6) + tiff) == "Steps: 20, Seed: 1");
  CHECK(exif_user_comment(exif_with_user_comment(kParameters)) == kParameters);  // astral + CJK
  CHECK_THROWS_AS(exif_user_comment("not a tiff"), ExifError);
  CHECK_THROWS_AS(exif_with_user_comment("\xff\xfe bad"), ExifError);
}

TEST_CASE("JPEG decodes again with libjpeg and carries the parameters as EXIF", "[image_formats]") {
  const RgbImage img = smooth_image(64, 48);
  for (int quality : {50, 95}) {
    INFO("quality " << quality);
    const std::string jpeg = encode_jpeg(img, quality, exif_with_user_comment(kParameters));
    CHECK(looks_like_jpeg(jpeg));
    CHECK(jpeg.find(std::string("Exif\0\0MM\0*", 10)) != std::string::npos);  // the APP1 segment
    std::string exif;
    const RgbImage back = decode_jpeg(jpeg, &exif);
    CHECK(back.width == 64);
    CHECK(back.height == 48);
    CHECK(mean_abs_diff(img, back) < (quality >= 90 ? 2.0 : 5.0));
    CHECK(exif_user_comment(exif) == kParameters);
    const auto text = image_text_metadata(jpeg);
    REQUIRE(text.size() == 1);
    CHECK(text[0].first == "parameters");
    CHECK(text[0].second == kParameters);
  }
  std::string none = "x";
  decode_jpeg(encode_jpeg(img, 80), &none);
  CHECK(none.empty());
  CHECK_THROWS_AS(encode_jpeg(img, 0), JpegError);
  CHECK_THROWS_AS(decode_jpeg("\xff\xd8\xff garbage"), JpegError);
}

TEST_CASE("WebP decodes again with libwebp and carries the parameters as EXIF", "[image_formats]") {
  const RgbImage img = smooth_image(64, 48);
  const std::string webp = encode_webp(img, 90, exif_with_user_comment(kParameters));
  CHECK(looks_like_webp(webp));
  CHECK(webp.find("VP8X") != std::string::npos);  // the extended format carries chunks
  CHECK(webp.find("EXIF") != std::string::npos);
  std::string exif;
  const RgbImage back = decode_webp(webp, &exif);
  CHECK(back.width == 64);
  CHECK(back.height == 48);
  CHECK(mean_abs_diff(img, back) < 4.0);
  CHECK(exif_user_comment(exif) == kParameters);
  CHECK(image_text_metadata(webp).at(0).second == kParameters);
  const std::string plain = encode_webp(img, 75);
  CHECK(plain.find("EXIF") == std::string::npos);
  CHECK_THROWS_AS(decode_webp("RIFF\0\0\0\0WEBPjunk"), WebpError);
}

TEST_CASE("a daemon PNG transcodes to JPEG and WebP with its parameters text", "[image_formats]") {
  PngGenerationInfo info;
  info.prompt = "a lighthouse";
  info.steps = 4;
  info.sampler = "Euler a";
  info.seed = 7;
  info.width = 64;
  info.height = 48;
  info.model_name = "tiny";
  const RgbImage img = smooth_image(64, 48);
  const std::string png = encode_png_with_metadata(img, info);
  const std::string parameters = a1111_parameters(info);
  CHECK(sniff_image_format(png) == ImageFileFormat::png);
  CHECK(transcode_png(png, ImageFileFormat::png, 90) == png);
  for (auto format : {ImageFileFormat::jpeg, ImageFileFormat::webp}) {
    const std::string out = transcode_png(png, format, 90);
    CHECK(sniff_image_format(out) == format);
    const auto text = image_text_metadata(out);
    REQUIRE(text.size() == 1);
    CHECK(text[0].second == parameters);
  }
  const auto png_text = image_text_metadata(png);
  REQUIRE(!png_text.empty());
  CHECK(png_text[0].first == "parameters");
  CHECK_THROWS_AS(image_text_metadata("GIF89a..."), std::invalid_argument);
}
