// PNG encoding with metadata: the chunks parse back, CRCs are valid, pixels decode identically
// (checked with stb_image and with zlib directly), and encoding works from several threads.
#include <catch2/catch.hpp>

#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include <zlib.h>

#include "pipeline/media/png.h"

using namespace diffusiond;

namespace {

RgbImage test_image(int w, int h, unsigned salt) {
  RgbImage img;
  img.width = w;
  img.height = h;
  img.pixels.resize(static_cast<std::size_t>(w) * h * 3);
  unsigned x = 2463534242u ^ salt;
  for (auto& p : img.pixels) {  // xorshift noise plus a gradient: exercises every PNG filter
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    p = static_cast<std::uint8_t>((&p - img.pixels.data()) % 7 == 0 ? x
                                                                    : (&p - img.pixels.data()) / 3);
  }
  return img;
}

std::uint32_t be32(const std::string& s, std::size_t at) {
  auto b = [&](std::size_t i) {
    return static_cast<std::uint32_t>(static_cast<unsigned char>(s[at + i]));
  };
  return (b(0) << 24) | (b(1) << 16) | (b(2) << 8) | b(3);
}

struct RawChunk {
  std::string type;
  std::string data;
};

// Independent chunk walker (does not use read_png_text_chunks): checks every CRC with zlib.
std::vector<RawChunk> walk_chunks(const std::string& png) {
  REQUIRE(png.size() > 8);
  REQUIRE(std::memcmp(png.data(), "\x89PNG\r\n\x1a\n", 8) == 0);
  std::vector<RawChunk> out;
  std::size_t at = 8;
  while (at < png.size()) {
    const std::uint32_t len = be32(png, at);
    RawChunk c{png.substr(at + 4, 4), png.substr(at + 8, len)};
    uLong crc = crc32(0, reinterpret_cast<const Bytef*>(png.data() + at + 4), len + 4);
    INFO("chunk " << c.type);
    CHECK(crc == be32(png, at + 8 + len));
    out.push_back(std::move(c));
    at += 12 + len;
  }
  CHECK(at == png.size());
  return out;
}

}  // namespace

TEST_CASE("PNG round-trips pixels and text chunks with valid CRCs", "[png]") {
  const RgbImage img = test_image(37, 23, 1);
  const std::string text = "a photo of a cat\nSteps: 30, Seed: 42";
  const std::string utf8 = "caf\xC3\xA9 \xF0\x9F\x90\xB1 \xE4\xB8\x80";  // café 🐱 一
  const std::string png =
      encode_png(img, {{"parameters", text}, {"latin", "caf\xC3\xA9"}, {"emoji", utf8}},
                 {{"diffusiond", "{\"k\":\"\xE4\xB8\x80\"}"}}, 6);

  auto raw = walk_chunks(png);
  REQUIRE(raw.size() >= 7);
  CHECK(raw[0].type == "IHDR");
  CHECK(raw[1].type == "tEXt");
  CHECK(raw[1].data == "parameters" + std::string(1, '\0') + text);
  CHECK(raw[2].type == "tEXt");
  CHECK(raw[2].data == std::string("latin\0caf\xE9", 10));  // stored as Latin-1
  CHECK(raw[3].type == "iTXt");                             // not Latin-1: iTXt like Pillow
  CHECK(raw[4].type == "iTXt");
  CHECK(raw.back().type == "IEND");

  // The pixels: inflate the IDAT stream with zlib and undo the filters by hand.
  std::string idat;
  for (const auto& c : raw)
    if (c.type == "IDAT") idat += c.data;
  std::vector<unsigned char> inflated(static_cast<std::size_t>(img.height) * (1 + img.width * 3));
  uLongf size = inflated.size();
  REQUIRE(uncompress(inflated.data(), &size, reinterpret_cast<const Bytef*>(idat.data()),
                     idat.size()) == Z_OK);
  REQUIRE(size == inflated.size());
  const int stride = img.width * 3;
  std::vector<unsigned char> prev(stride, 0), row(stride);
  std::vector<std::uint8_t> pixels;
  for (int y = 0; y < img.height; ++y) {
    const unsigned char filter = inflated[y * (stride + 1)];
    const unsigned char* src = &inflated[y * (stride + 1) + 1];
    for (int i = 0; i < stride; ++i) {
      const int a = i >= 3 ? row[i - 3] : 0, b = prev[i], c = i >= 3 ? prev[i - 3] : 0;
      int pred = 0;
      switch (filter) {
        case 0:
          pred = 0;
          break;
        case 1:
          pred = a;
          break;
        case 2:
          pred = b;
          break;
        case 3:
          pred = (a + b) / 2;
          break;
        case 4: {
          const int p = a + b - c, pa = std::abs(p - a), pb = std::abs(p - b), pc = std::abs(p - c);
          pred = (pa <= pb && pa <= pc) ? a : (pb <= pc ? b : c);
          break;
        }
        default:
          FAIL("bad filter type " << int(filter));
      }
      row[i] = static_cast<unsigned char>(src[i] + pred);
    }
    pixels.insert(pixels.end(), row.begin(), row.end());
    prev = row;
  }
  CHECK(pixels == img.pixels);

  // The library's own reader and decoder agree.
  auto chunks = read_png_text_chunks(png);
  REQUIRE(chunks.size() == 4);
  CHECK(chunks[0].keyword == "parameters");
  CHECK(chunks[0].text == text);
  CHECK(chunks[1].text == "caf\xC3\xA9");
  CHECK(chunks[2].type == "iTXt");
  CHECK(chunks[2].text == utf8);
  CHECK(chunks[3].keyword == "diffusiond");
  CHECK(chunks[3].text == "{\"k\":\"\xE4\xB8\x80\"}");
  auto decoded = decode_png(png);
  CHECK(decoded.width == img.width);
  CHECK(decoded.height == img.height);
  CHECK(decoded.pixels == img.pixels);
}

