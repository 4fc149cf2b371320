// A1111 prompt syntax through the pipeline (pipeline/prompt_encoder.h, txt2img.h):
// "(word:1.0)" gives exactly the plain prompt's tensors and image (SD 1.x, SD 2.x, SDXL) and so
// reproduces diffusers' golden run; a weight scales its tokens' encoder output and the chunk's
// mean is restored (checked against the plain encoder output, A1111's formula); a 150-token
// prompt differs from its first 75 tokens (the plain path truncates, so there they are equal);
// a long prompt with a short negative prompt in A1111's default mode (one UNet pass per length)
// and with pad_cond_uncond (one padded pass), and where the two agree as the math says.
#include <catch2/catch.hpp>

#include <unistd.h>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include <torch/torch.h>

#include "golden_pipeline.h"
#include "pipeline/media/png.h"
#include "pipeline/media/posix_fs.h"
#include "pipeline/model_folder.h"
#include "pipeline/random_model.h"
#include "pipeline/text/clip_tokenizer.h"
#include "pipeline/txt2img.h"

using namespace diffusiond;
namespace fs = std::filesystem;

namespace {

const fs::path kSd1 = fs::path(DIFFUSIOND_FIXTURES) / "tiny-sd1";
const fs::path kSdxl = fs::path(DIFFUSIOND_FIXTURES) / "tiny-sdxl";

StableDiffusion& sd1() {
  static auto pipe =
      StableDiffusion::load(resolve_model(kSd1.string()), torch::kCPU, torch::kFloat32);
  return *pipe;
}
StableDiffusion& sdxl() {
  static auto pipe =
      StableDiffusion::load(resolve_model(kSdxl.string()), torch::kCPU, torch::kFloat32);
  return *pipe;
}
const ClipTokenizer& tokenizer() {
  static const ClipTokenizer tok = ClipTokenizer::load(kSd1 / "tokenizer");
  return tok;
}

int max_pixel_difference(const RgbImage& a, const RgbImage& b) {
  REQUIRE(a.pixels.size() == b.pixels.size());
  int worst = 0;
  for (std::size_t i = 0; i < a.pixels.size(); ++i)
    worst = std::max(worst, std::abs(int(a.pixels[i]) - int(b.pixels[i])));
  return worst;
}

struct Run {
  std::vector<RgbImage> images;
  std::map<std::string, torch::Tensor> dumped;
};

Run run(StableDiffusion& pipe, const Txt2ImgParams& params) {
  Run r;
  r.images = pipe.generate(
      params, {}, [&](const std::string& name, const torch::Tensor& v) { r.dumped[name] = v; });
  return r;
}

// `count` words that are one token each, cycling through a list (no commas: no backtracking).
std::string words(int count, int offset = 0) {
  static const std::vector<std::string> list = {"cat", "dog", "red",   "blue",  "house", "tree",
                                                "sky", "car", "green", "river", "moon",  "city"};
  std::string s;
  for (int i = 0; i < count; ++i)
    s += (i ? " " : "") + list[static_cast<std::size_t>(i + offset) % list.size()];
  REQUIRE(tokenizer().token_ids(s).size() == static_cast<std::size_t>(count));
  return s;
}

Txt2ImgParams small(const std::string& prompt, bool a1111) {
  Txt2ImgParams p = testing::golden_pipeline_params(kSd1);
  p.prompts = {prompt};
  p.steps = 3;
  p.a1111_prompt_syntax = a1111;
  return p;
}

}  // namespace

TEST_CASE("a1111: (word:1.0) gives exactly the plain prompt's image (SD 1.x)",
          "[pipeline][a1111]") {
  auto plain = testing::golden_pipeline_params(kSd1);  // diffusers' golden run, 8 steps
  auto a1111 = plain;
  a1111.prompts = {"a photograph of an (astronaut:1.0) riding a horse"};
  a1111.a1111_prompt_syntax = true;
  const Run p = run(sd1(), plain), a = run(sd1(), a1111);
  CHECK(torch::equal(p.dumped.at("prompt_embeds"), a.dumped.at("prompt_embeds")));
  CHECK(a.images.at(0).pixels == p.images.at(0).pixels);
  // And so the a1111 path reproduces diffusers' own image as the plain path does.
  CHECK(max_pixel_difference(a.images.at(0), testing::golden_pipeline_image(kSd1)) <= 2);
  // Without the syntax, the brackets are text: a different prompt, a different image.
  a1111.a1111_prompt_syntax = false;
  CHECK(max_pixel_difference(run(sd1(), a1111).images.at(0), p.images.at(0)) > 0);
}

