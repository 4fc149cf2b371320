// Ref: stable-diffusion-webui modules/prompt_parser.py parse_prompt_attention. The scanner takes
// re_attention's alternatives in its order (escapes, a lone backslash, `(`, `[`,
// `:number)`, `)`, `]`, a run of other characters, `:`); every character belongs to one token.
#include "pipeline/text/prompt_attention.h"

#include <charconv>
#include <cmath>
#include <limits>
#include <optional>

#include "pipeline/text/unicode_text.h"

namespace diffusiond {
namespace {

constexpr double kRoundMultiplier = 1.1;
constexpr double kSquareMultiplier = 1 / 1.1;

bool is_special(char32_t c) {
  return c == U'\\' || c == U'(' || c == U')' || c == U'[' || c == U']' || c == U':';
}

// Python re's \w in str patterns: alphanumeric (str.isalnum) or '_'.
bool is_word(char32_t c) {
  return c == U'_' || text::is_letter(c) || text::is_number(c);
}

// The value of a Unicode decimal digit: Nd characters come in runs of ten, 0 to 9.
int digit_value(char32_t c) {
  char32_t start = c;
  while (start > 0 && text::is_decimal_digit(start - 1)) --start;
  return static_cast<int>((c - start) % 10);
}

// Python's float() of what `[+-]?[.\d]+` matched; nullopt where float() raises (no digit, or
// more than one '.').
std::optional<double> python_float(std::u32string_view s) {
  std::string ascii;
  bool negative = false;
  std::size_t i = 0;
  if (!s.empty() && (s[0] == U'+' || s[0] == U'-')) {
    negative = s[0] == U'-';
    i = 1;
  }
  int dots = 0, digits = 0;
  bool nonzero_integer = false;
  for (; i < s.size(); ++i) {
    if (s[i] == U'.') {
      ++dots;
      ascii += '.';
      continue;
    }
    const int v = digit_value(s[i]);
    if (v != 0 && dots == 0) nonzero_integer = true;
    ascii += static_cast<char>('0' + v);
    ++digits;
  }
  if (digits == 0 || dots > 1) return std::nullopt;
  double value = 0;
  const auto [end, ec] = std::from_chars(ascii.data(), ascii.data() + ascii.size(), value);
  if (ec == std::errc::result_out_of_range)
    value = nonzero_integer ? std::numeric_limits<double>::infinity() : 0.0;
  else if (ec != std::errc() || end != ascii.data() + ascii.size())
    return std::nullopt;
  return negative ? -value : value;
}

class Parser {
 public:
  explicit Parser(std::u32string text) : t_(std::move(text)) {}

  std::vector<WeightedText> run() {
    std::size_t i = 0;
    while (i < t_.size()) i = token(i);
    for (std::size_t pos : round_) multiply_range(pos, kRoundMultiplier);
    for (std::size_t pos : square_) multiply_range(pos, kSquareMultiplier);
    if (res_.empty()) res_.push_back({"", 1.0});
    std::vector<WeightedText> merged;
    for (auto& piece : res_) {
      if (!merged.empty() && merged.back().weight == piece.weight)
        merged.back().text += piece.text;
      else
        merged.push_back(std::move(piece));
    }
    return merged;
  }

 private:
  // Handles the token at i; returns where the next one starts.
  std::size_t token(std::size_t i) {
    const char32_t c = t_[i];
    if (c == U'\\') {  // `\(` `\)` `\[` `\]` `\\` give the character; a lone `\` gives ""
      const bool escape =
          i + 1 < t_.size() && (t_[i + 1] == U'(' || t_[i + 1] == U')' || t_[i + 1] == U'[' ||
                                t_[i + 1] == U']' || t_[i + 1] == U'\\');
      append(escape ? t_.substr(i + 1, 1) : std::u32string{}, 1.0);
      return i + (escape ? 2 : 1);
    }
    if (c == U'(') {
      round_.push_back(res_.size());
      return i + 1;
    }
    if (c == U'[') {
      square_.push_back(res_.size());
      return i + 1;
    }
    if (c == U':') {
      if (const std::size_t end = weight_end(i); end != 0) {
        if (round_.empty()) {  // text, as A1111 has it
          append_text(t_.substr(i, end - i));
          return end;
        }
        if (auto w = python_float(std::u32string_view(t_).substr(i + 1, end - i - 2))) {
          multiply_range(pop(round_), *w);
          return end;
        }
      }
      append_text(U":");
      return i + 1;
    }
    if (c == U')' && !round_.empty()) {
      multiply_range(pop(round_), kRoundMultiplier);
      return i + 1;
    }
    if (c == U']' && !square_.empty()) {
      multiply_range(pop(square_), kSquareMultiplier);
      return i + 1;
    }
    if (c == U')' || c == U']') {
      append_text(t_.substr(i, 1));
      return i + 1;
    }
    std::size_t end = i;
    while (end < t_.size() && !is_special(t_[end])) ++end;
    append_text(t_.substr(i, end - i));
    return end;
  }

  // `:([+-]?[.\d]+)\)` at i: one past its `)`, or 0 when it does not match there.
  std::size_t weight_end(std::size_t i) const {
    std::size_t j = i + 1;
    if (j < t_.size() && (t_[j] == U'+' || t_[j] == U'-')) ++j;
    const std::size_t first = j;
    while (j < t_.size() && (t_[j] == U'.' || text::is_decimal_digit(t_[j]))) ++j;
    if (j == first || j >= t_.size() || t_[j] != U')') return 0;
    return j + 1;
  }

  // A text token: split at re_break (`\s*\bBREAK\b\s*`), a {"BREAK", -1} between the parts.
  void append_text(std::u32string_view s) {
    static constexpr std::u32string_view kBreak = U"BREAK";
    std::size_t part_start = 0, search = 0;
    while (true) {
      const std::size_t at = s.find(kBreak, search);
      if (at == std::u32string_view::npos) break;
      const std::size_t after = at + kBreak.size();
      const bool bounded =
          (at == 0 || !is_word(s[at - 1])) && (after == s.size() || !is_word(s[after]));
      if (!bounded) {
        search = at + 1;
        continue;
      }
      std::size_t start = at, end = after;
      while (start > part_start && text::is_python_space(s[start - 1])) --start;
      while (end < s.size() && text::is_python_space(s[end])) ++end;
      append(s.substr(part_start, start - part_start), 1.0);
      res_.push_back({"BREAK", -1.0});
      part_start = search = end;
    }
    append(s.substr(part_start), 1.0);
  }

  void append(std::u32string_view s, double weight) {
    res_.push_back({text::encode_utf8(s), weight});
  }

  void multiply_range(std::size_t start, double multiplier) {
    for (std::size_t p = start; p < res_.size(); ++p) res_[p].weight *= multiplier;
  }

  static std::size_t pop(std::vector<std::size_t>& stack) {
    const std::size_t top = stack.back();
    stack.pop_back();
    return top;
  }

  std::u32string t_;
  std::vector<WeightedText> res_;
  std::vector<std::size_t> round_, square_;  // positions in res_ where each open bracket began
};

}  // namespace

bool is_break(const WeightedText& piece) {
  return piece.weight == -1.0 && piece.text == "BREAK";
}

std::vector<WeightedText> parse_prompt_attention(std::string_view prompt) {
  return Parser(text::decode_utf8(prompt)).run();
}

}  // namespace diffusiond