TEST_CASE("PNG reader rejects corrupt files", "[png]") {
  std::string png = encode_png(test_image(8, 8, 2), {{"parameters", "hello"}});
  std::string bad = png;
  bad[8 + 8 + 13 + 4 + 8 + 2] ^= 0x20;  // a byte inside the tEXt data after IHDR
  CHECK_THROWS_WITH(read_png_text_chunks(bad), Catch::Contains("CRC mismatch in chunk tEXt"));
  CHECK_THROWS_WITH(read_png_text_chunks(png.substr(0, png.size() - 5)), Catch::Contains("PNG"));
  CHECK_THROWS_WITH(read_png_text_chunks("GIF89a"), Catch::Contains("signature"));
  CHECK_THROWS_AS(decode_png("not a png"), PngError);
  CHECK_THROWS_WITH(encode_png(test_image(8, 8, 3), {{"", "x"}}), Catch::Contains("keyword"));
  RgbImage wrong = test_image(8, 8, 4);
  wrong.pixels.pop_back();
  CHECK_THROWS_AS(encode_png(wrong), PngError);
}

TEST_CASE("compression level changes size, never pixels", "[png]") {
  RgbImage img = test_image(64, 64, 5);
  for (auto& p : img.pixels) p = static_cast<std::uint8_t>(p & 0xF0);  // compressible
  auto stored = encode_png(img, {}, {}, 0);
  auto best = encode_png(img, {}, {}, 9);
  CHECK(best.size() < stored.size());
  CHECK(decode_png(stored).pixels == img.pixels);
  CHECK(decode_png(best).pixels == img.pixels);
  CHECK_THROWS_AS(encode_png(img, {}, {}, 10), PngError);
}

TEST_CASE("PNG encoding is safe from several threads at once", "[png]") {
  std::vector<std::string> results(4);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 20; ++i) {
        results[t] = encode_png(test_image(40, 30, t), {{"parameters", "t" + std::to_string(t)}},
                                {}, t % 2 == 0 ? 1 : 9);
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < 4; ++t) {
    INFO("thread " << t);
    CHECK(decode_png(results[t]).pixels == test_image(40, 30, t).pixels);
    CHECK(read_png_text_chunks(results[t]).at(0).text == "t" + std::to_string(t));
    // Same bytes as a single-threaded encode at the same level (the level is per call).
    CHECK(results[t] == encode_png(test_image(40, 30, t), {{"parameters", "t" + std::to_string(t)}},
                                   {}, t % 2 == 0 ? 1 : 9));
  }
}

