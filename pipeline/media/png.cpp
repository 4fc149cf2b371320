#include "pipeline/media/png.h"

#include <algorithm>

#include <charconv>
#include <cstdlib>
#include <cstring>

#include <zlib.h>

// stb_image_write: static (private to this file), its deflate routed to zlib's compress2 at the
// level of the calling thread (never stb's global stbi_write_png_compression_level).
namespace {
thread_local int tls_png_level = 1;
unsigned char* zlib_compress_for_stb(unsigned char* data, int data_len, int* out_len,
                                     int /*stb_quality*/) {
  uLongf capacity = compressBound(static_cast<uLong>(data_len));
  auto* out = static_cast<unsigned char*>(std::malloc(capacity));  // stb frees it with free()
  if (!out) return nullptr;
  if (compress2(out, &capacity, data, static_cast<uLong>(data_len), tls_png_level) != Z_OK) {
    std::free(out);
    return nullptr;
  }
  *out_len = static_cast<int>(capacity);
  return out;
}
}  // namespace

#define STBIW_ZLIB_COMPRESS zlib_compress_for_stb
#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STBI_WRITE_NO_STDIO
#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#define STBI_NO_STDIO
#define STBI_ONLY_PNG
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#include <stb_image.h>
#include <stb_image_write.h>
#pragma GCC diagnostic pop

namespace diffusiond {
namespace {

constexpr unsigned char kSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

void put_u32(std::string& out, std::uint32_t v) {
  out.push_back(static_cast<char>(v >> 24));
  out.push_back(static_cast<char>(v >> 16));
  out.push_back(static_cast<char>(v >> 8));
  out.push_back(static_cast<char>(v));
}

std::uint32_t get_u32(std::string_view s, std::size_t at) {
  auto b = [&](std::size_t i) {
    return static_cast<std::uint32_t>(static_cast<unsigned char>(s[at + i]));
  };
  return (b(0) << 24) | (b(1) << 16) | (b(2) << 8) | b(3);
}

std::uint32_t chunk_crc(std::string_view type, std::string_view data) {
  uLong crc = crc32(0L, Z_NULL, 0);
  crc = crc32(crc, reinterpret_cast<const Bytef*>(type.data()), 4);
  crc = crc32(crc, reinterpret_cast<const Bytef*>(data.data()), static_cast<uInt>(data.size()));
  return static_cast<std::uint32_t>(crc);
}

void append_chunk(std::string& out, std::string_view type, std::string_view data) {
  put_u32(out, static_cast<std::uint32_t>(data.size()));
  out.append(type);
  out.append(data);
  put_u32(out, chunk_crc(type, data));
}

void check_keyword(const std::string& keyword) {
  bool ok = !keyword.empty() && keyword.size() <= 79 && keyword.front() != ' ' &&
            keyword.back() != ' ' && keyword.find("  ") == std::string::npos;
  for (unsigned char c : keyword) ok = ok && ((c >= 32 && c <= 126) || c >= 161);
  if (!ok) throw PngError("PNG text keyword '" + keyword + "' is invalid (1-79 printable Latin-1)");
}

// UTF-8 -> Latin-1; false when a code point is above U+00FF (or the UTF-8 is malformed).
bool utf8_to_latin1(const std::string& in, std::string& out) {
  out.clear();
  for (std::size_t i = 0; i < in.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(in[i]);
    if (c < 0x80) {
      out.push_back(static_cast<char>(c));
    } else if ((c == 0xC2 || c == 0xC3) && i + 1 < in.size() &&
               (static_cast<unsigned char>(in[i + 1]) & 0xC0) == 0x80) {
      out.push_back(
          static_cast<char>(((c & 0x03) << 6) | (static_cast<unsigned char>(in[i + 1]) & 0x3F)));
      ++i;
    } else {
      return false;
    }
  }
  return true;
}

std::string latin1_to_utf8(std::string_view in) {
  std::string out;
  for (unsigned char c : in) {
    if (c < 0x80) {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back(static_cast<char>(0xC0 | (c >> 6)));
      out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
    }
  }
  return out;
}

std::string itxt_payload(const std::string& keyword, const std::string& text) {
  std::string data = keyword;
  data.push_back('\0');  // end of keyword
  data.push_back('\0');  // compression flag: uncompressed
  data.push_back('\0');  // compression method
  data.push_back('\0');  // empty language tag
  data.push_back('\0');  // empty translated keyword
  data += text;
  return data;
}

std::string inflate_all(std::string_view compressed, const std::string& what) {
  z_stream zs{};
  if (inflateInit(&zs) != Z_OK) throw PngError(what + ": zlib init failed");
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(compressed.data()));
  zs.avail_in = static_cast<uInt>(compressed.size());
  std::string out;
  char buffer[16384];
  int rc = Z_OK;
  while (rc == Z_OK) {
    zs.next_out = reinterpret_cast<Bytef*>(buffer);
    zs.avail_out = sizeof buffer;
    rc = inflate(&zs, Z_NO_FLUSH);
    out.append(buffer, sizeof buffer - zs.avail_out);
    if (out.size() > (64u << 20)) rc = Z_MEM_ERROR;
  }
  inflateEnd(&zs);
  if (rc != Z_STREAM_END) throw PngError(what + ": corrupt compressed text");
  return out;
}

std::string format_float(double v) {
  // Shortest round-trip form with a ".0" for whole numbers, as Python's str(float) prints.
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, v);
  std::string s(buf, res.ptr);
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
  return s;
}

}  // namespace

