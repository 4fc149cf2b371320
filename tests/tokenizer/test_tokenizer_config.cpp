// Tokenizer folders that differ from the fixture's: SD2-style padding, the precedence between
// tokenizer_config.json and special_tokens_map.json, other lengths, and broken files.
#include <catch2/catch.hpp>

#include <algorithm>
#include <vector>

#include "tokenizer_test_util.h"

using diffusiond::ClipTokenizer;
using nlohmann::json;
using tokenizer_test::copy_fixture_tokenizer;
using tokenizer_test::ScratchDir;
using tokenizer_test::write_text;

namespace {

json fixture_json(const char* name) {
  return diffusiond::read_json_file(tokenizer_test::fixture_tokenizer() / name);
}

std::vector<int64_t> golden_ids(const std::string& prompt) {
  for (const auto& c : tokenizer_test::golden_cases()) {
    if (c.at("prompt") == prompt) return c.at("ids").get<std::vector<int64_t>>();
  }
  FAIL("no golden case for " << prompt);
  return {};
}

}  // namespace

TEST_CASE("config: SD2-style pad_token '!' pads with the id of '!'", "[tokenizer][config]") {
  ScratchDir dir;
  copy_fixture_tokenizer(dir.path());
  json config = fixture_json("tokenizer_config.json");
  config["pad_token"] = "!";
  json map = fixture_json("special_tokens_map.json");
  map["pad_token"] = "!";
  write_text(dir.path() / "tokenizer_config.json", config.dump());
  write_text(dir.path() / "special_tokens_map.json", map.dump());

  const auto tok = ClipTokenizer::load(dir.path());
  const int64_t bang = fixture_json("vocab.json").at("!").get<int64_t>();
  CHECK(bang == 0);
  CHECK(tok.pad_token() == "!");
  CHECK(tok.pad_id() == bang);

  // The golden SD1 ids with every pad after the eos turned into the id of '!'.
  const std::string prompt = "a photograph of an astronaut riding a horse";
  auto expected = golden_ids(prompt);
  const auto eos_at = std::find(expected.begin(), expected.end(), tok.eos_id());
  REQUIRE(eos_at != expected.end());
  std::fill(eos_at + 1, expected.end(), bang);
  CHECK(tok.encode(prompt) == expected);

  // "!" is an added (special) token there, so transformers splits every "!" out before BPE:
  // diffusers issue #4153 shows "! !! !!!" -> 49406, six 0s, 49407, then 0s.
  std::vector<int64_t> bangs(77, 0);
  bangs[0] = 49406;
  bangs[7] = 49407;
  CHECK(tok.encode("! !! !!!") == bangs);
}

TEST_CASE(
    "config: special_tokens_map.json overrides tokenizer_config.json only without "
    "added_tokens_decoder",
    "[tokenizer][config]") {
  ScratchDir dir;
  copy_fixture_tokenizer(dir.path());
  json map = fixture_json("special_tokens_map.json");
  map["pad_token"] = "!";
  write_text(dir.path() / "special_tokens_map.json", map.dump());
  CHECK(ClipTokenizer::load(dir.path()).pad_token() == "!");  // legacy layout: the map wins

  json config = fixture_json("tokenizer_config.json");
  config["added_tokens_decoder"] = {{"49406", {{"content", "<|startoftext|>"}, {"special", true}}},
                                    {"49407", {{"content", "<|endoftext|>"}, {"special", true}}}};
  write_text(dir.path() / "tokenizer_config.json", config.dump());
  const auto tok = ClipTokenizer::load(dir.path());
  CHECK(tok.pad_token() == "<|endoftext|>");  // the config carries the tokens: map ignored
  CHECK(tok.pad_id() == 49407);
}

TEST_CASE("config: string tokens and another model_max_length", "[tokenizer][config]") {
  ScratchDir dir;
  copy_fixture_tokenizer(dir.path());
  std::filesystem::remove(dir.path() / "special_tokens_map.json");
  json config = fixture_json("tokenizer_config.json");
  config["bos_token"] = "<|startoftext|>";
  config["eos_token"] = "<|endoftext|>";
  config["model_max_length"] = 12;
  write_text(dir.path() / "tokenizer_config.json", config.dump());

  const auto tok = ClipTokenizer::load(dir.path());
  CHECK(tok.max_length() == 12);
  CHECK(tok.bos_id() == 49406);
  CHECK(tok.eos_id() == 49407);
  const std::string prompt = "a a a a a a a a a a a a a a a a a a a a";
  const auto ids = tok.encode(prompt);
  REQUIRE(ids.size() == 12);
  CHECK(ids.front() == 49406);
  CHECK(ids[11] == 49407);
  const auto golden = fixture_json("vocab.json").at("a</w>").get<int64_t>();
  CHECK(std::count(ids.begin(), ids.end(), golden) == 10);
}

TEST_CASE("config: broken tokenizer folders give errors that name the file",
          "[tokenizer][config]") {
  ScratchDir dir;
  copy_fixture_tokenizer(dir.path());

  SECTION("missing vocab.json") {
    std::filesystem::remove(dir.path() / "vocab.json");
    CHECK_THROWS_WITH(ClipTokenizer::load(dir.path()), Catch::Contains("vocab.json"));
  }
  SECTION("missing merges.txt") {
    std::filesystem::remove(dir.path() / "merges.txt");
    CHECK_THROWS_WITH(ClipTokenizer::load(dir.path()), Catch::Contains("merges.txt"));
  }
  SECTION("vocab.json is not an object of ids") {
    write_text(dir.path() / "vocab.json", R"({"a": "one"})");
    CHECK_THROWS_WITH(ClipTokenizer::load(dir.path()),
                      Catch::Contains("vocab.json") && Catch::Contains("'a'"));
  }
  SECTION("invalid JSON in tokenizer_config.json") {
    write_text(dir.path() / "tokenizer_config.json", "{\"model_max_length\": 77,");
    CHECK_THROWS_WITH(ClipTokenizer::load(dir.path()),
                      Catch::Contains("tokenizer_config.json") && Catch::Contains("invalid JSON"));
  }
  SECTION("no model_max_length") {
    json config = fixture_json("tokenizer_config.json");
    config.erase("model_max_length");
    write_text(dir.path() / "tokenizer_config.json", config.dump());
    CHECK_THROWS_WITH(ClipTokenizer::load(dir.path()), Catch::Contains("tokenizer_config.json") &&
                                                           Catch::Contains("model_max_length"));
  }
  SECTION("pad_token set to null") {
    json config = fixture_json("tokenizer_config.json");
    config["pad_token"] = nullptr;
    std::filesystem::remove(dir.path() / "special_tokens_map.json");
    write_text(dir.path() / "tokenizer_config.json", config.dump());
    CHECK_THROWS_WITH(ClipTokenizer::load(dir.path()), Catch::Contains("pad_token"));
  }
  SECTION("a folder that does not exist") {
    const auto missing = dir.path() / "nowhere";
    CHECK_THROWS_WITH(ClipTokenizer::load(missing), Catch::Contains(missing.string()));
  }
}
