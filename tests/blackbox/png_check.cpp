#include "png_check.h"

#include <zlib.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>

#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_PNG
#include <stb_image.h>

namespace diffusiond::testing {

DecodedImage decode_png(const std::string& bytes) {
  DecodedImage img;
  unsigned char* data = stbi_load_from_memory(reinterpret_cast<const stbi_uc*>(bytes.data()),
                                              static_cast<int>(bytes.size()), &img.width,
                                              &img.height, &img.channels, 3);
  if (data == nullptr) {
    throw std::runtime_error(std::string("not a valid PNG: ") + stbi_failure_reason());
  }
  img.pixels.assign(data, data + static_cast<std::size_t>(img.width) * img.height * 3);
  stbi_image_free(data);
  // stb_image tolerates some truncation of the last IDAT data; the chunk walk does not.
  read_png_chunks(bytes);
  return img;
}

namespace {
std::uint32_t be32(const std::string& s, std::size_t at) {
  return (std::uint32_t(std::uint8_t(s[at])) << 24) |
         (std::uint32_t(std::uint8_t(s[at + 1])) << 16) |
         (std::uint32_t(std::uint8_t(s[at + 2])) << 8) | std::uint32_t(std::uint8_t(s[at + 3]));
}
}  // namespace

PngChunks read_png_chunks(const std::string& bytes) {
  static const std::string signature("\x89PNG\r\n\x1a\n", 8);
  if (bytes.compare(0, 8, signature) != 0) throw std::runtime_error("bad PNG signature");
  PngChunks out;
  std::size_t pos = 8;
  bool iend = false;
  while (pos < bytes.size()) {
    if (pos + 12 > bytes.size()) throw std::runtime_error("truncated chunk header");
    const std::uint32_t length = be32(bytes, pos);
    const std::string type = bytes.substr(pos + 4, 4);
    if (pos + 12 + std::size_t(length) > bytes.size()) {
      throw std::runtime_error("chunk " + type + " truncated");
    }
    const std::string data = bytes.substr(pos + 8, length);
    uLong crc = crc32(0L, Z_NULL, 0);
    crc = crc32(crc, reinterpret_cast<const Bytef*>(bytes.data() + pos + 4), length + 4);
    if (crc != be32(bytes, pos + 8 + length)) throw std::runtime_error("CRC mismatch in " + type);
    out.types.push_back(type);
    if (type == "tEXt") {
      const std::size_t nul = data.find('\0');
      out.text[data.substr(0, nul)] = data.substr(nul + 1);
      out.text_types[data.substr(0, nul)] = type;
    } else if (type == "iTXt") {
      // keyword \0 compression-flag compression-method language \0 translated \0 text
      const std::size_t k = data.find('\0');
      const bool compressed = data[k + 1] != 0;
      const std::size_t lang_end = data.find('\0', k + 3);
      const std::size_t trans_end = data.find('\0', lang_end + 1);
      if (!compressed) out.text[data.substr(0, k)] = data.substr(trans_end + 1);
      out.text_types[data.substr(0, k)] = type;
    }
    pos += 12 + length;
    if (type == "IEND") {
      iend = true;
      break;
    }
  }
  if (!iend) throw std::runtime_error("no IEND chunk (truncated PNG)");
  return out;
}

int max_abs_diff(const DecodedImage& a, const DecodedImage& b) {
  if (a.width != b.width || a.height != b.height) return 256;
  int worst = 0;
  for (std::size_t i = 0; i < a.pixels.size(); ++i) {
    worst = std::max(worst, std::abs(int(a.pixels[i]) - int(b.pixels[i])));
  }
  return worst;
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

}  // namespace diffusiond::testing