std::string encode_png(const RgbImage& image, const PngTextList& text_chunks,
                       const PngTextList& itxt_chunks, int compression_level) {
  if (image.width <= 0 || image.height <= 0 ||
      image.pixels.size() != static_cast<std::size_t>(image.width) * image.height * 3) {
    throw PngError("encode_png: image is " + std::to_string(image.width) + "x" +
                   std::to_string(image.height) + " with " + std::to_string(image.pixels.size()) +
                   " bytes (expected width*height*3 > 0)");
  }
  if (compression_level < 0 || compression_level > 9) {
    throw PngError("encode_png: compression level " + std::to_string(compression_level) +
                   " is outside 0..9");
  }
  for (const auto& chunk : text_chunks) check_keyword(chunk.first);
  for (const auto& chunk : itxt_chunks) check_keyword(chunk.first);

  tls_png_level = compression_level;
  int length = 0;
  unsigned char* raw = stbi_write_png_to_mem(image.pixels.data(), image.width * 3, image.width,
                                             image.height, 3, &length);
  if (!raw) throw PngError("encode_png: the PNG encoder failed (out of memory?)");
  std::string base(reinterpret_cast<const char*>(raw), static_cast<std::size_t>(length));
  STBIW_FREE(raw);

  // Signature (8) + IHDR (4 length + 4 type + 13 data + 4 CRC) = 33 bytes, then our chunks.
  constexpr std::size_t kAfterIhdr = 33;
  if (base.size() < kAfterIhdr || base.compare(12, 4, "IHDR") != 0) {
    throw PngError("encode_png: unexpected encoder output (no IHDR)");
  }
  std::string out = base.substr(0, kAfterIhdr);
  std::string latin1;
  for (const auto& [keyword, text] : text_chunks) {
    if (utf8_to_latin1(text, latin1)) {
      append_chunk(out, "tEXt", keyword + std::string(1, '\0') + latin1);
    } else {
      append_chunk(out, "iTXt", itxt_payload(keyword, text));
    }
  }
  for (const auto& [keyword, text] : itxt_chunks) {
    append_chunk(out, "iTXt", itxt_payload(keyword, text));
  }
  out.append(base, kAfterIhdr, std::string::npos);
  return out;
}

