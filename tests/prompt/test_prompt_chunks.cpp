// A1111's 75-token chunking (sd_hijack_clip.py tokenize_line): exact chunk boundaries, comma
// backtracking, BREAK, padding, weights; with synthetic ids and with the real CLIP vocabulary
// of the tiny model (tests/fixtures/tiny-sd1/tokenizer, openai's clip-vit-large-patch14).
#include <catch2/catch.hpp>

#include <numeric>
#include <string>

#include "pipeline/text/prompt_chunks.h"

using namespace diffusiond;

namespace {

const ChunkIds kIds{/*bos=*/1000, /*eos=*/1001, /*pad=*/1001, /*comma=*/7};

std::vector<int64_t> count_up(int n, int64_t from = 100) {
  std::vector<int64_t> v(static_cast<std::size_t>(n));
  std::iota(v.begin(), v.end(), from);
  return v;
}

// The tokens of a chunk: the ids between bos and the first eos.
std::vector<int64_t> body(const PromptChunk& c, int64_t eos = kIds.eos) {
  REQUIRE(c.ids.size() == 77);
  REQUIRE(c.weights.size() == 77);
  REQUIRE(c.ids.front() == kIds.bos);
  auto end = std::find(c.ids.begin() + 1, c.ids.end(), eos);
  return {c.ids.begin() + 1, end};
}

const ClipTokenizer& tokenizer() {
  static const ClipTokenizer tok = ClipTokenizer::load(DIFFUSIOND_FIXTURES "/tiny-sd1/tokenizer");
  return tok;
}

std::string repeat(const std::string& word, int n) {
  std::string s;
  for (int i = 0; i < n; ++i) s += (i ? " " : "") + word;
  return s;
}

}  // namespace

TEST_CASE("75 tokens are one chunk, 76 are two", "[prompt][chunks]") {
  auto one = build_chunks({{count_up(75), 1.0f, false}}, kIds);
  REQUIRE(one.size() == 1);
  CHECK(body(one[0]) == count_up(75));
  CHECK(one[0].ids.back() == kIds.eos);

  auto two = build_chunks({{count_up(76), 1.0f, false}}, kIds);
  REQUIRE(two.size() == 2);
  CHECK(body(two[0]) == count_up(75));
  CHECK(body(two[1]) == std::vector<int64_t>{175});
  // bos, 1 token, then eos to the end (SD 1.x: pad == eos).
  CHECK(std::count(two[1].ids.begin(), two[1].ids.end(), kIds.eos) == 75);

  // The real vocabulary: "cat" is one token.
  CHECK(a1111_chunks(tokenizer(), repeat("cat", 75)).size() == 1);
  CHECK(a1111_chunks(tokenizer(), repeat("cat", 76)).size() == 2);
  CHECK(a1111_chunks(tokenizer(), repeat("cat", 150)).size() == 2);
  CHECK(a1111_chunks(tokenizer(), repeat("cat", 151)).size() == 3);
}

TEST_CASE("the empty prompt is one chunk: bos, then eos (and padding)", "[prompt][chunks]") {
  auto chunks = build_chunks({}, kIds);
  REQUIRE(chunks.size() == 1);
  CHECK(body(chunks[0]).empty());
  const auto empty = a1111_chunks(tokenizer(), "");
  REQUIRE(empty.size() == 1);
  CHECK(empty[0].ids == tokenizer().encode(""));  // what diffusers feeds for ""
  CHECK(empty[0].ids == empty_chunk(chunk_ids(tokenizer())).ids);
}

TEST_CASE("a short prompt's chunk is exactly the tokenizer's encode()", "[prompt][chunks]") {
  const std::string prompt = "a photograph of an astronaut riding a horse, 4k";
  const auto chunks = a1111_chunks(tokenizer(), prompt);
  REQUIRE(chunks.size() == 1);
  CHECK(chunks[0].ids == tokenizer().encode(prompt));
  CHECK(std::all_of(chunks[0].weights.begin(), chunks[0].weights.end(),
                    [](float w) { return w == 1.0f; }));
}