TEST_CASE("a1111: a weight scales its tokens' output, then the chunk's mean is restored",
          "[pipeline][a1111]") {
  const std::string before = "a photograph of an";
  const auto plain = run(sd1(), small(before + " astronaut riding a horse", false));
  const auto weighted = run(sd1(), small(before + " (astronaut:1.5) riding a horse", true));
  const torch::Tensor z = plain.dumped.at("prompt_embeds")[1].to(torch::kFloat64);  // cond row
  const torch::Tensor w = weighted.dumped.at("prompt_embeds")[1].to(torch::kFloat64);
  REQUIRE(z.sizes() == w.sizes());  // [77, D]
  const int64_t first = 1 + static_cast<int64_t>(tokenizer().token_ids(before).size());
  const int64_t count = static_cast<int64_t>(tokenizer().token_ids("astronaut").size());
  // A1111: w = z * m * (mean(z) / mean(z * m)), m = 1.5 at the word's tokens, 1 elsewhere.
  auto m = torch::ones({z.size(0), 1}, torch::kFloat64);
  m.slice(0, first, first + count).fill_(1.5);
  const auto expected = z * m * (z.mean() / (z * m).mean());
  CHECK(torch::allclose(w, expected, 1e-5, 1e-6));
  CHECK(w.mean().item<double>() == Approx(z.mean().item<double>()).epsilon(1e-5));
  CHECK_FALSE(torch::allclose(w, z, 1e-3, 1e-4));
  CHECK(max_pixel_difference(weighted.images.at(0), plain.images.at(0)) > 0);
  // The negative prompt row has no weights: unchanged.
  CHECK(torch::equal(plain.dumped.at("prompt_embeds")[0], weighted.dumped.at("prompt_embeds")[0]));
}

TEST_CASE("a1111: a 150-token prompt differs from its first 75 tokens", "[pipeline][a1111]") {
  const std::string first = words(75), whole = words(75) + " " + words(75, 5);
  CHECK(sd1().prompt_sequence_length(whole, true) == 154);
  CHECK(sd1().prompt_sequence_length(first, true) == 77);
  CHECK(sd1().prompt_sequence_length(whole, false) == 77);
  auto p_first = small(first, true), p_whole = small(whole, true);
  p_first.negative_prompt = p_whole.negative_prompt = std::string(words(80, 3));  // 2 chunks too
  p_first.pad_cond_uncond = p_whole.pad_cond_uncond = true;  // one batch: the embeds are dumped
  const Run a = run(sd1(), p_first), b = run(sd1(), p_whole);
  const torch::Tensor ea = a.dumped.at("prompt_embeds"), eb = b.dumped.at("prompt_embeds");
  REQUIRE(ea.size(1) == 154);  // the negative prompt's 2 chunks; the short prompt padded
  REQUIRE(eb.size(1) == 154);
  // Rows [uncond, cond]: the uncond rows match; the cond rows' first chunks match (each chunk is
  // encoded on its own; alone or in a batch of 2 chunks: rounding only), the second differs:
  // 75 more words vs the empty chunk.
  CHECK(torch::equal(ea[0], eb[0]));
  CHECK(torch::allclose(ea[1].slice(0, 0, 77), eb[1].slice(0, 0, 77), 1e-5, 1e-6));
  CHECK_FALSE(torch::allclose(ea[1].slice(0, 77), eb[1].slice(0, 77)));
  CHECK(max_pixel_difference(a.images.at(0), b.images.at(0)) > 0);
  // Plain text truncates at 77 ids, as diffusers: there the two are the same image.
  CHECK(run(sd1(), small(first, false)).images.at(0).pixels ==
        run(sd1(), small(whole, false)).images.at(0).pixels);
}

