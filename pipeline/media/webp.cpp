#include "pipeline/media/webp.h"

#include <memory>

#include <webp/decode.h>
#include <webp/demux.h>
#include <webp/encode.h>
#include <webp/mux.h>

namespace diffusiond {

bool looks_like_webp(std::string_view b) {
  return b.size() >= 12 && b.substr(0, 4) == "RIFF" && b.substr(8, 4) == "WEBP";
}

std::string encode_webp(const RgbImage& image, int quality, std::string_view exif_tiff) {
  if (image.width <= 0 || image.height <= 0 || image.width > WEBP_MAX_DIMENSION ||
      image.height > WEBP_MAX_DIMENSION ||
      image.pixels.size() != static_cast<std::size_t>(image.width) * image.height * 3)
    throw WebpError("encode_webp: bad image size " + std::to_string(image.width) + "x" +
                    std::to_string(image.height));
  if (quality < 1 || quality > 100)
    throw WebpError("encode_webp: quality must be 1..100, got " + std::to_string(quality));
  uint8_t* encoded = nullptr;
  const std::size_t size = WebPEncodeRGB(image.pixels.data(), image.width, image.height,
                                         image.width * 3, static_cast<float>(quality), &encoded);
  std::unique_ptr<uint8_t, void (*)(void*)> owned(encoded, WebPFree);
  if (size == 0) throw WebpError("encode_webp: libwebp failed to encode");
  if (exif_tiff.empty()) return std::string(reinterpret_cast<const char*>(encoded), size);

  std::unique_ptr<WebPMux, void (*)(WebPMux*)> mux(WebPMuxNew(), WebPMuxDelete);
  if (!mux) throw WebpError("encode_webp: out of memory");
  const WebPData image_data{encoded, size};
  const WebPData exif_data{reinterpret_cast<const uint8_t*>(exif_tiff.data()), exif_tiff.size()};
  if (WebPMuxSetImage(mux.get(), &image_data, 1) != WEBP_MUX_OK ||
      WebPMuxSetChunk(mux.get(), "EXIF", &exif_data, 1) != WEBP_MUX_OK)
    throw WebpError("encode_webp: cannot add the EXIF chunk");
  WebPData assembled;
  WebPDataInit(&assembled);
  if (WebPMuxAssemble(mux.get(), &assembled) != WEBP_MUX_OK)
    throw WebpError("encode_webp: cannot assemble the file");
  std::string bytes(reinterpret_cast<const char*>(assembled.bytes), assembled.size);
  WebPDataClear(&assembled);
  return bytes;
}

RgbImage decode_webp(std::string_view bytes, std::string* exif_tiff) {
  if (!looks_like_webp(bytes)) throw WebpError("decode_webp: not a WebP (no RIFF/WEBP header)");
  const auto* data = reinterpret_cast<const uint8_t*>(bytes.data());
  int width = 0, height = 0;
  uint8_t* rgb = WebPDecodeRGB(data, bytes.size(), &width, &height);
  if (rgb == nullptr) throw WebpError("decode_webp: libwebp cannot decode it");
  std::unique_ptr<uint8_t, void (*)(void*)> owned(rgb, WebPFree);
  RgbImage image;
  image.width = width;
  image.height = height;
  image.pixels.assign(rgb, rgb + static_cast<std::size_t>(width) * height * 3);
  if (exif_tiff != nullptr) {
    exif_tiff->clear();
    const WebPData whole{data, bytes.size()};
    std::unique_ptr<WebPDemuxer, void (*)(WebPDemuxer*)> demux(WebPDemux(&whole), WebPDemuxDelete);
    WebPChunkIterator it;
    if (demux && WebPDemuxGetChunk(demux.get(), "EXIF", 1, &it)) {
      exif_tiff->assign(reinterpret_cast<const char*>(it.chunk.bytes), it.chunk.size);
      WebPDemuxReleaseChunkIterator(&it);
    }
  }
  return image;
}

}  // namespace diffusiond
