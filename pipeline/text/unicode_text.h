// Unicode helpers for the CLIP tokenizer, over UTF-32 text. Character properties, case mappings
// and normalisation come from utf8proc; the only code-point lists here are the few derived
// properties that utf8proc does not expose (see unicode_text.cpp).
// Thread-safety: free functions without state; callable from any thread.
#pragma once

#include <string>
#include <string_view>

namespace diffusiond::text {

// UTF-8 -> UTF-32. Each maximal ill-formed subsequence becomes one U+FFFD, like Python's
// bytes.decode("utf-8", errors="replace").
std::u32string decode_utf8(std::string_view bytes);
std::string encode_utf8(std::u32string_view text);
void append_utf8(std::string& out, char32_t c);

// Unicode White_Space: what `\s` matches in the `regex` module that transformers uses.
bool is_white_space(char32_t c);
// Python's str.isspace(): White_Space plus U+001C..U+001F (what str.strip() removes).
bool is_python_space(char32_t c);
bool is_letter(char32_t c);         // \p{L}
bool is_number(char32_t c);         // \p{N}
bool is_decimal_digit(char32_t c);  // \p{Nd}, what Python's re `\d` matches in str patterns

// True when some simple case variant of c (lower, upper, title) is a letter / a number: the
// `regex` module with IGNORECASE treats such a character as a member of \p{L} / \p{N} in negated
// classes (e.g. U+0345, whose upper case is a Greek letter).
bool case_variant_is_letter(char32_t c);
bool case_variant_is_number(char32_t c);

// Case-insensitive match of c against the ASCII letter or symbol `ascii`, as the `regex` module's
// IGNORECASE does (simple case folding: 's' also matches U+017F LONG S).
bool matches_ignoring_case(char32_t c, char ascii);

// Python's str.lower(): full lower-case mapping (U+0130 -> "i\u0307") and the Final_Sigma rule
// for U+03A3.
std::u32string python_lower(std::u32string_view text);

std::u32string nfc(std::u32string_view text);
std::u32string nfkc(std::u32string_view text);

}  // namespace diffusiond::text
