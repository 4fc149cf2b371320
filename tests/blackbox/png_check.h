// Independent PNG checks for the black-box tests: full decode (stb_image) and a chunk walk that
// verifies every CRC and collects the text chunks.
#pragma once

#include <map>
#include <string>
#include <vector>

namespace diffusiond::testing {

struct DecodedImage {
  int width = 0, height = 0, channels = 0;
  std::vector<unsigned char> pixels;  // RGB, row-major
};

// Throws std::runtime_error if the bytes are not a complete, valid PNG.
DecodedImage decode_png(const std::string& bytes);

struct PngChunks {
  std::vector<std::string> types;                 // in file order
  std::map<std::string, std::string> text;        // keyword -> text (tEXt, uncompressed iTXt)
  std::map<std::string, std::string> text_types;  // keyword -> "tEXt" / "iTXt"
};
// Walks the chunks; throws on a bad signature, truncation, a CRC mismatch or a missing IEND.
PngChunks read_png_chunks(const std::string& bytes);

// Largest absolute per-channel difference of two images of the same size.
int max_abs_diff(const DecodedImage& a, const DecodedImage& b);

std::string read_file(const std::string& path);

}  // namespace diffusiond::testing
