#include "pipeline/text/unicode_text.h"

#include <utf8proc.h>

#include <algorithm>
#include <cstdlib>
#include <iterator>
#include <memory>
#include <stdexcept>

namespace diffusiond::text {
namespace {

utf8proc_category_t category(char32_t c) {
  if (c > 0x10FFFF) return UTF8PROC_CATEGORY_CN;
  return utf8proc_category(static_cast<utf8proc_int32_t>(c));
}

char32_t simple_lower(char32_t c) {
  return c > 0x10FFFF ? c
                      : static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(c)));
}
char32_t simple_upper(char32_t c) {
  return c > 0x10FFFF ? c
                      : static_cast<char32_t>(utf8proc_toupper(static_cast<utf8proc_int32_t>(c)));
}
char32_t simple_title(char32_t c) {
  return c > 0x10FFFF ? c
                      : static_cast<char32_t>(utf8proc_totitle(static_cast<utf8proc_int32_t>(c)));
}

// Word_Break values MidLetter, MidNumLet and Single_Quote (Unicode WordBreakProperty.txt): part
// of the derived property Case_Ignorable, and not exposed by utf8proc.
constexpr char32_t kMidWordPunctuation[] = {0x0027, 0x002E, 0x003A, 0x00B7, 0x0387, 0x055F,
                                            0x05F4, 0x2018, 0x2019, 0x2024, 0x2027, 0xFE13,
                                            0xFE52, 0xFE55, 0xFF07, 0xFF0E, 0xFF1A};
bool is_mid_word_punctuation(char32_t c) {
  return std::find(std::begin(kMidWordPunctuation), std::end(kMidWordPunctuation), c) !=
         std::end(kMidWordPunctuation);
}

// Derived property Case_Ignorable (Unicode DerivedCoreProperties.txt).
bool is_case_ignorable(char32_t c) {
  switch (category(c)) {
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_SK:
      return true;
    default:
      return is_mid_word_punctuation(c);
  }
}

// Derived property Cased: Lu, Ll, Lt, Other_Lowercase, Other_Uppercase. utf8proc has no
// Other_Lowercase/Other_Uppercase; the members that are not letters have case mappings
// (Roman numerals, circled letters, U+0345) except the ordinal indicators and the squared /
// negative-squared / negative-circled Latin capitals, listed here.
bool is_cased(char32_t c) {
  switch (category(c)) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
      return true;
    default:
      break;
  }
  if (simple_lower(c) != c || simple_upper(c) != c || simple_title(c) != c) return true;
  if (c == 0x00AA || c == 0x00BA) return true;  // ordinal indicators (Other_Lowercase, Lo)
  return (c >= 0x1F130 && c <= 0x1F149) || (c >= 0x1F150 && c <= 0x1F169) ||
         (c >= 0x1F170 && c <= 0x1F189);  // Other_Uppercase, So
}

// CPython's rule for U+03A3 in str.lower(): final form when preceded by a cased character and
// not followed by one, skipping case-ignorable characters on both sides.
bool is_final_sigma(std::u32string_view text, size_t i) {
  size_t j = i;
  while (j > 0 && is_case_ignorable(text[j - 1])) --j;
  if (j == 0 || !is_cased(text[j - 1])) return false;
  size_t k = i + 1;
  while (k < text.size() && is_case_ignorable(text[k])) ++k;
  return k == text.size() || !is_cased(text[k]);
}

std::u32string utf8proc_normalize(std::u32string_view text, int options) {
  if (text.empty()) return {};
  const std::string utf8 = encode_utf8(text);
  utf8proc_uint8_t* mapped = nullptr;
  const utf8proc_ssize_t length = utf8proc_map(
      reinterpret_cast<const utf8proc_uint8_t*>(utf8.data()),
      static_cast<utf8proc_ssize_t>(utf8.size()), &mapped, static_cast<utf8proc_option_t>(options));
  std::unique_ptr<utf8proc_uint8_t, decltype(&std::free)> owner(mapped, &std::free);
  if (length < 0) {
    throw std::runtime_error(std::string("unicode normalisation failed: ") +
                             utf8proc_errmsg(length));
  }
  return decode_utf8(
      std::string_view(reinterpret_cast<const char*>(mapped), static_cast<size_t>(length)));
}

}  // namespace

