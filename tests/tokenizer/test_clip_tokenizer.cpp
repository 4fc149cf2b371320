// The tokenizer against golden/tokenizer_cases.json, written by transformers' CLIPTokenizer with
// ftfy 6.3.1 installed (see golden/meta.json).
#include <catch2/catch.hpp>

#include <thread>
#include <vector>

#include "tokenizer_test_util.h"

using tokenizer_test::fixture_tokenizer_instance;
using tokenizer_test::golden_cases;

TEST_CASE("tokenizer: every golden case gives the golden ids", "[tokenizer][golden]") {
  const auto& tok = fixture_tokenizer_instance();
  REQUIRE(golden_cases().size() == 60);
  REQUIRE(tok.max_length() == 77);
  for (const auto& c : golden_cases()) {
    const std::string prompt = c.at("prompt");
    INFO("prompt: " << prompt << "  tags: " << c.at("tags").dump());
    CHECK(tok.encode(prompt) == c.at("ids").get<std::vector<int64_t>>());
  }
}

TEST_CASE("tokenizer: normalize() gives the golden clean-up text", "[tokenizer][golden]") {
  const auto& tok = fixture_tokenizer_instance();
  for (const auto& c : golden_cases()) {
    const std::string prompt = c.at("prompt");
    INFO("prompt: " << prompt << "  tags: " << c.at("tags").dump());
    CHECK(tok.normalize(prompt) == c.at("normalized").get<std::string>());
  }
}

TEST_CASE("tokenizer: untruncated token counts match the golden cases", "[tokenizer][golden]") {
  const auto& tok = fixture_tokenizer_instance();
  for (const auto& c : golden_cases()) {
    const std::string prompt = c.at("prompt");
    INFO("prompt: " << prompt);
    CHECK(tok.token_ids(prompt).size() == c.at("num_tokens_untruncated").get<size_t>());
  }
}

TEST_CASE("tokenizer: truncation keeps bos first and eos at position 76", "[tokenizer]") {
  const auto& tok = fixture_tokenizer_instance();
  int truncated_cases = 0;
  for (const auto& c : golden_cases()) {
    if (!c.at("truncated").get<bool>()) continue;
    ++truncated_cases;
    const std::string prompt = c.at("prompt");
    INFO("prompt: " << prompt);
    const auto ids = tok.encode(prompt);
    const auto all = tok.token_ids(prompt);
    REQUIRE(all.size() > 75);
    REQUIRE(ids.size() == 77);
    CHECK(ids.front() == tok.bos_id());
    CHECK(ids[76] == tok.eos_id());
    CHECK(std::vector<int64_t>(ids.begin() + 1, ids.begin() + 76) ==
          std::vector<int64_t>(all.begin(), all.begin() + 75));
  }
  CHECK(truncated_cases == 2);
}

TEST_CASE("tokenizer: concurrent encodes share the cache safely", "[tokenizer]") {
  // A fresh instance so that the threads fill an empty BPE cache together.
  const auto tok = diffusiond::ClipTokenizer::load(tokenizer_test::fixture_tokenizer());
  std::vector<std::vector<std::vector<int64_t>>> results(4);
  std::vector<std::thread> threads;
  for (size_t t = 0; t < results.size(); ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 3; ++round) {
        for (const auto& c : golden_cases()) results[t].push_back(tok.encode(c.at("prompt")));
      }
    });
  }
  for (auto& thread : threads) thread.join();
  for (const auto& per_thread : results) {
    REQUIRE(per_thread.size() == 3 * golden_cases().size());
    for (size_t i = 0; i < per_thread.size(); ++i) {
      const auto& expected = golden_cases()[i % golden_cases().size()].at("ids");
      CHECK(per_thread[i] == expected.get<std::vector<int64_t>>());
    }
  }
}