TEST_CASE("A1111 parameters text and diffusiond JSON", "[png]") {
  PngGenerationInfo info;
  info.prompt = "a dog";
  info.negative_prompt = "blurry";
  info.steps = 30;
  info.sampler = "Euler a";
  info.scheduler = "euler_a";
  info.guidance_scale = 7.5;
  info.seed = 42;
  info.width = 512;
  info.height = 768;
  info.model_name = "tiny-sd1";
  info.device = "cpu";
  info.dtype = "fp32";
  info.request = {{"prompt", "a dog"}, {"n", 1}};
  CHECK(a1111_parameters(info) ==
        "a dog\nNegative prompt: blurry\nSteps: 30, Sampler: Euler a, CFG scale: 7.5, Seed: 42, "
        "Size: 512x768, Model: tiny-sd1, Version: diffusiond " DIFFUSIOND_VERSION);
  info.negative_prompt.reset();
  info.guidance_scale = 7;
  info.model_hash = "abcdef0123";
  CHECK(a1111_parameters(info) ==
        "a dog\nSteps: 30, Sampler: Euler a, CFG scale: 7.0, Seed: 42, Size: 512x768, "
        "Model hash: abcdef0123, Model: tiny-sd1, Version: diffusiond " DIFFUSIOND_VERSION);

  auto png = encode_png_with_metadata(test_image(16, 8, 6), info);
  auto chunks = read_png_text_chunks(png);
  REQUIRE(chunks.size() == 2);
  CHECK(chunks[0].keyword == "parameters");
  CHECK(chunks[0].text == a1111_parameters(info));
  CHECK(chunks[1].type == "iTXt");
  auto meta = nlohmann::json::parse(chunks[1].text);
  CHECK(meta["request"] == info.request);
  CHECK(meta["model"]["name"] == "tiny-sd1");
  CHECK(meta["model"]["hash"] == "abcdef0123");
  CHECK(meta["scheduler"] == "euler_a");
  CHECK(meta["seed"] == 42);
  CHECK(meta["device"] == "cpu");
  CHECK(meta["version"] == DIFFUSIOND_VERSION);
  CHECK(meta["negative_prompt"].is_null());  // absent, not ""
  CHECK_FALSE(meta.contains("original_size"));
}

TEST_CASE("SDXL micro-conditioning in the A1111 text and the diffusiond JSON", "[png][sdxl]") {
  PngGenerationInfo info;
  info.prompt = "a dog";
  info.negative_prompt = "";  // given empty: no line, but "" in the JSON
  info.steps = 30;
  info.sampler = "Euler";
  info.guidance_scale = 5;
  info.seed = 1;
  info.width = 1216;
  info.height = 832;
  info.original_size = std::array<int, 2>{1024, 2048};
  info.crops_coords_top_left = std::array<int, 2>{16, 8};
  info.target_size = std::array<int, 2>{832, 1216};
  CHECK(a1111_parameters(info) ==
        "a dog\nSteps: 30, Sampler: Euler, CFG scale: 5.0, Seed: 1, Size: 1216x832, Original "
        "size: 2048x1024, Crop top left: 16,8, Target size: 1216x832, Version: "
        "diffusiond " DIFFUSIOND_VERSION);
  auto meta = diffusiond_metadata(info);
  CHECK(meta["negative_prompt"] == "");
  CHECK(meta["original_size"] == nlohmann::json::array({1024, 2048}));
  CHECK(meta["crops_coords_top_left"] == nlohmann::json::array({16, 8}));
  CHECK(meta["target_size"] == nlohmann::json::array({832, 1216}));
  CHECK_FALSE(meta.contains("negative_original_size"));  // not given

  info.negative_original_size = std::array<int, 2>{512, 384};
  info.negative_crops_coords_top_left = std::array<int, 2>{0, 24};
  info.negative_target_size = std::array<int, 2>{32, 48};
  CHECK_THAT(a1111_parameters(info),
             Catch::Contains("Target size: 1216x832, Negative original size: 384x512, Negative "
                             "crop top left: 0,24, Negative target size: 48x32, Version: "));
  meta = diffusiond_metadata(info);
  CHECK(meta["negative_original_size"] == nlohmann::json::array({512, 384}));
  CHECK(meta["negative_crops_coords_top_left"] == nlohmann::json::array({0, 24}));
  CHECK(meta["negative_target_size"] == nlohmann::json::array({32, 48}));
}
