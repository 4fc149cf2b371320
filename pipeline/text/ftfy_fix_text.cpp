// Ref: ftfy 6.3.1 ftfy/__init__.py (fix_text, fix_and_explain), ftfy/fixes.py, ftfy/chardata.py.
#include "pipeline/text/ftfy_fix_text.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <iterator>
#include <optional>

#include "pipeline/text/unicode_text.h"

namespace diffusiond::text {
namespace {

struct HtmlEntity {
  std::string_view name;   // between '&' and ';'
  std::string_view value;  // UTF-8
};
struct CharrefReplacement {
  char32_t number;
  char32_t replacement;
};
#include "pipeline/text/html_entities.inc"

constexpr size_t kMaxSegmentLength = 1000000;  // ftfy's max_decode_length

bool is_ascii_alnum(char32_t c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}
bool is_ascii_hex(char32_t c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}
int hex_value(char32_t c) {
  if (c >= '0' && c <= '9') return static_cast<int>(c - '0');
  if (c >= 'a' && c <= 'f') return static_cast<int>(c - 'a' + 10);
  return static_cast<int>(c - 'A' + 10);
}

const HtmlEntity* find_entity(std::string_view name) {
  const auto* end = std::end(kHtmlEntities);
  const auto* it =
      std::lower_bound(std::begin(kHtmlEntities), end, name,
                       [](const HtmlEntity& e, std::string_view n) { return e.name < n; });
  return (it != end && it->name == name) ? it : nullptr;
}

// html.unescape of "&#BODY;": the decoded text, or nothing when html.unescape would not consume
// the whole reference (then ftfy keeps it as it is).
std::optional<std::u32string> decode_numeric_reference(std::u32string_view body) {
  const bool hex = !body.empty() && (body[0] == 'x' || body[0] == 'X');
  const std::u32string_view digits = hex ? body.substr(1) : body;
  if (digits.empty()) return std::nullopt;
  constexpr char32_t kTooLarge = 0x110000;
  char32_t number = 0;
  for (char32_t c : digits) {
    if (hex ? !is_ascii_hex(c) : !(c >= '0' && c <= '9')) return std::nullopt;
    const char32_t digit = hex ? static_cast<char32_t>(hex_value(c)) : c - '0';
    number = std::min<char32_t>(kTooLarge, number * (hex ? 16 : 10) + digit);
  }
  for (const auto& r : kCharrefReplacements) {
    if (r.number == number) return std::u32string(1, r.replacement);
  }
  if ((number >= 0xD800 && number <= 0xDFFF) || number > 0x10FFFF) return std::u32string(1, 0xFFFD);
  if (std::binary_search(std::begin(kCharrefDropped), std::end(kCharrefDropped), number)) {
    return std::u32string();
  }
  return std::u32string(1, number);
}

// Replacement for the reference text[begin, end) ("&...;"), or nullopt to keep it.
std::optional<std::u32string> decode_reference(std::u32string_view ref) {
  const bool numeric = ref[1] == '#';
  const std::u32string_view body = ref.substr(numeric ? 2 : 1, ref.size() - (numeric ? 3 : 2));
  if (!numeric) {
    std::string name;
    for (char32_t c : body) name.push_back(static_cast<char>(c));  // ASCII by construction
    if (const HtmlEntity* e = find_entity(name)) return decode_utf8(e->value);
    return std::nullopt;
  }
  auto decoded = decode_numeric_reference(body);
  // ftfy keeps the reference when the decoded text contains ';' (its test for a partial decode).
  if (decoded && decoded->find(U';') != std::u32string::npos) return std::nullopt;
  return decoded;
}

// Length of the `&#?[0-9A-Za-z]{1,24};` match at text[i], or 0.
size_t reference_length_at(std::u32string_view text, size_t i) {
  if (text[i] != '&') return 0;
  size_t j = i + 1;
  if (j < text.size() && text[j] == '#') ++j;
  size_t run = 0;
  while (j + run < text.size() && is_ascii_alnum(text[j + run])) ++run;
  if (run < 1 || run > 24 || j + run >= text.size() || text[j + run] != ';') return 0;
  return j + run + 1 - i;
}

std::u32string fix_c1_controls(std::u32string_view text) {
  std::u32string out(text);
  for (char32_t& c : out) {
    if (c >= 0x80 && c <= 0x9F) c = kWindows1252C1[c - 0x80];
  }
  return out;
}

// ftfy's LIGATURES: Latin typographic ligatures and legacy digraphs, split into their letters.
std::u32string_view ligature_letters(char32_t c) {
  switch (c) {
    case 0x0132:
      return U"IJ";
    case 0x0133:
      return U"ij";
    case 0x0149:
      return U"\u02BCn";
    case 0x01F1:
      return U"DZ";
    case 0x01F2:
      return U"Dz";
    case 0x01F3:
      return U"dz";
    case 0x01C4:
      return U"D\u017D";
    case 0x01C5:
      return U"D\u017E";
    case 0x01C6:
      return U"d\u017E";
    case 0x01C7:
      return U"LJ";
    case 0x01C8:
      return U"Lj";
    case 0x01C9:
      return U"lj";
    case 0x01CA:
      return U"NJ";
    case 0x01CB:
      return U"Nj";
    case 0x01CC:
      return U"nj";
    case 0xFB00:
      return U"ff";
    case 0xFB01:
      return U"fi";
    case 0xFB02:
      return U"fl";
    case 0xFB03:
      return U"ffi";
    case 0xFB04:
      return U"ffl";
    case 0xFB05:
      return U"\u017Ft";
    case 0xFB06:
      return U"st";
    default:
      return {};
  }
}

std::u32string fix_latin_ligatures(std::u32string_view text) {
  std::u32string out;
  out.reserve(text.size());
  for (char32_t c : text) {
    const auto letters = ligature_letters(c);
    if (letters.empty()) {
      out.push_back(c);
    } else {
      out.append(letters);
    }
  }
  return out;
}

// ftfy's WIDTH_MAP: U+3000 -> ' ', and each of U+FF01..U+FFEF -> its NFKC form when different.
const std::array<std::u32string, 0xFFF0 - 0xFF01>& width_map() {
  static const auto table = [] {
    std::array<std::u32string, 0xFFF0 - 0xFF01> map;
    for (char32_t c = 0xFF01; c < 0xFFF0; ++c) {
      const std::u32string one(1, c);
      std::u32string folded = nfkc(one);
      if (folded != one) map[c - 0xFF01] = std::move(folded);
    }
    return map;
  }();
  return table;
}

std::u32string fix_character_width(std::u32string_view text) {
  const auto& map = width_map();
  std::u32string out;
  out.reserve(text.size());
  for (char32_t c : text) {
    if (c == 0x3000) {
      out.push_back(U' ');
    } else if (c >= 0xFF01 && c < 0xFFF0 && !map[c - 0xFF01].empty()) {
      out.append(map[c - 0xFF01]);
    } else {
      out.push_back(c);
    }
  }
  return out;
}

std::u32string uncurl_quotes(std::u32string_view text) {
  std::u32string out(text);
  for (char32_t& c : out) {
    if (c == 0x02BC || (c >= 0x2018 && c <= 0x201B)) c = U'\'';
    if (c >= 0x201C && c <= 0x201F) c = U'"';
  }
  return out;
}

std::u32string fix_line_breaks(std::u32string_view text) {
  std::u32string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    const char32_t c = text[i];
    if (c == U'\r' && i + 1 < text.size() && text[i + 1] == U'\n') {
      out.push_back(U'\n');
      ++i;
    } else if (c == U'\r' || c == 0x2028 || c == 0x2029 || c == 0x85) {
      out.push_back(U'\n');
    } else {
      out.push_back(c);
    }
  }
  return out;
}

// Removes ANSI escapes: ESC '[' (decimal digit | ';')* ASCII letter.
std::u32string remove_terminal_escapes(std::u32string_view text) {
  std::u32string out;
  out.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    if (text[i] == 0x1B && i + 1 < text.size() && text[i + 1] == U'[') {
      size_t j = i + 2;
      while (j < text.size() && (text[j] == U';' || is_decimal_digit(text[j]))) ++j;
      if (j < text.size() && text[j] < 0x80 && std::isalpha(static_cast<int>(text[j]))) {
        i = j + 1;
        continue;
      }
    }
    out.push_back(text[i]);
    ++i;
  }
  return out;
}