TEST_CASE("comma backtracking moves the words after a near comma to the next chunk",
          "[prompt][chunks]") {
  // 70 tokens, a comma (position 70), 10 more: the chunk fills at 75 with the comma 5 back.
  auto tokens = count_up(70);
  tokens.push_back(kIds.comma);
  const auto tail = count_up(10, 500);
  tokens.insert(tokens.end(), tail.begin(), tail.end());
  auto chunks = build_chunks({{tokens, 1.0f, false}}, kIds);
  REQUIRE(chunks.size() == 2);
  auto first = count_up(70);
  first.push_back(kIds.comma);
  CHECK(body(chunks[0]) == first);  // cut after the comma, padded
  CHECK(body(chunks[1]) == tail);   // the 4 moved tokens and the 6 that followed

  // Backtracking off (0): a plain cut at 75.
  auto plain = build_chunks({{tokens, 1.0f, false}}, kIds, 0);
  REQUIRE(plain.size() == 2);
  CHECK(body(plain[0]).size() == 75);
  CHECK(body(plain[1]).size() == 6);

  // A comma more than 20 tokens back: no backtracking.
  auto far = count_up(54);
  far.push_back(kIds.comma);  // position 54: 75 - 54 = 21 > 20
  const auto rest = count_up(30, 500);
  far.insert(far.end(), rest.begin(), rest.end());
  auto no_back = build_chunks({{far, 1.0f, false}}, kIds);
  REQUIRE(no_back.size() == 2);
  CHECK(body(no_back[0]).size() == 75);
  CHECK(body(no_back[1]).size() == 10);
  // Exactly 20 back (position 55): backtracks.
  far.insert(far.begin(), 99);
  auto at_limit = build_chunks({{far, 1.0f, false}}, kIds);
  REQUIRE(at_limit.size() == 2);
  CHECK(body(at_limit[0]).size() == 56);
  CHECK(body(at_limit[0]).back() == kIds.comma);

  // Weights move with their tokens.
  auto weighted = build_chunks(
      {{count_up(70), 1.0f, false}, {{kIds.comma}, 1.0f, false}, {count_up(10, 500), 1.5f, false}},
      kIds);
  REQUIRE(weighted.size() == 2);
  CHECK(weighted[0].weights[71] == 1.0f);  // the comma, at index 71 (after bos)
  CHECK(weighted[0].weights[72] == 1.0f);  // padding
  for (int i = 1; i <= 10; ++i) CHECK(weighted[1].weights[static_cast<std::size_t>(i)] == 1.5f);
  CHECK(weighted[1].weights[11] == 1.0f);

  // With the real vocabulary: 70 words, ",", 10 words.
  const std::string text = repeat("cat", 70) + ", " + repeat("dog", 10);
  const auto real = a1111_chunks(tokenizer(), text);
  REQUIRE(real.size() == 2);
  CHECK(real[0].ids == tokenizer().encode(repeat("cat", 70) + ","));
  CHECK(real[1].ids == tokenizer().encode(repeat("dog", 10)));
}

TEST_CASE("a comma that lands on a full chunk opens the next one", "[prompt][chunks]") {
  auto tokens = count_up(75);
  tokens.push_back(kIds.comma);
  tokens.push_back(42);
  auto chunks = build_chunks({{tokens, 1.0f, false}}, kIds);
  REQUIRE(chunks.size() == 2);
  CHECK(body(chunks[1]) == std::vector<int64_t>{kIds.comma, 42});
}

TEST_CASE("BREAK closes the chunk", "[prompt][chunks]") {
  auto chunks = build_chunks(
      {{count_up(3), 1.0f, false}, {{}, -1.0f, true}, {count_up(2, 300), 1.0f, false}}, kIds);
  REQUIRE(chunks.size() == 2);
  CHECK(body(chunks[0]) == count_up(3));
  CHECK(body(chunks[1]) == count_up(2, 300));

  const auto real = a1111_chunks(tokenizer(), "a red cat BREAK a blue dog");
  REQUIRE(real.size() == 2);
  CHECK(real[0].ids == tokenizer().encode("a red cat"));
  CHECK(real[1].ids == tokenizer().encode("a blue dog"));
  // A leading BREAK leaves an empty first chunk, a trailing one no extra chunk.
  CHECK(a1111_chunks(tokenizer(), "BREAK cat").size() == 2);
  CHECK(a1111_chunks(tokenizer(), "BREAK cat")[0].ids == tokenizer().encode(""));
  CHECK(a1111_chunks(tokenizer(), "cat BREAK").size() == 1);
  // In brackets it is text (the word "break").
  CHECK(a1111_chunks(tokenizer(), "(cat BREAK dog)").size() == 1);
}

TEST_CASE("weights follow the parse, bos, eos and padding weigh 1", "[prompt][chunks]") {
  const auto chunks = a1111_chunks(tokenizer(), "a (red:1.5) [cat]");
  REQUIRE(chunks.size() == 1);
  CHECK(chunks[0].ids == tokenizer().encode("a red cat"));
  const std::vector<float> head(chunks[0].weights.begin(), chunks[0].weights.begin() + 5);
  CHECK(head == std::vector<float>{1.0f, 1.0f, 1.5f, static_cast<float>(1 / 1.1), 1.0f});
}

TEST_CASE("where pad differs from eos, everything after the first eos is padding",
          "[prompt][chunks]") {
  const ChunkIds sd2{1000, 1001, /*pad=*/0, 7};
  auto chunks = build_chunks({{count_up(3), 1.0f, false}}, sd2);
  REQUIRE(chunks.size() == 1);
  CHECK(chunks[0].ids[4] == 1001);
  CHECK(std::all_of(chunks[0].ids.begin() + 5, chunks[0].ids.end(),
                    [](int64_t id) { return id == 0; }));
  // A full chunk keeps its closing eos.
  auto full = build_chunks({{count_up(75), 1.0f, false}}, sd2);
  CHECK(full[0].ids.back() == 1001);
}