std::vector<PngTextChunk> read_png_text_chunks(std::string_view png) {
  if (png.size() < 8 || std::memcmp(png.data(), kSignature, 8) != 0) {
    throw PngError("PNG: bad signature");
  }
  std::vector<PngTextChunk> chunks;
  std::size_t at = 8;
  bool seen_iend = false;
  while (at < png.size() && !seen_iend) {
    if (png.size() - at < 12)
      throw PngError("PNG: truncated chunk header at byte " + std::to_string(at));
    const std::uint32_t length = get_u32(png, at);
    const std::string type(png.substr(at + 4, 4));
    if (length > png.size() - at - 12) {
      throw PngError("PNG: chunk " + type + " at byte " + std::to_string(at) +
                     " runs past the end of the file");
    }
    const std::string_view data = png.substr(at + 8, length);
    if (get_u32(png, at + 8 + length) != chunk_crc(type, data)) {
      throw PngError("PNG: CRC mismatch in chunk " + type + " at byte " + std::to_string(at));
    }
    if (type == "tEXt" || type == "zTXt" || type == "iTXt") {
      const std::size_t nul = data.find('\0');
      if (nul == std::string_view::npos) throw PngError("PNG: " + type + " chunk without keyword");
      PngTextChunk chunk{type, std::string(data.substr(0, nul)), {}};
      std::string_view rest = data.substr(nul + 1);
      if (type == "tEXt") {
        chunk.text = latin1_to_utf8(rest);
      } else if (type == "zTXt") {
        if (rest.empty()) throw PngError("PNG: zTXt '" + chunk.keyword + "' is truncated");
        chunk.text =
            latin1_to_utf8(inflate_all(rest.substr(1), "PNG: zTXt '" + chunk.keyword + "'"));
      } else {
        if (rest.size() < 2) throw PngError("PNG: iTXt '" + chunk.keyword + "' is truncated");
        const bool compressed = rest[0] != 0;
        rest.remove_prefix(2);
        for (int field = 0; field < 2; ++field) {  // language tag, translated keyword
          const std::size_t end = rest.find('\0');
          if (end == std::string_view::npos) {
            throw PngError("PNG: iTXt '" + chunk.keyword + "' is truncated");
          }
          rest.remove_prefix(end + 1);
        }
        chunk.text =
            compressed ? inflate_all(rest, "PNG: iTXt '" + chunk.keyword + "'") : std::string(rest);
      }
      chunks.push_back(std::move(chunk));
    }
    seen_iend = type == "IEND";
    at += 12 + length;
  }
  if (!seen_iend) throw PngError("PNG: no IEND chunk");
  return chunks;
}

RgbImage decode_png(std::string_view png_bytes) {
  int w = 0, h = 0, channels = 0;
  stbi_uc* pixels = stbi_load_from_memory(reinterpret_cast<const stbi_uc*>(png_bytes.data()),
                                          static_cast<int>(png_bytes.size()), &w, &h, &channels, 3);
  if (!pixels) throw PngError(std::string("PNG decode failed: ") + stbi_failure_reason());
  RgbImage image;
  image.width = w;
  image.height = h;
  image.pixels.assign(pixels, pixels + static_cast<std::size_t>(w) * h * 3);
  stbi_image_free(pixels);
  return image;
}