bool is_removed_control(char32_t c) {
  return c <= 0x08 || c == 0x0B || (c >= 0x0E && c <= 0x1F) || c == 0x7F ||
         (c >= 0x206A && c <= 0x206F) || c == 0xFEFF || (c >= 0xFFF9 && c <= 0xFFFC);
}

std::u32string remove_control_chars(std::u32string_view text) {
  std::u32string out;
  out.reserve(text.size());
  for (char32_t c : text) {
    if (!is_removed_control(c)) out.push_back(c);
  }
  return out;
}

// ftfy.fix_and_explain on one segment: all fixers in order until nothing changes. Each round
// that changes the text either shortens it (HTML references) or applies a fixer whose output the
// fixers leave alone, so this ends.
std::u32string fix_segment(std::u32string text, bool unescape) {
  while (true) {
    std::u32string fixed = unescape ? unescape_html(text) : text;
    fixed = fix_c1_controls(fixed);
    fixed = fix_latin_ligatures(fixed);
    fixed = fix_character_width(fixed);
    fixed = uncurl_quotes(fixed);
    fixed = fix_line_breaks(fixed);
    fixed = remove_terminal_escapes(fixed);
    fixed = remove_control_chars(fixed);
    fixed = nfc(fixed);
    if (fixed == text) return fixed;
    text = std::move(fixed);
  }
}

}  // namespace

std::u32string unescape_html(std::u32string_view text) {
  std::u32string out;
  out.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    const size_t length = reference_length_at(text, i);
    if (length == 0) {
      out.push_back(text[i]);
      ++i;
      continue;
    }
    const std::u32string_view ref = text.substr(i, length);
    if (auto decoded = decode_reference(ref)) {
      out.append(*decoded);
    } else {
      out.append(ref);
    }
    i += length;
  }
  return out;
}

std::u32string ftfy_fix_text(std::u32string_view text) {
  std::u32string out;
  out.reserve(text.size());
  bool unescape = true;  // "auto": switched off for good by the first segment containing '<'
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t newline = text.find(U'\n', pos);
    size_t end = newline == std::u32string_view::npos ? text.size() : newline + 1;
    end = std::min(end, pos + kMaxSegmentLength);
    const std::u32string_view segment = text.substr(pos, end - pos);
    if (segment.find(U'<') != std::u32string_view::npos) unescape = false;
    out += fix_segment(std::u32string(segment), unescape);
    pos = end;
  }
  return out;
}

}  // namespace diffusiond::text
