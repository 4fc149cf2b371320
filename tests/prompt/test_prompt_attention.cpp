// parse_prompt_attention against A1111's own documented examples (the docstring of
// modules/prompt_parser.py parse_prompt_attention, expected values copied from it) and the
// rules of its code: nesting, escapes, BREAK, unbalanced brackets, merging.
#include <catch2/catch.hpp>

#include "pipeline/text/prompt_attention.h"

using diffusiond::parse_prompt_attention;
using diffusiond::WeightedText;
using Pieces = std::vector<WeightedText>;

namespace {
std::string show(const Pieces& pieces) {
  std::string s;
  char buf[64];
  for (const auto& p : pieces) {
    std::snprintf(buf, sizeof buf, "%.17g", p.weight);
    s += "['" + p.text + "', " + buf + "] ";
  }
  return s;
}
#define CHECK_PARSE(prompt, ...)                          \
  do {                                                    \
    const Pieces got = parse_prompt_attention(prompt);    \
    const Pieces want = __VA_ARGS__;                      \
    INFO("got " << show(got) << "\nwant " << show(want)); \
    CHECK(got == want);                                   \
  } while (0)
}  // namespace

TEST_CASE("A1111's documented parse_prompt_attention examples", "[prompt][parser]") {
  CHECK_PARSE("normal text", Pieces{{"normal text", 1.0}});
  CHECK_PARSE("an (important) word", Pieces{{"an ", 1.0}, {"important", 1.1}, {" word", 1.0}});
  CHECK_PARSE("(unbalanced", Pieces{{"unbalanced", 1.1}});
  CHECK_PARSE("\\(literal\\]", Pieces{{"(literal]", 1.0}});
  CHECK_PARSE("(unnecessary)(parens)", Pieces{{"unnecessaryparens", 1.1}});
  CHECK_PARSE("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
              Pieces{{"a ", 1.0},
                     {"house", 1.5730000000000004},
                     {" ", 1.1},
                     {"on", 1.0},
                     {" a ", 1.1},
                     {"hill", 0.55},
                     {", sun, ", 1.1},
                     {"sky", 1.4641000000000006},
                     {".", 1.1}});
}

TEST_CASE("weights multiply through nested brackets, innermost first", "[prompt][parser]") {
  CHECK_PARSE("((a))", Pieces{{"a", 1.1 * 1.1}});
  CHECK_PARSE("[[a]]", Pieces{{"a", (1 / 1.1) * (1 / 1.1)}});
  CHECK_PARSE("(a:1.5)", Pieces{{"a", 1.5}});
  CHECK_PARSE("((a:1.5) b:0.5)", Pieces{{"a", 1.5 * 0.5}, {" b", 0.5}});
  CHECK_PARSE("x (a [b] c) y",
              Pieces{{"x ", 1.0}, {"a ", 1.1}, {"b", (1 / 1.1) * 1.1}, {" c", 1.1}, {" y", 1.0}});
  CHECK_PARSE(
      "(a:+2) (b:-1) (c:.5) (d:3.)",
      Pieces{{"a", 2.0}, {" ", 1.0}, {"b", -1.0}, {" ", 1.0}, {"c", 0.5}, {" ", 1.0}, {"d", 3.0}});
  // Python's \d: any Unicode decimal digit, read as float() reads it (Arabic-Indic 1.5).
  CHECK_PARSE("(a:\u0661.\u0665)", Pieces{{"a", 1.5}});
}

TEST_CASE("(word:1.0) and equal weights merge back into the plain text", "[prompt][parser]") {
  CHECK_PARSE("a photo of a (cat:1.0) on a mat", Pieces{{"a photo of a cat on a mat", 1.0}});
  CHECK_PARSE("", Pieces{{"", 1.0}});
  CHECK_PARSE("()", Pieces{{"", 1.0}});
  CHECK_PARSE("(a)(b)[c]", Pieces{{"ab", 1.1}, {"c", 1 / 1.1}});
}

