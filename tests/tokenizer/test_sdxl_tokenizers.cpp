// The tiny-sdxl fixture's two tokenizers against golden/tokenizer_cases.json (tokenizer, pad
// <|endoftext|>) and golden/tokenizer_2_cases.json (tokenizer_2, pad '!' = id 0), both written by
// transformers' CLIPTokenizer. The golden set leaves out prompts holding a literal '!' (see
// golden/meta.json "tokenizer_2_cases_excluded": transformers and open_clip disagree there).
#include <catch2/catch.hpp>

#include <filesystem>

#include "pipeline/media/config_util.h"
#include "pipeline/text/clip_tokenizer.h"

using namespace diffusiond;
namespace fs = std::filesystem;

namespace {

const fs::path kModel = fs::path(DIFFUSIOND_FIXTURES) / "tiny-sdxl";

void check_cases(const std::string& tokenizer_dir, const std::string& cases_file) {
  const auto tok = ClipTokenizer::load(kModel / tokenizer_dir);
  const auto cases = read_json_file(kModel / "golden" / cases_file);
  REQUIRE(cases.size() >= 50);
  for (const auto& c : cases) {
    const auto prompt = c.at("prompt").get<std::string>();
    INFO(tokenizer_dir << " prompt: " << prompt);
    CHECK(tok.encode(prompt) == c.at("ids").get<std::vector<int64_t>>());
  }
}

}  // namespace

TEST_CASE("SDXL tokenizer (pad = eos) gives the golden ids", "[tokenizer][golden][sdxl]") {
  const auto tok = ClipTokenizer::load(kModel / "tokenizer");
  CHECK(tok.pad_id() == 49407);
  check_cases("tokenizer", "tokenizer_cases.json");
}

TEST_CASE("SDXL tokenizer_2 (pad '!') gives the golden ids", "[tokenizer][golden][sdxl]") {
  const auto tok = ClipTokenizer::load(kModel / "tokenizer_2");
  CHECK(tok.pad_token() == "!");
  CHECK(tok.pad_id() == 0);
  check_cases("tokenizer_2", "tokenizer_2_cases.json");
}
