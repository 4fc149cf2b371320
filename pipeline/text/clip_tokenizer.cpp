// Ref: transformers CLIPTokenizer (_tokenize, bpe, build_inputs_with_special_tokens) and
// PreTrainedTokenizer.tokenize (added-token split), v4.38.2.
#include "pipeline/text/clip_tokenizer.h"

#include <mutex>
#include <string_view>

#include "pipeline/text/ftfy_fix_text.h"
#include "pipeline/text/unicode_text.h"

namespace diffusiond {
namespace {

// The cache holds byte-encoded words -> ids. User prompts are unbounded, so it is emptied when
// it reaches this size (transformers' dict grows forever).
constexpr size_t kMaxCachedWords = 100000;

// whitespace_clean(): runs of White_Space become one space, then str.strip().
std::u32string whitespace_clean(std::u32string_view text) {
  std::u32string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    if (text::is_white_space(text[i])) {
      out.push_back(U' ');
      while (i < text.size() && text::is_white_space(text[i])) ++i;
    } else {
      out.push_back(text[i++]);
    }
  }
  size_t begin = 0, end = out.size();
  while (begin < end && text::is_python_space(out[begin])) ++begin;
  while (end > begin && text::is_python_space(out[end - 1])) --end;
  return out.substr(begin, end - begin);
}

// _tokenize's clean-up: whitespace_clean(ftfy.fix_text(text)).lower().
std::u32string clean_text(std::u32string_view text) {
  return text::python_lower(whitespace_clean(text::ftfy_fix_text(text)));
}

bool starts_with_ignoring_case(std::u32string_view text, size_t at, std::string_view literal) {
  if (text.size() - at < literal.size()) return false;
  for (size_t k = 0; k < literal.size(); ++k) {
    if (!text::matches_ignoring_case(text[at + k], literal[k])) return false;
  }
  return true;
}

// Length of the match of CLIP's pattern
//   <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
// (regex module, IGNORECASE) at text[at], or 0 when no alternative matches there.
size_t pretoken_length_at(std::u32string_view text, size_t at) {
  for (std::string_view literal : {"<|startoftext|>", "<|endoftext|>"}) {
    if (starts_with_ignoring_case(text, at, literal)) return literal.size();
  }
  if (text[at] == U'\'') {
    for (std::string_view suffix : {"s", "t", "re", "ve", "m", "ll", "d"}) {
      if (starts_with_ignoring_case(text, at + 1, suffix)) return 1 + suffix.size();
    }
  }
  const char32_t c = text[at];
  if (text::is_letter(c)) {
    size_t end = at + 1;
    while (end < text.size() && text::is_letter(text[end])) ++end;
    return end - at;
  }
  if (text::is_number(c)) return 1;
  // Under IGNORECASE the negated class also rejects characters with a letter/number case variant.
  auto is_other = [](char32_t ch) {
    return !text::is_white_space(ch) && !text::is_letter(ch) && !text::is_number(ch) &&
           !text::case_variant_is_letter(ch) && !text::case_variant_is_number(ch);
  };
  if (!is_other(c)) return 0;
  size_t end = at + 1;
  while (end < text.size() && is_other(text[end])) ++end;
  return end - at;
}

// The position and length of the leftmost-longest added token in text[from...], if any.
struct AddedMatch {
  size_t at = std::u32string::npos;
  size_t length = 0;
  int64_t id = 0;
};
AddedMatch find_added_token(std::u32string_view text, size_t from,
                            const std::vector<std::pair<std::u32string, int64_t>>& tokens) {
  for (size_t at = from; at < text.size(); ++at) {
    AddedMatch best;
    for (const auto& [content, id] : tokens) {
      if (content.size() > best.length && text.substr(at, content.size()) == content) {
        best = {at, content.size(), id};
      }
    }
    if (best.length > 0) return best;
  }
  return {};
}

}  // namespace

struct ClipTokenizer::BpeCache {
  std::mutex mutex;
  std::unordered_map<std::string, std::vector<int64_t>> words;
};

ClipTokenizer::ClipTokenizer() : cache_(std::make_unique<BpeCache>()) {}
ClipTokenizer::ClipTokenizer(ClipTokenizer&&) noexcept = default;
ClipTokenizer& ClipTokenizer::operator=(ClipTokenizer&&) noexcept = default;
ClipTokenizer::~ClipTokenizer() = default;

std::optional<int64_t> ClipTokenizer::vocab_id(const std::string& symbol) const {
  if (auto it = vocab_.find(symbol); it != vocab_.end()) return it->second;
  return std::nullopt;
}

