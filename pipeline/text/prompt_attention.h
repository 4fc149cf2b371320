// AUTOMATIC1111's prompt attention (emphasis) syntax: the prompt as a list of (text, weight)
// pieces. Ref: stable-diffusion-webui modules/prompt_parser.py parse_prompt_attention (and its
// re_attention / re_break patterns); written from its documented behaviour, not copied.
//
//   (abc)       abc's weight x 1.1          [abc]   abc's weight / 1.1 (x 1/1.1)
//   (abc:1.5)   abc's weight x 1.5          \( \) \[ \] \\   the literal character
//   BREAK       (upper case, a whole word) a piece {"BREAK", -1}: the chunker starts a new chunk
//   anything else is text, `<` and `>` included (LoRA tags are taken out before this runs).
//
// As A1111 does: brackets nest (weights multiply, innermost first); a `)` or `]` without its
// opening bracket is text; a bracket left open at the end applies its factor up to the end; a
// `\` before any other character is dropped; a `(...:w)` with no `(` open is text; weights of
// the pieces inside brackets (a BREAK's -1 included) are multiplied; neighbouring pieces of
// exactly equal weight are merged; an empty result is {"", 1.0}.
// Where A1111 raises (a `:number)` that Python's float() rejects, such as `(a:1.2.3)` or
// `(a:.)`), the `:` is taken as text and scanning goes on after it, as if that form did not
// exist. Digits are `\d` of Python's str patterns (any Unicode decimal digit, read with its
// value as float() does); whitespace and word boundaries around BREAK are Python's too.
// Thread-safety: pure functions; any thread.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace diffusiond {

struct WeightedText {
  std::string text;  // UTF-8 (ill-formed input comes back with U+FFFD, as the tokenizer reads it)
  double weight = 1.0;
  bool operator==(const WeightedText&) const = default;
};

// A BREAK marker as parse_prompt_attention leaves it: text "BREAK", weight exactly -1 (inside
// brackets its weight changes and it is plain text again, as in A1111).
bool is_break(const WeightedText& piece);

std::vector<WeightedText> parse_prompt_attention(std::string_view prompt);

}  // namespace diffusiond