TEST_CASE("a1111: a long prompt with a short negative prompt, default and padded",
          "[pipeline][a1111]") {
  auto params = small(words(100), true);           // 2 chunks (154)
  params.negative_prompt = "blurry, low quality";  // 1 chunk (77)
  SECTION("default: one UNet pass per length; padded: one pass, uncond padded to 154") {
    const Run separate = run(sd1(), params);
    CHECK(separate.dumped.count("prompt_embeds") == 0);  // two lengths: no single batch
    params.pad_cond_uncond = true;
    const Run padded = run(sd1(), params);
    REQUIRE(padded.dumped.count("prompt_embeds") == 1);
    const torch::Tensor embeds = padded.dumped.at("prompt_embeds");
    CHECK(embeds.size(0) == 2);
    CHECK(embeds.size(1) == 154);
    // The padding is the empty prompt's chunk (its A1111 encoding).
    const Run empty = run(sd1(), small("", true));
    CHECK(torch::equal(embeds[0].slice(0, 77), empty.dumped.at("prompt_embeds")[1]));
    // The conditional pass sees the same 154 tokens either way: equal predictions; the
    // unconditional one attends over 77 more (empty-prompt) keys: a different prediction.
    const auto a = separate.dumped.at("noise_pred_text.00"),
               b = padded.dumped.at("noise_pred_text.00");
    INFO("max diff " << (a - b).abs().max().item<double>() << " max "
                     << a.abs().max().item<double>());
    CHECK(torch::allclose(a, b, 1e-5, 1e-5));  // batch 1 vs 2: rounding only
    CHECK_FALSE(torch::allclose(separate.dumped.at("noise_pred_uncond.00"),
                                padded.dumped.at("noise_pred_uncond.00"), 1e-4, 1e-5));
    CHECK(max_pixel_difference(separate.images.at(0), padded.images.at(0)) > 0);
  }
  SECTION("an empty negative prompt padded with empty chunks is the same uncond (the math)") {
    // Cross-attention over [e; e] (the same 77 keys and values twice) is attention over e:
    // each softmax weight halves, the sums do not change. So padding "" with "" changes nothing
    // but rounding.
    params.negative_prompt = "";
    const Run separate = run(sd1(), params);
    params.pad_cond_uncond = true;
    const Run padded = run(sd1(), params);
    CHECK(torch::allclose(separate.dumped.at("noise_pred_uncond.00"),
                          padded.dumped.at("noise_pred_uncond.00"), 1e-4, 1e-5));
    CHECK(max_pixel_difference(separate.images.at(0), padded.images.at(0)) <= 1);
  }
  SECTION("the prompt is the shorter one: the cond row is padded") {
    params.prompts = {"a red house"};
    params.negative_prompt = words(90);
    params.pad_cond_uncond = true;
    const Run padded = run(sd1(), params);
    CHECK(padded.dumped.at("prompt_embeds").size(1) == 154);
    params.pad_cond_uncond = false;
    CHECK(run(sd1(), params).images.size() == 1);
  }
  SECTION("several prompts of different lengths in one call, n = 2") {
    params.prompts = {words(100), "a red house", words(160)};
    params.num_images_per_prompt = 2;
    const Run all = run(sd1(), params);
    REQUIRE(all.images.size() == 6);
    // Image 2 (prompt 1, copy 0) equals a run of that prompt alone with its seed.
    auto alone = params;
    alone.prompts = {"a red house"};
    alone.num_images_per_prompt = 1;
    alone.seed = params.seed + 2;
    CHECK(max_pixel_difference(run(sd1(), alone).images.at(0), all.images.at(2)) <= 1);
    params.pad_cond_uncond = true;
    CHECK(run(sd1(), params).images.size() == 6);
  }
}

TEST_CASE("a1111: guidance off, a long prompt alone", "[pipeline][a1111]") {
  auto params = small(words(100), true);
  params.guidance_scale = 1.0;
  const Run r = run(sd1(), params);
  CHECK(r.dumped.at("prompt_embeds").sizes() == torch::IntArrayRef({1, 154, 32}));
}

TEST_CASE("a1111: SDXL, both encoders chunked, and (word:1.0) gives exactly the plain image",
          "[pipeline][a1111][sdxl]") {
  Txt2ImgParams plain;
  plain.prompts = {"a photograph of an astronaut riding a horse"};
  plain.steps = 3;
  plain.guidance_scale = 5.0;
  plain.width = plain.height = 64;
  plain.seed = 3;
  plain.negative_prompt = "blurry";
  auto a1111 = plain;
  a1111.prompts = {"a photograph of an (astronaut:1.0) riding a horse"};
  a1111.a1111_prompt_syntax = true;
  const Run p = run(sdxl(), plain), a = run(sdxl(), a1111);
  CHECK(torch::equal(p.dumped.at("prompt_embeds"), a.dumped.at("prompt_embeds")));
  CHECK(torch::equal(p.dumped.at("add_text_embeds"), a.dumped.at("add_text_embeds")));
  CHECK(a.images.at(0).pixels == p.images.at(0).pixels);

  // A 2-chunk prompt: [1, 154, D1 + D2]; its pooled embedding is its first chunk's.
  auto long_params = a1111;
  long_params.prompts = {words(75) + " " + words(40, 4)};
  long_params.pad_cond_uncond = true;
  const Run l = run(sdxl(), long_params);
  const auto embeds = l.dumped.at("prompt_embeds");
  CHECK(embeds.size(1) == 154);
  CHECK(embeds.size(2) == p.dumped.at("prompt_embeds").size(2));
  auto first = a1111;
  first.prompts = {words(75)};
  const Run f = run(sdxl(), first);
  CHECK(torch::allclose(l.dumped.at("add_text_embeds")[1], f.dumped.at("add_text_embeds")[1], 1e-5,
                        1e-6));
  CHECK(torch::allclose(embeds[1].slice(0, 0, 77), f.dumped.at("prompt_embeds")[1], 1e-5, 1e-6));
  CHECK_FALSE(torch::allclose(embeds[1].slice(0, 77), f.dumped.at("prompt_embeds")[1], 1e-3, 1e-4));
  CHECK(max_pixel_difference(l.images.at(0), f.images.at(0)) > 0);
  // Absent negative prompt (zeros, 77) with the long prompt, in both modes.
  long_params.negative_prompt.reset();
  CHECK(run(sdxl(), long_params).images.size() == 1);
  long_params.pad_cond_uncond = false;
  CHECK(run(sdxl(), long_params).images.size() == 1);
  CHECK(sdxl().prompt_sequence_length(long_params.prompts[0], true) == 154);
}

