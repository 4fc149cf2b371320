// The clean-up and pre-tokenisation edge cases beyond the golden file. Expected values were
// recorded once from the references themselves: ftfy 6.3.1 `fix_text` followed by transformers'
// whitespace_clean and Python 3.11's str.lower() for the texts, and for the ids CLIP's
// pre-tokenisation pattern run by the `regex` module (IGNORECASE) with the fixture's BPE.
#include <catch2/catch.hpp>

#include <string>
#include <utility>
#include <vector>

#include "pipeline/text/unicode_text.h"
#include "tokenizer_test_util.h"

using tokenizer_test::fixture_tokenizer_instance;

TEST_CASE("clean-up: ftfy fix_text, whitespace and str.lower() edge cases",
          "[tokenizer][cleanup]") {
  const auto& tok = fixture_tokenizer_instance();
  const std::vector<std::pair<std::string, std::string>> cases = {
      // HTML references: repeated until stable; '<' in a line turns unescaping off from that
      // line on; numeric references decoded like html.unescape, kept when they decode to ';'.
      {"&amp;amp;lt;3", "<3"},
      {"a &lt; b\nc &amp; d", "a < b c & d"},
      {"&lt;b&gt; <i>", "&lt;b&gt; <i>"},
      {"x\ny &amp; z\n<\nw &amp; v", "x y & z < w &amp; v"},
      {"semi&#59;colon &#x3B;", "semi&#59;colon &#x3b;"},
      {"nul&#0;here", "nul\uFFFDhere"},
      {"euro&#128;&#x80; &#x81;", "euro\u20AC\u20AC \u0081"},
      {"big&#x110000;&#99999999999999999999;", "big\uFFFD\uFFFD"},
      {"drop&#1;&#xFFFE;x", "dropx"},
      {"P&EACUTE;REZ &NTILDE; &nTILDE; BUNDESSTRA&SZLIG;E",
       "p\u00E9rez \u00F1 &ntilde; bundesstrasse"},
      {"&notanentity; &#12a; &#x; &not", "&notanentity; &#12a; &#x; &not"},
      {"c1\u0080\u0085\u0091\u0092\u0081end", "c1\u20AC\u2026''\u0081end"},
      {"\u0149 \uFB05 \u01C4 \u0133", "'n \u017Ft d\u017E ij"},
      {"\uFF76\uFF9E\uFF77\uFF9E \uFF8A\uFF9F", "\u30AC\u30AE \u30D1"},
      {"\033[1;31mred\033[0m \033[\u0663m", "red"},
      {"a\u2028b\u2029c\rd", "a b c d"},
      {"zero\uFEFFwidth\u206Ajoin\uFFFCobj", "zerowidthjoinobj"},
      {"\u03A3\u0391\u03A3 \u03A3 \u0391\u03A3. \u0391\u0301\u03A3 \u0391\u03A3\u0391 "
       "\u03A3'\u0391 1\u03A3",
       "\u03C3\u03B1\u03C2 \u03C3 \u03B1\u03C2. \u03AC\u03C2 \u03B1\u03C3\u03B1 \u03C3'\u03B1 "
       "1\u03C3"},
      {"\u0130\u0130 \u1E9E \u212A \u216B \u24B6", "i\u0307i\u0307 \u00DF k \u217B \u24D0"},
      {"e\u0301\u0327 \u212B", "\u0229\u0301 \u00E5"},
  };
  for (const auto& [input, expected] : cases) {
    INFO("input: " << input);
    CHECK(tok.normalize(input) == expected);
  }
}

TEST_CASE("pre-tokenisation: IGNORECASE, dropped marks and literal special tokens",
          "[tokenizer][cleanup]") {
  const auto& tok = fixture_tokenizer_instance();
  // "'s" also matches "'ſ" (U+017F); U+0345 matches no alternative and vanishes; an added token
  // splits the text before clean-up, while an upper-case or escaped one is found by the pattern.
  const std::vector<std::pair<std::string, std::vector<int64_t>>> cases = {
      {"it'\u017F fine", {585, 6, 129, 379, 3797}},
      {"IT'S", {585, 568}},
      {"a\u0345b", {320, 321}},
      {"!<|endoftext|>x", {256, 49407, 343}},
      {"<|ENDOFTEXT|> end", {49407, 806}},
      {"&lt;|endoftext|&gt;", {49407}},
      {"<|\u017Ftartoftext|>", {27, 91, 129, 123, 2002, 6659, 18169, 91, 285}},
  };
  for (const auto& [input, expected] : cases) {
    INFO("input: " << input);
    CHECK(tok.token_ids(input) == expected);
  }
}

TEST_CASE("utf-8 decoding replaces ill-formed bytes like Python's errors='replace'",
          "[tokenizer][cleanup]") {
  using diffusiond::text::decode_utf8;
  CHECK(decode_utf8("a\xff"
                    "b") == U"a\uFFFDb");
  CHECK(decode_utf8("\xe0\x80") == U"\uFFFD\uFFFD");                      // overlong lead
  CHECK(decode_utf8("\xf0\x9f\x98") == U"\uFFFD");                        // truncated sequence
  CHECK(decode_utf8("\xed\xa0\x80") == U"\uFFFD\uFFFD\uFFFD");            // encoded surrogate
  CHECK(decode_utf8("\xf4\x90\x80\x80") == U"\uFFFD\uFFFD\uFFFD\uFFFD");  // above U+10FFFF
  CHECK(decode_utf8("\xe2\x82\xac\x80") == U"\u20AC\uFFFD");
  CHECK(diffusiond::text::encode_utf8(U"a\u20AC\U0001F431") == "a\xe2\x82\xac\xf0\x9f\x90\xb1");
}