std::string a1111_parameters(const PngGenerationInfo& info) {
  std::string text = info.prompt;
  if (info.negative_prompt && !info.negative_prompt->empty())
    text += "\nNegative prompt: " + *info.negative_prompt;
  text += "\nSteps: " + std::to_string(info.steps);
  text += ", Sampler: " + info.sampler;
  text += ", CFG scale: " + format_float(info.guidance_scale);
  text += ", Seed: " + std::to_string(info.seed);
  text += ", Size: " + std::to_string(info.width) + "x" + std::to_string(info.height);
  auto w_x_h = [](const std::array<int, 2>& hw) {
    return std::to_string(hw[1]) + "x" + std::to_string(hw[0]);
  };
  auto top_left = [](const std::array<int, 2>& tl) {
    return std::to_string(tl[0]) + "," + std::to_string(tl[1]);
  };
  if (info.original_size) text += ", Original size: " + w_x_h(*info.original_size);
  if (info.crops_coords_top_left)
    text += ", Crop top left: " + top_left(*info.crops_coords_top_left);
  if (info.target_size) text += ", Target size: " + w_x_h(*info.target_size);
  if (info.negative_original_size)
    text += ", Negative original size: " + w_x_h(*info.negative_original_size);
  if (info.negative_crops_coords_top_left)
    text += ", Negative crop top left: " + top_left(*info.negative_crops_coords_top_left);
  if (info.negative_target_size)
    text += ", Negative target size: " + w_x_h(*info.negative_target_size);
  if (!info.model_hash.empty()) text += ", Model hash: " + info.model_hash;
  if (!info.model_name.empty()) text += ", Model: " + info.model_name;
  std::string lora_hashes;  // A1111 extra_networks_lora.py: "name: shorthash, ..." quoted
  for (const auto& lora : info.loras) {
    if (lora.short_hash.empty()) continue;
    std::string name = lora.name;  // A1111 drops ':' and ',' from the name here
    name.erase(
        std::remove_if(name.begin(), name.end(), [](char c) { return c == ':' || c == ','; }),
        name.end());
    lora_hashes += (lora_hashes.empty() ? "" : ", ") + name + ": " + lora.short_hash;
  }
  if (!lora_hashes.empty()) text += ", Lora hashes: \"" + lora_hashes + "\"";
  text += ", Version: diffusiond " DIFFUSIOND_VERSION;
  return text;
}

nlohmann::json diffusiond_metadata(const PngGenerationInfo& info) {
  nlohmann::json model = {{"name", info.model_name}};
  model["hash"] =
      info.model_hash.empty() ? nlohmann::json(nullptr) : nlohmann::json(info.model_hash);
  model["sha256"] =
      info.model_sha256.empty() ? nlohmann::json(nullptr) : nlohmann::json(info.model_sha256);
  nlohmann::json meta = {
      {"request", info.request},
      {"prompt", info.prompt},
      {"negative_prompt",
       info.negative_prompt ? nlohmann::json(*info.negative_prompt) : nlohmann::json(nullptr)},
      {"model", model},
      {"scheduler", info.scheduler},
      {"sampler", info.sampler},
      {"seed", info.seed},
      {"steps", info.steps},
      {"guidance_scale", info.guidance_scale},
      {"width", info.width},
      {"height", info.height},
      {"device", info.device},
      {"dtype", info.dtype},
      {"image_index", info.image_index},
      {"version", DIFFUSIOND_VERSION}};
  if (info.original_size) meta["original_size"] = *info.original_size;
  if (info.crops_coords_top_left) meta["crops_coords_top_left"] = *info.crops_coords_top_left;
  if (info.target_size) meta["target_size"] = *info.target_size;
  if (info.negative_original_size) meta["negative_original_size"] = *info.negative_original_size;
  if (info.negative_crops_coords_top_left)
    meta["negative_crops_coords_top_left"] = *info.negative_crops_coords_top_left;
  if (info.negative_target_size) meta["negative_target_size"] = *info.negative_target_size;
  if (!info.loras.empty()) {
    auto loras = nlohmann::json::array();
    for (const auto& lora : info.loras) {
      auto hash = [](const std::string& h) {
        return h.empty() ? nlohmann::json(nullptr) : nlohmann::json(h);
      };
      loras.push_back({{"name", lora.name},
                       {"weight", lora.weight},
                       {"short_hash", hash(lora.short_hash)},
                       {"sha256", hash(lora.sha256)}});
    }
    meta["loras"] = loras;
  }
  return meta;
}

std::string encode_png_with_metadata(const RgbImage& image, const PngGenerationInfo& info,
                                     int compression_level) {
  return encode_png(image, {{"parameters", a1111_parameters(info)}},
                    {{"diffusiond", diffusiond_metadata(info).dump(
                                        -1, ' ', false, nlohmann::json::error_handler_t::replace)}},
                    compression_level);
}

}  // namespace diffusiond