TEST_CASE("a1111: SD 2.x (pad id 0), (word:1.0) gives exactly the plain image, long prompts run",
          "[pipeline][a1111]") {
  const fs::path out =
      fs::temp_directory_path() / ("diffusiond_a1111_sd2_" + std::to_string(::getpid()));
  remove_tree(out);
  write_random_model("tiny-sd2", out, kSd1 / "tokenizer", {5});
  {
    auto pipe = StableDiffusion::load(resolve_model(out.string()), torch::kCPU, torch::kFloat32);
    Txt2ImgParams plain;
    plain.prompts = {"a red cat on a mat"};
    plain.negative_prompt = "blurry";
    plain.steps = 2;
    plain.width = plain.height = 64;
    auto a1111 = plain;
    a1111.prompts = {"a red (cat:1.0) on a mat"};
    a1111.a1111_prompt_syntax = true;
    const Run p = run(*pipe, plain), a = run(*pipe, a1111);
    CHECK(torch::equal(p.dumped.at("prompt_embeds"), a.dumped.at("prompt_embeds")));
    CHECK(a.images.at(0).pixels == p.images.at(0).pixels);
    a1111.prompts = {words(120) + ", (cat:1.3) BREAK [dog]"};
    const Run l = run(*pipe, a1111);
    CHECK(l.images.size() == 1);
    CHECK(pipe->prompt_sequence_length(a1111.prompts[0], true) == 3 * 77);
  }
  remove_tree(out);
}

TEST_CASE("diffusiond generate --prompt-syntax a1111, with and without --pad-cond-uncond",
          "[pipeline][a1111][cli]") {
  const char* bin = std::getenv("DIFFUSIOND_BIN");
  REQUIRE(bin != nullptr);
  const fs::path dir =
      fs::temp_directory_path() / ("diffusiond_a1111_cli_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string prompt = words(90) + ", (astronaut:1.5)";
  auto cli = [&](const std::string& extra, const std::string& name) {
    const fs::path out = dir / (name + ".png");
    const std::string command = std::string(bin) + " generate --model " + kSd1.string() +
                                " --prompt '" + prompt + "' --negative-prompt fog --seed 5 " +
                                "--steps 3 " + extra + " -o " + out.string() + " > " +
                                (dir / (name + ".log")).string() + " 2>&1";
    INFO(command);
    REQUIRE(std::system(command.c_str()) == 0);
    std::ifstream in(out, std::ios::binary);
    std::stringstream bytes;
    bytes << in.rdbuf();
    return bytes.str();
  };
  auto params = small(prompt, true);
  params.negative_prompt = "fog";
  params.seed = 5;
  const std::string png = cli("--prompt-syntax a1111", "a1111");
  CHECK(max_pixel_difference(decode_png(png), run(sd1(), params).images.at(0)) <= 1);
  const auto chunks = read_png_text_chunks(png);
  REQUIRE(chunks.size() == 2);
  CHECK(chunks[0].text.rfind(prompt + "\nNegative prompt: fog\n", 0) == 0);  // as given
  CHECK(nlohmann::json::parse(chunks[1].text)["request"]["prompt_syntax"] == "a1111");
  params.pad_cond_uncond = true;
  CHECK(max_pixel_difference(decode_png(cli("--prompt-syntax a1111 --pad-cond-uncond", "padded")),
                             run(sd1(), params).images.at(0)) <= 1);
  CHECK(std::system((std::string(bin) + " generate --model " + kSd1.string() +
                     " --prompt x --prompt-syntax comfy -o " + (dir / "bad.png").string() +
                     " > /dev/null 2>&1")
                        .c_str()) != 0);
  remove_tree(dir);
}