std::u32string decode_utf8(std::string_view bytes) {
  std::u32string out;
  out.reserve(bytes.size());
  size_t i = 0;
  while (i < bytes.size()) {
    const auto lead = static_cast<unsigned char>(bytes[i]);
    if (lead < 0x80) {
      out.push_back(lead);
      ++i;
      continue;
    }
    int needed = 0;
    char32_t cp = 0;
    unsigned char low = 0x80, high = 0xBF;  // allowed range of the next byte
    if (lead >= 0xC2 && lead <= 0xDF) {
      needed = 1;
      cp = lead & 0x1F;
    } else if (lead >= 0xE0 && lead <= 0xEF) {
      needed = 2;
      cp = lead & 0x0F;
      if (lead == 0xE0) low = 0xA0;   // no overlong forms
      if (lead == 0xED) high = 0x9F;  // no surrogates
    } else if (lead >= 0xF0 && lead <= 0xF4) {
      needed = 3;
      cp = lead & 0x07;
      if (lead == 0xF0) low = 0x90;   // no overlong forms
      if (lead == 0xF4) high = 0x8F;  // nothing above U+10FFFF
    } else {
      out.push_back(0xFFFD);
      ++i;
      continue;
    }
    size_t j = i + 1;
    int got = 0;
    while (got < needed && j < bytes.size()) {
      const auto next = static_cast<unsigned char>(bytes[j]);
      if (next < low || next > high) break;
      cp = (cp << 6) | (next & 0x3F);
      low = 0x80;
      high = 0xBF;
      ++j;
      ++got;
    }
    out.push_back(got == needed ? cp : char32_t{0xFFFD});
    i = j;
  }
  return out;
}

void append_utf8(std::string& out, char32_t c) {
  if (c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) c = 0xFFFD;
  if (c < 0x80) {
    out.push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (c >> 6)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (c >> 12)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (c >> 18)));
    out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

std::string encode_utf8(std::u32string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char32_t c : text) append_utf8(out, c);
  return out;
}

bool is_white_space(char32_t c) {
  if ((c >= 0x09 && c <= 0x0D) || c == 0x85) return true;
  const auto cat = category(c);
  return cat == UTF8PROC_CATEGORY_ZS || cat == UTF8PROC_CATEGORY_ZL || cat == UTF8PROC_CATEGORY_ZP;
}

bool is_python_space(char32_t c) {
  return is_white_space(c) || (c >= 0x1C && c <= 0x1F);
}

bool is_letter(char32_t c) {
  const auto cat = category(c);
  return cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO;
}

bool is_number(char32_t c) {
  const auto cat = category(c);
  return cat == UTF8PROC_CATEGORY_ND || cat == UTF8PROC_CATEGORY_NL || cat == UTF8PROC_CATEGORY_NO;
}

bool is_decimal_digit(char32_t c) {
  return category(c) == UTF8PROC_CATEGORY_ND;
}

bool case_variant_is_letter(char32_t c) {
  for (char32_t v : {simple_lower(c), simple_upper(c), simple_title(c)}) {
    if (v != c && is_letter(v)) return true;
  }
  return false;
}

bool case_variant_is_number(char32_t c) {
  for (char32_t v : {simple_lower(c), simple_upper(c), simple_title(c)}) {
    if (v != c && is_number(v)) return true;
  }
  return false;
}

bool matches_ignoring_case(char32_t c, char ascii) {
  const auto a = static_cast<unsigned char>(ascii);
  if (c == a) return true;
  const bool is_ascii_letter = (a >= 'a' && a <= 'z') || (a >= 'A' && a <= 'Z');
  if (!is_ascii_letter || c > 0x10FFFF) return false;
  const char32_t folded_ascii = (a >= 'A' && a <= 'Z') ? a + ('a' - 'A') : a;
  utf8proc_int32_t folded[4];
  utf8proc_int32_t boundclass = 0;
  const auto n = utf8proc_decompose_char(static_cast<utf8proc_int32_t>(c), folded, 4,
                                         UTF8PROC_CASEFOLD, &boundclass);
  return n == 1 && static_cast<char32_t>(folded[0]) == folded_ascii;
}

std::u32string python_lower(std::u32string_view text) {
  std::u32string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    const char32_t c = text[i];
    if (c == 0x0130) {  // LATIN CAPITAL LETTER I WITH DOT ABOVE: SpecialCasing full mapping
      out.push_back(U'i');
      out.push_back(0x0307);
    } else if (c == 0x03A3) {  // GREEK CAPITAL LETTER SIGMA
      out.push_back(is_final_sigma(text, i) ? 0x03C2 : 0x03C3);
    } else {
      out.push_back(simple_lower(c));
    }
  }
  return out;
}

std::u32string nfc(std::u32string_view text) {
  return utf8proc_normalize(text, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
}

std::u32string nfkc(std::u32string_view text) {
  return utf8proc_normalize(text, UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT);
}

}  // namespace diffusiond::text