TEST_CASE("escapes give the literal characters, other backslashes are dropped",
          "[prompt][parser]") {
  CHECK_PARSE("\\(a\\) \\[b\\] c\\\\d", Pieces{{"(a) [b] c\\d", 1.0}});
  CHECK_PARSE("a\\b", Pieces{{"ab", 1.0}});
  CHECK_PARSE("(a\\)b)", Pieces{{"a)b", 1.1}});
  CHECK_PARSE("trailing\\", Pieces{{"trailing", 1.0}});
  CHECK_PARSE("\\(x:1.5\\)", Pieces{{"(x:1.5)", 1.0}});
}

TEST_CASE("unbalanced brackets as A1111 treats them", "[prompt][parser]") {
  CHECK_PARSE("a) b] c", Pieces{{"a) b] c", 1.0}});             // closers without an opener: text
  CHECK_PARSE("[unbalanced", Pieces{{"unbalanced", 1 / 1.1}});  // open to the end
  CHECK_PARSE("((a) b", Pieces{{"a", 1.1 * 1.1}, {" b", 1.1}});
  CHECK_PARSE("a:1.5) b", Pieces{{"a:1.5) b", 1.0}});  // a weight with no `(` open: text
  CHECK_PARSE("(a:1.5", Pieces{{"a:1.5", 1.1}});       // no `)`: the `:` is text
  CHECK_PARSE("([a)]", Pieces{{"a", (1 / 1.1) * 1.1}});
  CHECK_PARSE("[a:1.5)]", Pieces{{"a:1.5)", 1 / 1.1}});
  // Where A1111's float() raises, the `:` is text and scanning goes on after it.
  CHECK_PARSE("(a:1.2.3)", Pieces{{"a:1.2.3", 1.1}});
  CHECK_PARSE("(a:.)", Pieces{{"a:.", 1.1}});
}

TEST_CASE("BREAK splits text into a {BREAK, -1} piece", "[prompt][parser]") {
  CHECK_PARSE("a cat BREAK a dog", Pieces{{"a cat", 1.0}, {"BREAK", -1.0}, {"a dog", 1.0}});
  CHECK_PARSE("BREAK a", Pieces{{"", 1.0}, {"BREAK", -1.0}, {"a", 1.0}});
  CHECK_PARSE("a BREAK BREAK b",
              Pieces{{"a", 1.0}, {"BREAK", -1.0}, {"", 1.0}, {"BREAK", -1.0}, {"b", 1.0}});
  CHECK_PARSE("a,BREAK,b", Pieces{{"a,", 1.0}, {"BREAK", -1.0}, {",b", 1.0}});
  // Not a whole word, or not upper case: text.
  CHECK_PARSE("BREAKfast break aBREAK B_BREAK", Pieces{{"BREAKfast break aBREAK B_BREAK", 1.0}});
  // Inside brackets its weight is multiplied, so it is text again (as in A1111).
  CHECK_PARSE("(a BREAK b)", Pieces{{"a", 1.1}, {"BREAK", -1.1}, {"b", 1.1}});
  CHECK(diffusiond::is_break({"BREAK", -1.0}));
  CHECK_FALSE(diffusiond::is_break({"BREAK", -1.1}));
  CHECK_FALSE(diffusiond::is_break({"BREAK", 1.0}));
  // Whitespace around it (Python's \s, Unicode included) goes with it.
  CHECK_PARSE("a \t\u3000BREAK\n b", Pieces{{"a", 1.0}, {"BREAK", -1.0}, {"b", 1.0}});
}

TEST_CASE("LoRA-style tags and other characters are plain text", "[prompt][parser]") {
  CHECK_PARSE("<lora:name:0.8> a <b>", Pieces{{"<lora:name:0.8> a <b>", 1.0}});
  CHECK_PARSE("caf\xC3\xA9 (\xE7\x8C\xAB:1.2)",
              Pieces{{"caf\xC3\xA9 ", 1.0}, {"\xE7\x8C\xAB", 1.2}});
  // Ill-formed UTF-8 reads as U+FFFD, as the tokenizer reads it.
  CHECK_PARSE("a\xFF", Pieces{{"a\xEF\xBF\xBD", 1.0}});
}
