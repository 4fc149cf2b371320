// Fuzz target: the PNG chunk reader (pipeline/media/png.h read_png_text_chunks: signature,
// chunk lengths, CRCs, tEXt/zTXt/iTXt with inflate) on arbitrary bytes, and the writer's text
// round trip: the input split into keyword/text pairs is encoded (encode_png) and must read
// back unchanged. PngError is an acceptable answer; any other exception or a crash is a bug.
//
// Input layout: bytes starting with the PNG signature are read as a file. Otherwise the input is
// split at 0xFF bytes into keyword, text, keyword, text, ...: an even-numbered pair goes to
// text_chunks (tEXt or iTXt), an odd one to itxt_chunks.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

#include "pipeline/media/png.h"

namespace {

void read_file(std::string_view bytes) {
  try {
    for (const auto& chunk : diffusiond::read_png_text_chunks(bytes)) {
      if (chunk.type != "tEXt" && chunk.type != "zTXt" && chunk.type != "iTXt") std::abort();
    }
  } catch (const diffusiond::PngError&) {
  }
}

void round_trip(std::string_view bytes) {
  std::vector<std::string> parts;
  std::size_t from = 0;
  while (parts.size() < 16) {
    const std::size_t at = bytes.find('\xff', from);
    parts.emplace_back(bytes.substr(from, at == std::string_view::npos ? at : at - from));
    if (at == std::string_view::npos) break;
    from = at + 1;
  }
  if (parts.size() % 2) parts.emplace_back();
  diffusiond::PngTextList text, itxt;
  for (std::size_t i = 0; i + 1 < parts.size(); i += 2) {
    ((i / 2) % 2 ? itxt : text).emplace_back(parts[i], parts[i + 1]);
  }
  diffusiond::RgbImage image;
  image.width = 2;
  image.height = 1;
  image.pixels = {1, 2, 3, 4, 5, 6};
  std::string png;
  try {
    png = diffusiond::encode_png(image, text, itxt);
  } catch (const diffusiond::PngError&) {
    return;  // a keyword the format does not allow
  }
  const auto chunks = diffusiond::read_png_text_chunks(png);  // must not throw
  if (chunks.size() != text.size() + itxt.size()) std::abort();
  std::size_t k = 0;
  for (const auto* list : {&text, &itxt}) {
    for (const auto& [keyword, value] : *list) {
      const auto& chunk = chunks[k++];
      if (chunk.keyword != keyword) std::abort();
      // tEXt holds Latin-1: the reader gives it back as UTF-8, equal to what was written when
      // that was valid UTF-8 (encode_png only writes tEXt for text it could convert).
      if (chunk.text != value) std::abort();
    }
  }
  const auto decoded = diffusiond::decode_png(png);
  if (decoded.width != 2 || decoded.height != 1 || decoded.pixels != image.pixels) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  static const char kSignature[8] = {'\x89', 'P', 'N', 'G', '\r', '\n', '\x1a', '\n'};
  if (size >= 8 && std::memcmp(data, kSignature, 8) == 0) {
    read_file(bytes);
  } else {
    round_trip(bytes);
  }
  return 0;
}