int64_t ClipTokenizer::id_of_symbol(const std::string& symbol) const {
  if (auto it = added_token_ids_.find(symbol); it != added_token_ids_.end()) return it->second;
  if (auto it = vocab_.find(symbol); it != vocab_.end()) return it->second;
  if (unk_id_ < 0) throw TokenizerError("BPE symbol '" + symbol + "' is not in the vocabulary");
  return unk_id_;
}

void ClipTokenizer::append_word_ids(const std::string& word, std::vector<int64_t>& ids) const {
  {
    std::lock_guard<std::mutex> lock(cache_->mutex);
    if (auto it = cache_->words.find(word); it != cache_->words.end()) {
      ids.insert(ids.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int64_t> word_ids;
  if (word == "<|startoftext|>" || word == "<|endoftext|>") {
    word_ids.push_back(id_of_symbol(word));  // pre-seeded in CLIPTokenizer's cache
  } else {
    // Symbols: one per stand-in character, the last one marked "</w>" (end of word).
    std::vector<std::string> symbols;
    for (size_t i = 0; i < word.size();) {
      size_t length = 1;
      const auto lead = static_cast<unsigned char>(word[i]);
      if (lead >= 0xF0)
        length = 4;
      else if (lead >= 0xE0)
        length = 3;
      else if (lead >= 0xC0)
        length = 2;
      symbols.push_back(word.substr(i, length));
      i += length;
    }
    symbols.back() += "</w>";
    while (symbols.size() > 1) {
      int best_rank = -1;
      size_t best = 0;
      for (size_t i = 0; i + 1 < symbols.size(); ++i) {
        auto it = merge_ranks_.find(symbols[i] + " " + symbols[i + 1]);
        if (it != merge_ranks_.end() && (best_rank < 0 || it->second < best_rank)) {
          best_rank = it->second;
          best = i;
        }
      }
      if (best_rank < 0) break;
      const std::string first = symbols[best], second = symbols[best + 1];
      std::vector<std::string> merged;
      merged.reserve(symbols.size());
      for (size_t i = 0; i < symbols.size();) {
        if (i + 1 < symbols.size() && symbols[i] == first && symbols[i + 1] == second) {
          merged.push_back(first + second);
          i += 2;
        } else {
          merged.push_back(symbols[i++]);
        }
      }
      symbols = std::move(merged);
    }
    for (const auto& symbol : symbols) word_ids.push_back(id_of_symbol(symbol));
  }
  ids.insert(ids.end(), word_ids.begin(), word_ids.end());
  std::lock_guard<std::mutex> lock(cache_->mutex);
  if (cache_->words.size() >= kMaxCachedWords) cache_->words.clear();
  cache_->words.emplace(word, std::move(word_ids));
}

void ClipTokenizer::append_piece_ids(const std::u32string& piece, std::vector<int64_t>& ids) const {
  const std::u32string cleaned = clean_text(piece);
  size_t at = 0;
  while (at < cleaned.size()) {
    const size_t length = pretoken_length_at(cleaned, at);
    if (length == 0) {
      ++at;  // whitespace, or a character no alternative accepts
      continue;
    }
    std::string word;
    for (unsigned char byte : text::encode_utf8(std::u32string_view(cleaned).substr(at, length))) {
      text::append_utf8(word, byte_encoder_[byte]);
    }
    append_word_ids(word, ids);
    at += length;
  }
}

std::vector<int64_t> ClipTokenizer::token_ids(const std::string& text) const {
  const std::u32string input = text::decode_utf8(text);
  std::vector<int64_t> ids;
  size_t from = 0;
  while (from < input.size()) {
    const AddedMatch match = find_added_token(input, from, added_tokens_);
    const size_t piece_end = match.length > 0 ? match.at : input.size();
    if (piece_end > from) append_piece_ids(input.substr(from, piece_end - from), ids);
    if (match.length == 0) break;
    ids.push_back(match.id);
    from = match.at + match.length;
  }
  return ids;
}

std::vector<int64_t> ClipTokenizer::encode(const std::string& text) const {
  std::vector<int64_t> tokens = token_ids(text);
  const size_t room = static_cast<size_t>(max_length_) - 2;
  if (tokens.size() > room) tokens.resize(room);
  std::vector<int64_t> ids;
  ids.reserve(static_cast<size_t>(max_length_));
  ids.push_back(bos_id_);
  ids.insert(ids.end(), tokens.begin(), tokens.end());
  ids.push_back(eos_id_);
  ids.resize(static_cast<size_t>(max_length_), pad_id_);
  return ids;
}

std::string ClipTokenizer::normalize(const std::string& text) const {
  return text::encode_utf8(clean_text(text::decode_utf8(text)));
}

}  // namespace diffusiond
