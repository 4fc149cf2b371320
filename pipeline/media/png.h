// PNG encoding with metadata chunks (AUTOMATIC1111 "parameters" and a diffusiond JSON chunk),
// plus the reading helpers tests and tools need. Torch-free.
// Ref: PNG spec (ISO/IEC 15948) chunks IHDR/tEXt/iTXt; stb_image_write's PNG writer with its
// deflate routed to zlib; AUTOMATIC1111's infotext format (modules/processing.py).
// Thread-safety: every function is reentrant and may be called from any thread at once.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "pipeline/media/image.h"

namespace diffusiond {

class PngError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

using PngTextList = std::vector<std::pair<std::string, std::string>>;  // keyword, UTF-8 text

// Encodes `image` as an 8-bit RGB PNG. zlib `compression_level` 0..9 (1 = fast, the default).
// text_chunks become tEXt when the text is representable in Latin-1 (converted to it), else iTXt
// (as Pillow's PngInfo.add_text does); itxt_chunks are always iTXt (uncompressed UTF-8).
// Metadata chunks are placed right after IHDR. Keywords must be 1..79 Latin-1 printable bytes.
// Throws PngError on a bad image size, a bad keyword or an encoder failure.
std::string encode_png(const RgbImage& image, const PngTextList& text_chunks = {},
                       const PngTextList& itxt_chunks = {}, int compression_level = 1);

struct PngTextChunk {
  std::string type;     // "tEXt", "iTXt" or "zTXt"
  std::string keyword;  // as stored (Latin-1 for tEXt/zTXt keywords, ASCII in practice)
  std::string text;     // UTF-8 (tEXt/zTXt converted from Latin-1; compressed text inflated)
};

// Walks every chunk of a PNG: checks the signature, each chunk's length and CRC, and returns the
// text chunks in file order. Throws PngError naming the offending chunk.
std::vector<PngTextChunk> read_png_text_chunks(std::string_view png_bytes);

// Decodes any PNG to 8-bit RGB with stb_image. Throws PngError with stb's reason.
RgbImage decode_png(std::string_view png_bytes);

// What the metadata chunks describe. `request` is the full request as the caller received it.
struct PngGenerationInfo {
  std::string prompt;
  std::optional<std::string> negative_prompt;  // unset = absent (SDXL: zeros)
  int steps = 0;
  std::string sampler;    // AUTOMATIC1111 display name, e.g. "Euler a", "PNDM"
  std::string scheduler;  // canonical diffusiond name, e.g. "euler_a"
  double guidance_scale = 7.5;
  std::uint64_t seed = 0;
  int width = 0;
  int height = 0;
  std::string model_name;
  std::string model_hash;    // A1111's short hash (10 hex digits); "" when unknown
  std::string model_sha256;  // the full sha256 it comes from; "" when unknown
  std::string device;        // "cpu", "cuda:0", ...
  std::string dtype;         // "fp32", "fp16", "bf16"
  int image_index = 0;       // position of this image in its request
  nlohmann::json request = nlohmann::json::object();
  // SDXL micro-conditioning, (height, width) / (top, left) as diffusers; unset for other models.
  std::optional<std::array<int, 2>> original_size, crops_coords_top_left, target_size;
  // SDXL negative micro-conditioning; unset when not given.
  std::optional<std::array<int, 2>> negative_original_size, negative_crops_coords_top_left,
      negative_target_size;
  // The LoRAs applied, in order: name (file stem), multiplier, A1111 short hash (the first 12
  // hex digits of the file's SHA-256; "" when unknown) and the full SHA-256.
  struct Lora {
    std::string name;
    double weight = 1.0;
    std::string short_hash;
    std::string sha256;
  };
  std::vector<Lora> loras;
};

// "PROMPT\nNegative prompt: NEG\nSteps: 30, Sampler: Euler a, CFG scale: 7.5, Seed: 42,
// Size: 512x512, Model hash: H, Model: NAME, Lora hashes: "a: H1, b: H2", Version: diffusiond X"
// (the negative prompt line, model hash and Lora hashes omitted when empty, as AUTOMATIC1111
// does; Lora hashes lists the LoRAs with a known hash). SDXL images add, after Size,
// "Original size: WxH, Crop top left: TOP,LEFT, Target size: WxH", and when given
// "Negative original size: WxH, Negative crop top left: TOP,LEFT, Negative target size: WxH".
std::string a1111_parameters(const PngGenerationInfo& info);
// The "diffusiond" iTXt payload: {"request", "model": {name, hash, sha256}, "scheduler", "sampler",
// "seed", "steps", "guidance_scale", "width", "height", "device", "dtype", "image_index",
// "version"}, "loras" ([{name, weight, short_hash, sha256}], only when LoRAs were applied), plus
// "original_size", "crops_coords_top_left", "target_size" ([a, b] in diffusers' order) for SDXL
// images and "negative_original_size", "negative_crops_coords_top_left", "negative_target_size"
// when given; "negative_prompt" is null when it was absent.
nlohmann::json diffusiond_metadata(const PngGenerationInfo& info);
// encode_png with "parameters" (tEXt, or iTXt when not Latin-1) and "diffusiond" (iTXt).
std::string encode_png_with_metadata(const RgbImage& image, const PngGenerationInfo& info,
                                     int compression_level = 1);

}  // namespace diffusiond
